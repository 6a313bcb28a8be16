// envd's filesystem.Filesystem onto short bash scripts run by the agent
// (the agent has no stat, list, mkdir, move or remove of its own; each
// call is one ExecBash). Paths travel in the environment, never inside the
// script text, so no path can change what the script does. Entries come
// from GNU find's -printf, NUL-separated, so any file name survives.
// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <algorithm>

#include <cstdlib>

#include "hostd/api.hpp"
#include "hostd/e2b.hpp"
#include "hostd/e2b_connect.hpp"

namespace vesicle::hostd::e2b {

namespace {

// type, size, octal mode, ls-style permissions, owner, group, mtime,
// path, symlink target.
constexpr const char* kEntryFormat = "%y\\0%s\\0%m\\0%M\\0%u\\0%g\\0%T@\\0%p\\0%l\\0";
constexpr int kFields = 9;
// The scripts' own exit codes.
constexpr int kMissing = 3, kNotDirectory = 4, kExists = 5;

constexpr const char* kStat = R"sh([ -e "$P" ] || [ -L "$P" ] || exit 3
find "$P" -maxdepth 0 -printf "$F")sh";
constexpr const char* kListDir = R"sh([ -e "$P" ] || exit 3
[ -d "$P" ] || exit 4
find -H "$P" -mindepth 1 -maxdepth "$N" -printf "$F")sh";
constexpr const char* kMakeDir = R"sh(if [ -e "$P" ] || [ -L "$P" ]; then exit 5; fi
mkdir -p -- "$P" && find "$P" -maxdepth 0 -printf "$F")sh";
constexpr const char* kMove = R"sh([ -e "$S" ] || [ -L "$S" ] || exit 3
mkdir -p -- "$(dirname -- "$D")" && mv -fT -- "$S" "$D" && find "$D" -maxdepth 0 -printf "$F")sh";
// A path that is not there is removed already (envd's os.RemoveAll).
constexpr const char* kRemove = R"sh(rm -rf -- "$P")sh";

std::string base_name(const std::string& path) {
  auto end = path.find_last_not_of('/');
  if (end == std::string::npos) return "/";
  auto slash = path.find_last_of('/', end);
  return path.substr(slash == std::string::npos ? 0 : slash + 1,
                     end - (slash == std::string::npos ? 0 : slash + 1) + 1);
}

std::vector<EntryInfo> parse_entries(const std::string& out) {
  std::vector<std::string> fields;
  std::size_t start = 0;
  while (start < out.size()) {
    auto nul = out.find('\0', start);
    if (nul == std::string::npos) break;
    fields.push_back(out.substr(start, nul - start));
    start = nul + 1;
  }
  std::vector<EntryInfo> entries;
  for (std::size_t i = 0; i + kFields <= fields.size(); i += kFields) {
    EntryInfo entry;
    const auto& type = fields[i];
    // Entries of other types (sockets, devices) are not E2B's to show.
    if (type == "f")
      entry.set_type(FILE_TYPE_FILE);
    else if (type == "d")
      entry.set_type(FILE_TYPE_DIRECTORY);
    else if (type == "l")
      entry.set_type(FILE_TYPE_SYMLINK);
    else
      continue;
    entry.set_size(std::strtoll(fields[i + 1].c_str(), nullptr, 10));
    entry.set_mode(static_cast<std::uint32_t>(std::strtoul(fields[i + 2].c_str(), nullptr, 8)));
    entry.set_permissions(fields[i + 3]);
    entry.set_owner(fields[i + 4]);
    entry.set_group(fields[i + 5]);
    const auto& mtime = fields[i + 6];
    char* fraction = nullptr;
    const auto seconds = std::strtoll(mtime.c_str(), &fraction, 10);
    std::int32_t nanos = 0;
    if (fraction && *fraction == '.') {
      std::string digits = std::string(fraction + 1).substr(0, 9);
      digits.resize(9, '0');
      nanos = static_cast<std::int32_t>(std::strtol(digits.c_str(), nullptr, 10));
    }
    entry.mutable_modified_time()->set_seconds(seconds);
    entry.mutable_modified_time()->set_nanos(nanos);
    entry.set_path(fields[i + 7]);
    entry.set_name(base_name(fields[i + 7]));
    // envd gives the target as an absolute path; a relative link is taken
    // from the link's own directory.
    if (type == "l") {
      std::string target = fields[i + 8];
      const auto& path = fields[i + 7];
      if (!target.empty() && target.front() != '/')
        target = path.substr(0, path.find_last_of('/') + 1) + target;
      entry.set_symlink_target(std::move(target));
    }
    entries.push_back(std::move(entry));
  }
  return entries;
}

