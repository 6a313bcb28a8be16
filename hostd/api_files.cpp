// PUT and GET /v1/sandboxes/{id}/files?path=...: file transfer, streamed
// both ways. hostd never holds a whole file: upload pieces go to the agent
// as they arrive, download chunks to the client as the agent sends them.
// All file work happens inside the guest, through the agent; hostd never
// touches a host path derived from the request.
#include "hostd/api.hpp"
#include "hostd/json.hpp"

namespace vesicle::hostd {

namespace {

Result<std::string> checked_path(const std::string* path) {
  if (!path || path->empty())
    return Error::of(ErrorKind::invalid_argument,
                     "path: required, the absolute path in the sandbox (…/files?path=/data/x.csv)");
  if (path->front() != '/')
    return Error::of(ErrorKind::invalid_argument, "path: must be absolute, got \"" + *path + "\"");
  if (path->find('\0') != std::string::npos)
    return Error::of(ErrorKind::invalid_argument, "path: must not contain NUL bytes");
  return *path;
}

Result<std::string> guest_path(std::string_view query) {
  auto path = query_param(query, "path");
  return checked_path(path ? &*path : nullptr);
}

Result<std::uint32_t> file_mode(std::string_view query) {
  auto text = query_param(query, "mode");
  if (!text || text->empty()) return std::uint32_t{0644};
  std::uint32_t mode = 0;
  for (char c : *text) {
    if (c < '0' || c > '7' || mode > 07777)
      return Error::of(ErrorKind::invalid_argument,
                       "mode: octal permission bits like 0644, got \"" + *text + "\"");
    mode = mode * 8 + static_cast<std::uint32_t>(c - '0');
  }
  if (mode > 07777)
    return Error::of(ErrorKind::invalid_argument, "mode: at most 07777, got \"" + *text + "\"");
  return mode;
}

} // namespace

// The upload flow: check the path, lease the VM, open the file in the guest,
// pass each body piece on as it arrives, commit; anything short of the whole
// body leaves the guest's file as it was.
asio::awaitable<void> Api::upload(Exchange& exchange, const std::string& owner,
                                  const std::string& id, std::string_view query) {
  auto path = guest_path(query);
  if (!path) co_return co_await exchange.respond_error(path.error());
  auto mode = file_mode(query);
  if (!mode) co_return co_await exchange.respond_error(mode.error());
  auto lease = co_await begin_op(owner, id);
  if (!lease) co_return co_await exchange.respond_error(lease.error());

  auto opened = co_await lease->vm().agent().begin_upload(*path, *mode, true);
  if (!opened)
    co_return co_await exchange.respond_error(
        co_await agent_failure(*lease, opened.error(), "opening " + *path + " for writing"));
  auto& upload = *opened.value();

  auto body =
      co_await exchange.read_body([&](std::string_view piece) { return upload.write(piece); });
  if (body.client_failed) {
    co_await upload.abort();
    // The client is gone or broke the framing; try to say why anyway.
    co_return co_await exchange.respond_error(Error::of(
        ErrorKind::invalid_argument, "upload of " + *path + " abandoned: " + body.client_error));
  }
  if (!body.sink_result) {
    co_await upload.abort();
    co_return co_await exchange.respond_error(
        co_await agent_failure(*lease, body.sink_result.error(), "writing " + *path));
  }
  auto done = co_await upload.finish();
  if (!done)
    co_return co_await exchange.respond_error(
        co_await agent_failure(*lease, done.error(), "committing " + *path));
  api::FileWritten out;
  out.set_path(*path);
  out.set_size(static_cast<double>(done->size()));
  co_await exchange.respond(200, to_json(out));
}

// The download flow: lease the VM, read the file through the agent, and send
// the 200 only with the first chunk, so "no such file" and "not a regular
// file" are still proper errors. A failure after that cuts the response
// short (no final chunk) so the client cannot mistake it for the whole file.
asio::awaitable<void> Api::download(Exchange& exchange, const std::string& owner,
                                    const std::string& id, std::string_view query) {
  auto path = guest_path(query);
  if (!path) co_return co_await exchange.respond_error(path.error());
  auto lease = co_await begin_op(owner, id);
  if (!lease) co_return co_await exchange.respond_error(lease.error());

  bool started = false;
  auto sink = [&](std::string_view chunk) -> asio::awaitable<Result<void>> {
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
    co_return co_await exchange.respond_error(
        co_await agent_failure(*lease, done.error(), "reading " + *path));
  }
  // No co_await in a `&&` operand (g++ 12: see e2b_process.cpp's stream_error).
  if (!started) {
    if (!co_await exchange.begin_stream(200, "application/octet-stream"))
      co_return exchange.abandon_stream();
  }
  if (!co_await exchange.end_stream()) exchange.abandon_stream();
}

asio::awaitable<Result<guest::Done>> Api::write_file(const std::string& owner,
                                                     const std::string& id, const std::string& path,
                                                     std::string_view data) {
  auto checked = checked_path(&path);
  if (!checked) co_return checked.error();
  auto lease = co_await begin_op(owner, id);
  if (!lease) co_return lease.error();
  auto opened = co_await lease->vm().agent().begin_upload(path, 0644, true);
  if (!opened)
    co_return co_await agent_failure(*lease, opened.error(), "opening " + path + " for writing");
  auto& upload = *opened.value();
  if (auto written = co_await upload.write(data); !written) {
    co_await upload.abort();
    co_return co_await agent_failure(*lease, written.error(), "writing " + path);
  }
  auto done = co_await upload.finish();
  if (!done) co_return co_await agent_failure(*lease, done.error(), "committing " + path);
  co_return done;
}

asio::awaitable<Result<std::string>> Api::read_file(const std::string& owner, const std::string& id,
                                                    const std::string& path,
                                                    std::size_t max_bytes) {
  auto checked = checked_path(&path);
  if (!checked) co_return checked.error();
  auto lease = co_await begin_op(owner, id);
  if (!lease) co_return lease.error();
  std::string content;
  std::optional<Error> over_cap;
  // A named std::function, not a temporary made inside the co_await below
  // (g++ 12 mishandles those).
  vmm::ChunkSink sink = [&](std::string_view chunk) -> asio::awaitable<Result<void>> {
    if (content.size() + chunk.size() > max_bytes) {
      over_cap = Error::of(ErrorKind::too_large,
                           path + " is larger than " + std::to_string(max_bytes >> 20) +
                               " MiB; read it in parts (e.g. with run_bash and split)");
      co_return *over_cap;
    }
    content.append(chunk);
    co_return Result<void>{};
  };
  auto done = co_await lease->vm().agent().download(path, sink);
  if (!done) {
    // Our own refusal says what to do; the agent's failures get their
    // usual wording (and a dead VM is noticed).
    if (over_cap) co_return *over_cap;
    co_return co_await agent_failure(*lease, done.error(), "reading " + path);
  }
  co_return content;
}

} // namespace vesicle::hostd
