// The MCP tools of /mcp, run against the runtime with the same operations
// the REST handlers use (no HTTP loopback). Arguments arrive checked against
// the tool's schema (hostd/mcp.cpp); what is left to check here is what a
// schema cannot say. Every failure becomes an isError result whose text is
// the same message a REST client would get. The answers have the shapes
// `vesicle mcp` (sdk/python/vesicle/mcp.py) gives: hostd's own JSON objects
// for sandboxes and Spaces, and for code the object run_output() builds.
#include <algorithm>

#include "actors/ask.hpp"
#include "hostd/api.hpp"
#include "hostd/json.hpp"
#include "hostd/ndjson.hpp"

namespace vesicle::hostd {

namespace {

// What one call keeps in memory before dropping output (the JSON answer
// holds all of it at once).
constexpr std::size_t kMaxStreamBytes = 1u << 20;
constexpr std::size_t kMaxImageBytes = 8u << 20;
constexpr std::size_t kMaxDownloadBytes = 8u << 20;

const std::string& string_arg(const json::Object& args, std::string_view name) {
  static const std::string empty;
  auto found = args.find(name);
  return found == args.end() ? empty : found->second.as_string();
}

std::optional<std::int64_t> int_arg(const json::Object& args, std::string_view name) {
  auto found = args.find(name);
  if (found == args.end()) return std::nullopt;
  return found->second.as_int();
}

// A run's events, gathered into the answer.
struct RunCollector {
  std::string out, err;
  std::optional<std::string> result;
  json::Value error;    // null, or {name, value, traceback}
  json::Array displays; // text of display outputs that are not images
  std::vector<std::pair<std::string, std::string>> images; // mime type, bytes
  std::size_t image_bytes = 0;
  bool dropped = false;

  void append(std::string& stream, const std::string& bytes) {
    if (stream.size() + bytes.size() > kMaxStreamBytes) {
      stream.append(bytes, 0, kMaxStreamBytes - std::min(kMaxStreamBytes, stream.size()));
      dropped = true;
      return;
    }
    stream += bytes;
  }

  void on_event(const guest::Event& event) {
    switch (event.kind_case()) {
    case guest::Event::kStdout:
      append(out, event.stdout());
      break;
    case guest::Event::kStderr:
      append(err, event.stderr());
      break;
    case guest::Event::kResult:
      result = event.result();
      break;
    case guest::Event::kError:
      error = json::Object{{"name", mcp::utf8_lossy(event.error().name())},
                           {"value", mcp::utf8_lossy(event.error().value())},
                           {"traceback", mcp::utf8_lossy(event.error().traceback())}};
      break;
    case guest::Event::kDisplay:
      on_display(event.display());
      break;
    default:
      break;
    }
  }

