// envd's HTTP side (GET /health, GET and POST /files) and the routing of its
// Connect RPC services, onto the agent's file transfers and commands.
// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include "hostd/api.hpp"
#include "hostd/e2b.hpp"
#include "hostd/e2b_connect.hpp"
#include "hostd/e2b_multipart.hpp"

namespace vesicle::hostd::e2b {

namespace {

asio::awaitable<void> respond_error(Exchange& exchange, const Error& error) {
  co_await exchange.respond(status_of(error), error_body(status_of(error), error.message()));
}

std::string basename_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

Result<std::string> file_path(std::string_view query) {
  auto path = query_param(query, "path");
  if (!path || path->empty())
    return Error::of(ErrorKind::invalid_argument, "path: required (…/files?path=/tmp/a.txt)");
  if (path->find('\0') != std::string::npos)
    return Error::of(ErrorKind::invalid_argument, "path: must not contain NUL bytes");
  return absolute(*path);
}

} // namespace

asio::awaitable<void> E2b::envd(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                const std::vector<std::string>& path, std::string_view query) {
  const auto method = exchange.method();
  if (path.size() == 1 && path[0] == "health" && method == http::verb::get)
    co_return co_await exchange.respond_empty(204);
  if (path.size() == 1 && path[0] == "files") {
    if (method == http::verb::get) co_return co_await download(exchange, sandbox, query);
    if (method == http::verb::post) co_return co_await upload(exchange, sandbox, query);
  }
  if (path.size() == 2 && method == http::verb::post) {
    if (path[0] == "process.Process") co_return co_await process_call(exchange, sandbox, path[1]);
    if (path[0] == "filesystem.Filesystem")
      co_return co_await filesystem_call(exchange, sandbox, path[1]);
  }
  std::string joined;
  for (const auto& part : path)
    joined += "/" + part;
  if (path.size() == 2 && method == http::verb::post)
    co_return co_await exchange.respond(
        connect_http_status("unimplemented"),
        error_json("unimplemented", joined + " is not implemented by vesicle's envd "
                                             "compatibility (README \"E2B compatibility\")"));
  co_await exchange.respond(404, error_body(404, "envd has no route " + joined));
}

// GET /files?path=: the file's bytes, streamed from the agent as it reads
// them; the 200 goes out with the first chunk so a missing file is a 404.
asio::awaitable<void> E2b::download(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                    std::string_view query) {
  auto path = file_path(query);
  if (!path) co_return co_await respond_error(exchange, path.error());
  auto lease = co_await api_.begin_op(sandbox->owner, sandbox->vid);
  if (!lease) co_return co_await respond_error(exchange, lease.error());
  bool started = false;
  vmm::ChunkSink sink = [&](std::string_view chunk) -> asio::awaitable<Result<void>> {
    if (!started) {
      started = true;
      if (!co_await exchange.begin_stream(200, "application/octet-stream"))
        co_return make_error("send file", "the client went away");
    }
    if (!co_await exchange.write_chunk(chunk))
      co_return make_error("send file", "the client went away");
    co_return Result<void>{};
  };
  auto done = co_await lease->vm().agent().download(*path, sink);
  if (!done) {
    if (started) co_return exchange.abandon_stream();
    co_return co_await respond_error(
        exchange, co_await api_.agent_failure(*lease, done.error(), "reading " + *path));
  }
  // No co_await in a `&&` operand (g++ 12: see e2b_process.cpp's stream_error).
  if (!started) started = co_await exchange.begin_stream(200, "application/octet-stream");
  if (!started) co_return exchange.abandon_stream();
  if (!co_await exchange.end_stream()) exchange.abandon_stream();
}

// POST /files?path=: multipart/form-data (each part a file, named by the
// query's path or else by the part's filename) or a raw octet-stream body;
// each part goes to the agent piece by piece as it arrives, parents made.
asio::awaitable<void> E2b::upload(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                  std::string_view query) {
  auto query_path = query_param(query, "path");
  auto boundary = multipart_boundary(exchange.header(http::field::content_type));
  if (!boundary && (!query_path || query_path->empty()))
    co_return co_await respond_error(
        exchange, Error::of(ErrorKind::invalid_argument,
                            "path: required for a raw upload (…/files?path=/tmp/a.txt)"));
  auto lease = co_await api_.begin_op(sandbox->owner, sandbox->vid);
  if (!lease) co_return co_await respond_error(exchange, lease.error());
  auto& agent = lease->vm().agent();

  std::unique_ptr<vmm::Upload> current;
  std::string current_path;
  std::vector<std::string> written;
  std::optional<MultipartReader> reader;
  if (boundary) reader.emplace(*boundary);

  auto open = [&](std::string name) -> asio::awaitable<Result<void>> {
    if (query_path && !query_path->empty()) name = *query_path;
    if (name.empty() || name.find('\0') != std::string::npos)
      co_return Error::of(ErrorKind::invalid_argument,
                          "a multipart part names no file: give ?path= or a filename");
    current_path = absolute(name);
    auto opened = co_await agent.begin_upload(current_path, 0644, true);
    if (!opened)
      co_return co_await api_.agent_failure(*lease, opened.error(),
                                            "opening " + current_path + " for writing");
    current = std::move(opened.value());
    co_return Result<void>{};
  };
  auto close = [&]() -> asio::awaitable<Result<void>> {
    auto done = co_await current->finish();
    current.reset();
    if (!done)
      co_return co_await api_.agent_failure(*lease, done.error(), "committing " + current_path);
    written.push_back(current_path);
    co_return Result<void>{};
  };

  if (!reader) {
    if (auto opened = co_await open(""); !opened)
      co_return co_await respond_error(exchange, opened.error());
  }
  // Named, not a temporary inside the co_await (g++ 12 mishandles those).
  Exchange::PieceSink sink = [&](std::string_view piece) -> asio::awaitable<Result<void>> {
    if (!reader) co_return co_await current->write(piece);
    auto steps = reader->feed(piece);
    if (!steps) co_return steps.error();
    for (auto& step : *steps) {
      if (step.kind == MultipartReader::Step::Kind::begin) {
        if (auto opened = co_await open(step.filename); !opened) co_return opened.error();
      } else if (step.kind == MultipartReader::Step::Kind::data) {
        if (!current) continue;
        if (auto wrote = co_await current->write(step.data); !wrote) co_return wrote.error();
      } else if (current) {
        if (auto closed = co_await close(); !closed) co_return closed.error();
      }
    }
    co_return Result<void>{};
  };
  auto body = co_await exchange.read_body(sink);
  if (body.client_failed || !body.sink_result || (reader && !reader->complete())) {
    if (current) co_await current->abort();
    std::string why = "the multipart body was cut short";
    if (body.client_failed) why = body.client_error;
    Error error = Error::of(ErrorKind::invalid_argument, "upload abandoned: " + why);
    if (!body.client_failed && !body.sink_result) error = body.sink_result.error();
    co_return co_await respond_error(exchange, error);
  }
  if (!reader) {
    if (auto closed = co_await close(); !closed)
      co_return co_await respond_error(exchange, closed.error());
  }
  std::string out = "[";
  for (const auto& path : written) {
    if (out.size() > 1) out += ",";
    out += "{\"name\":" + json_string(basename_of(path)) +
           ",\"type\":\"file\",\"path\":" + json_string(path) + "}";
  }
  out += "]";
  co_await exchange.respond(200, std::move(out));
}

} // namespace vesicle::hostd::e2b
