#include "hostd/http_request_parts.hpp"

#include <boost/beast/core/string.hpp>

namespace vesicle::hostd {

namespace beast = boost::beast;

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= path.size()) {
    auto slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    if (slash > start) parts.emplace_back(path.substr(start, slash - start));
    start = slash + 1;
  }
  return parts;
}

std::optional<std::string_view> bearer_key(std::string_view header) {
  constexpr std::string_view scheme = "bearer ";
  if (header.size() <= scheme.size() ||
      !beast::iequals(beast::string_view(header.data(), scheme.size()),
                      beast::string_view(scheme.data(), scheme.size())))
    return std::nullopt;
  auto key = header.substr(scheme.size());
  while (!key.empty() && key.front() == ' ')
    key.remove_prefix(1);
  while (!key.empty() && key.back() == ' ')
    key.remove_suffix(1);
  if (key.empty()) return std::nullopt;
  return key;
}

} // namespace vesicle::hostd