asio::awaitable<void> unary_error(Exchange& exchange, std::string_view code,
                                  std::string_view message) {
  co_await exchange.respond(connect_http_status(code), error_json(code, message));
}

} // namespace

asio::awaitable<Result<E2b::ScriptRun>> E2b::run_script(const Sandbox& sandbox, std::string script,
                                                        std::map<std::string, std::string> env) {
  api::ExecRequest request;
  request.set_language("bash");
  request.set_code(std::move(script));
  request.mutable_env()->insert(env.begin(), env.end());
  auto run = std::make_shared<ScriptRun>();
  vmm::ExecEventSink sink = [run](const guest::Event& event) {
    if (event.kind_case() == guest::Event::kStdout) run->out += event.stdout();
    if (event.kind_case() == guest::Event::kStderr) run->err += event.stderr();
  };
  auto exit = co_await api_.run_exec(sandbox.owner, sandbox.vid, request, sink);
  if (!exit) co_return exit.error();
  run->exit_code = exit->signal() != 0 ? 128 + exit->signal() : exit->exit_code();
  co_return std::move(*run);
}

asio::awaitable<void> E2b::filesystem_call(Exchange& exchange,
                                           const std::shared_ptr<Sandbox>& sandbox,
                                           const std::string& method) {
  auto body = co_await exchange.read_json_body();
  if (!body)
    co_return co_await unary_error(exchange, connect_code(body.error().kind),
                                   body.error().message());
  std::map<std::string, std::string> env{{"F", kEntryFormat}};
  std::string script;
  std::string subject;
  if (method == "Move") {
    MoveRequest request;
    if (auto parsed = parse(*body, request); !parsed)
      co_return co_await unary_error(exchange, "invalid_argument", parsed.error().message());
    if (request.source().empty() || request.destination().empty())
      co_return co_await unary_error(exchange, "invalid_argument",
                                     "source and destination: both required");
    env["S"] = absolute(request.source());
    env["D"] = absolute(request.destination());
    subject = env["S"];
    script = kMove;
  } else if (method == "Stat" || method == "ListDir" || method == "MakeDir" || method == "Remove") {
    PathRequest request;
    if (auto parsed = parse(*body, request); !parsed)
      co_return co_await unary_error(exchange, "invalid_argument", parsed.error().message());
    if (request.path().empty())
      co_return co_await unary_error(exchange, "invalid_argument", "path: required");
    env["P"] = absolute(request.path());
    env["N"] = std::to_string(request.depth() == 0 ? 1 : request.depth());
    subject = env["P"];
    if (method == "Stat") script = kStat;
    if (method == "ListDir") script = kListDir;
    if (method == "MakeDir") script = kMakeDir;
    if (method == "Remove") script = kRemove;
  } else {
    co_return co_await unary_error(exchange, "unimplemented",
                                   "filesystem.Filesystem/" + method +
                                       " is not implemented by vesicle (no file watching yet)");
  }
  if (subject.find('\0') != std::string::npos)
    co_return co_await unary_error(exchange, "invalid_argument", "path: must not contain NUL");

  auto run = co_await run_script(*sandbox, std::move(script), std::move(env));
  if (!run)
    co_return co_await unary_error(exchange, connect_code(run.error().kind), run.error().message());
  if (run->exit_code == kMissing)
    co_return co_await unary_error(exchange, "not_found", "path \"" + subject + "\" not found");
  if (run->exit_code == kNotDirectory)
    co_return co_await unary_error(exchange, "invalid_argument",
                                   "path \"" + subject + "\" is not a directory");
  if (run->exit_code == kExists)
    co_return co_await unary_error(exchange, "already_exists",
                                   "path \"" + subject + "\" already exists");
  if (run->exit_code != 0)
    co_return co_await unary_error(exchange, "internal",
                                   method + " of \"" + subject + "\" failed: " + run->err);
  auto entries = parse_entries(run->out);
  if (method == "Remove") co_return co_await exchange.respond(200, "{}");
  if (method == "ListDir") {
    // In path order, as envd lists (find gives the directories' own order).
    std::sort(entries.begin(), entries.end(),
              [](const EntryInfo& a, const EntryInfo& b) { return a.path() < b.path(); });
    ListDirResponse out;
    for (auto& entry : entries)
      *out.add_entries() = std::move(entry);
    co_return co_await exchange.respond(200, print(out));
  }
  if (entries.empty())
    co_return co_await unary_error(exchange, "internal",
                                   method + " of \"" + subject + "\" gave no entry");
  EntryResponse out;
  *out.mutable_entry() = std::move(entries.front());
  co_await exchange.respond(200, print(out));
}

} // namespace vesicle::hostd::e2b