  void on_display(const guest::Display& display) {
    for (const char* mime : {"image/png", "image/jpeg"}) {
      auto found = display.data().find(mime);
      if (found == display.data().end()) continue;
      if (image_bytes + found->second.size() > kMaxImageBytes) {
        dropped = true;
        return;
      }
      image_bytes += found->second.size();
      images.emplace_back(mime, found->second);
      return;
    }
    // The trailing expression's text is the result already.
    if (display.main_result()) return;
    auto text = display.data().find("text/plain");
    if (text != display.data().end()) displays.emplace_back(mcp::utf8_lossy(text->second));
  }
};

mcp::ToolResult run_output(RunCollector& run, const guest::Exit& exit) {
  json::Object doc{
      {"stdout", mcp::utf8_lossy(run.out)},
      {"stderr", mcp::utf8_lossy(run.err)},
      {"result", run.result ? json::Value(mcp::utf8_lossy(*run.result)) : json::Value()},
      {"error", run.error},
      {"exit_code", static_cast<std::int64_t>(exit.exit_code())},
      {"timed_out", exit.timed_out()},
      {"truncated", exit.truncated() || run.dropped},
      {"repl_restarted", exit.repl_restarted()},
      {"display", run.displays}};
  auto out = mcp::ToolResult::text(json::Value(std::move(doc)).dump());
  for (const auto& [mime, bytes] : run.images)
    out.add_image(bytes, mime);
  return out;
}

// Built outside the coroutine: g++ 12 mishandles temporaries of a
// conditional expression inside a coroutine body.
mcp::ToolResult download_output(const std::string& path, const std::string& content) {
  const bool text = is_valid_utf8(content);
  json::Object doc{{"path", path},
                   {"size", static_cast<std::int64_t>(content.size())},
                   {"encoding", text ? "text" : "base64"},
                   {"content", text ? content : mcp::base64_encode(content)}};
  return mcp::ToolResult::text(json::Value(std::move(doc)).dump());
}

std::string sandbox_list_json(const std::vector<std::string>& objects, const char* key) {
  std::string out = std::string("{\"") + key + "\":[";
  for (std::size_t i = 0; i < objects.size(); ++i)
    out += (i ? "," : "") + objects[i];
  return out + "]}";
}

} // namespace

asio::awaitable<mcp::ToolResult> Api::mcp_tool(const std::string& owner,
                                               const mcp::ToolCall& call) {
  const auto& args = call.arguments;
  const auto& name = call.name;
  const auto& sandbox_id = string_arg(args, "sandbox_id");
  auto failed = [&](const Error& error) { return mcp::ToolResult::error(error.message()); };

  if (name == "create_sandbox") {
    api::CreateSandboxRequest request;
    const auto& egress = string_arg(args, "egress");
    const bool has_allow = args.count("allow") != 0;
    if (has_allow && egress != "allowlist")
      co_return mcp::ToolResult::error(
          "allow: only applies with egress \"allowlist\"; set egress to \"allowlist\" or drop "
          "allow");
    if (egress == "allowlist" && (!has_allow || args.at("allow").as_array().empty()))
      co_return mcp::ToolResult::error(
          "allow: egress \"allowlist\" needs the host names to allow, e.g. [\"pypi.org\"]");
    if (egress == "off") request.set_egress(false);
    if (egress == "open") request.set_egress(true);
    if (egress == "allowlist") {
      request.set_egress(true);
      for (const auto& host : args.at("allow").as_array())
        request.add_egress_allow(host.as_string());
    }
    request.set_template_(string_arg(args, "template"));
    if (auto idle = int_arg(args, "idle_timeout_s"))
      request.set_idle_timeout_s(
          static_cast<std::uint32_t>(std::min<std::int64_t>(*idle, 1 << 30)));
    if (auto lifetime = int_arg(args, "max_lifetime_s"))
      request.set_max_lifetime_s(
          static_cast<std::uint32_t>(std::min<std::int64_t>(*lifetime, 1 << 30)));
    auto created = co_await create_sandbox(owner, std::move(request));
    if (!created) co_return failed(created.error());
    co_return mcp::ToolResult::text(to_json(to_api(*created, ctx_.vms)));
  }
  if (name == "list_sandboxes") {
    auto sandboxes = co_await ask<SandboxInfoList>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                                   list_atom::value, owner);
    if (!sandboxes) co_return failed(to_error(sandboxes.error()));
    api::ListSandboxesResponse out;
    for (const auto& info : *sandboxes)
      *out.add_sandboxes() = to_api(info, ctx_.vms);
    co_return mcp::ToolResult::text(to_json(out));
  }
  if (name == "close_sandbox") {
    auto done = co_await ask<done_atom>(ctx_.system, ctx_.registry, ctx_.create_timeout,
                                        destroy_atom::value, owner, sandbox_id);
    // Already gone is what closing wants (as the SDKs' close() has it).
    if (!done && to_error(done.error()).kind != ErrorKind::not_found)
      co_return failed(to_error(done.error()));
    co_return mcp::ToolResult::text(json::Value(json::Object{{"closed", sandbox_id}}).dump());
  }
  if (name == "run_python" || name == "run_bash") {
    api::ExecRequest request;
    if (name == "run_python") {
      request.set_language("python");
      request.set_code(string_arg(args, "code"));
    } else {
      request.set_language("bash");
      request.set_code(string_arg(args, "command"));
    }
    if (auto timeout = int_arg(args, "timeout_s"))
      request.set_timeout_s(static_cast<std::uint32_t>(*timeout));
    request.set_cwd(string_arg(args, "cwd"));
    auto run = std::make_shared<RunCollector>();
    // A named sink, not a temporary in the co_await expression: g++ 12
    // destroys such a temporary twice (the collector was freed under us).
    vmm::ExecEventSink sink = [run](const guest::Event& event) { run->on_event(event); };
    auto exit = co_await run_exec(owner, sandbox_id, request, std::move(sink));
    if (!exit) co_return failed(exit.error());
    co_return run_output(*run, *exit);
  }
  if (name == "upload_file") {
    const auto& content = string_arg(args, "content");
    std::string bytes = content;
    if (string_arg(args, "encoding") == "base64") {
      auto decoded = mcp::base64_decode_strict(content);
      if (!decoded)
        co_return mcp::ToolResult::error(
            "content: not valid base64 (standard alphabet, padded with =, no line breaks)");
      bytes = std::move(*decoded);
    }
    auto written = co_await write_file(owner, sandbox_id, string_arg(args, "path"), bytes);
    if (!written) co_return failed(written.error());
    api::FileWritten out;
    out.set_path(string_arg(args, "path"));
    out.set_size(static_cast<double>(written->size()));
    co_return mcp::ToolResult::text(to_json(out));
  }
  if (name == "download_file") {
    const auto& path = string_arg(args, "path");
    auto content = co_await read_file(owner, sandbox_id, path, kMaxDownloadBytes);
    if (!content) co_return failed(content.error());
    co_return download_output(path, *content);
  }
  if (name == "fork") {
    const auto n = int_arg(args, "n").value_or(1);
    auto children = co_await fork_sandbox(owner, sandbox_id, static_cast<std::uint32_t>(n));
    if (!children) co_return failed(children.error());
    std::vector<std::string> objects;
    for (const auto& info : *children)
      objects.push_back(to_json(to_api(info, ctx_.vms)));
    co_return mcp::ToolResult::text(sandbox_list_json(objects, "children"));
  }
  if (name == "merge_into") {
    auto merged = co_await ask<SandboxInfo>(ctx_.system, ctx_.registry, ctx_.create_timeout,
                                            merge_atom::value, owner, sandbox_id,
                                            string_arg(args, "winner_id"));
    if (!merged) co_return failed(to_error(merged.error()));
    co_return mcp::ToolResult::text(to_json(to_api(*merged, ctx_.vms)));
  }
  if (name == "freeze") {
    auto space = co_await freeze_sandbox(owner, sandbox_id);
    if (!space) co_return failed(space.error());
    co_return mcp::ToolResult::text(to_json(to_api(*space)));
  }
  if (name == "resume") {
    auto resumed = co_await resume_space(owner, string_arg(args, "space_id"), false);
    if (!resumed) co_return failed(resumed.error());
    co_return mcp::ToolResult::text(to_json(to_api(*resumed, ctx_.vms)));
  }
  // The table lists a tool this file does not know: a build mistake.
  co_return mcp::ToolResult::error("the tool \"" + name + "\" is listed but hostd cannot run it");
}

} // namespace vesicle::hostd
