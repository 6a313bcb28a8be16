// GET /ui: the operator's page (hostd/ui/, embedded by cmake/embed_files.cmake).
// The files are served without a key: a browser cannot send a bearer header
// when it navigates, and the files hold nothing secret. Everything the page
// shows comes from /v1/capacity and /v1/admin/*, which need an admin key; the
// page asks for it in a form and keeps it in sessionStorage (hostd/ui/app.js).
#include "hostd/api.hpp"
#include "hostd/ui_files.hpp"

namespace vesicle::hostd {

namespace {

std::string content_type(std::string_view name) {
  auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
  };
  if (ends_with(".html")) return "text/html; charset=utf-8";
  if (ends_with(".js")) return "text/javascript; charset=utf-8";
  if (ends_with(".css")) return "text/css; charset=utf-8";
  return "application/octet-stream";
}

} // namespace

asio::awaitable<void> Api::ui(Exchange& exchange, const std::vector<std::string>& path) {
  // "/ui" and "/ui/" are the page; "/ui/<file>" one of its files.
  const std::string name = path.size() == 1 ? "index.html" : path[1];
  for (const auto& file : kUiFiles)
    if (path.size() <= 2 && file.name == name)
      co_return co_await exchange.respond_page_file(content_type(name), file.bytes);
  co_await exchange.respond_error(
      Error::of(ErrorKind::not_found, "no such file of the operator's page; open /ui"));
}

} // namespace vesicle::hostd
