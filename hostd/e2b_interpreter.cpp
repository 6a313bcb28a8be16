// The code interpreter's HTTP API (E2B's port 49999) onto the sandbox's
// Python REPL and bash commands: POST /execute streams NDJSON
// (stdout/stderr/result/error, then number_of_executions); contexts are
// separate Python namespaces inside the one REPL, or bash.
//
// Authentication of /contexts: the code interpreter SDK sends those calls
// without X-Access-Token, so hostd accepts them with no token (a token that
// is sent must be right). What guards them is the sandbox id, 128 random
// bits that only the creator learns; and a context only names a namespace:
// running code in it takes POST /execute, which needs the token.
// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/ids.hpp"
#include "hostd/api.hpp"
#include "hostd/e2b.hpp"
#include "hostd/e2b_connect.hpp"
#include "hostd/mcp.hpp"
#include "hostd/ndjson.hpp"

namespace vesicle::hostd::e2b {

namespace {

constexpr std::chrono::milliseconds kHeaderGrace{250};

// Defines, once per REPL, the function that runs a named context's cell in
// that context's own globals, the trailing expression's value returned so
// the REPL shows it as the cell's result.
constexpr const char* kContextRunner = R"(
def _vesicle_e2b_run(context, source):
    import ast, builtins
    spaces = builtins.__dict__.setdefault("_vesicle_e2b_spaces", {})
    space = spaces.setdefault(context, {"__name__": "__main__", "__builtins__": builtins})
    tree = ast.parse(source, "<cell>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<cell>", "exec"), space)
    if last is not None:
        return eval(compile(last, "<cell>", "eval"), space)
__import__("builtins")._vesicle_e2b_run = _vesicle_e2b_run
)";

std::string python_literal(std::string_view text) {
  std::string out = "'";
  for (unsigned char c : text) {
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
      out += escaped;
    } else {
      out += static_cast<char>(c); // UTF-8 passes as is
    }
  }
  return out + "'";
}

// One expression: defines the runner if needed and calls it. Nothing is
// left in the default context's globals but `_` (the REPL's last result).
std::string context_cell(const std::string& context, std::string_view code) {
  return "(__import__('builtins').__dict__.get('_vesicle_e2b_run') or (exec(" +
         python_literal(kContextRunner) + ", {}), __import__('builtins')._vesicle_e2b_run)[1])(" +
         python_literal(context) + ", " + python_literal(code) + ")";
}

std::string forget_cell(const std::string& context) {
  return "__import__('builtins').__dict__.get('_vesicle_e2b_spaces', {}).pop(" +
         python_literal(context) + ", None) and None";
}

// E2B's result keys for the MIME types the REPL sends.
const char* result_key(std::string_view mime, bool& binary, bool& raw_json) {
  binary = false;
  raw_json = false;
  if (mime == "text/plain") return "text";
  if (mime == "text/html") return "html";
  if (mime == "text/markdown") return "markdown";
  if (mime == "text/latex") return "latex";
  if (mime == "image/svg+xml") return "svg";
  if (mime == "application/javascript") return "javascript";
  if (mime == "application/json") return raw_json = true, "json";
  binary = true;
  if (mime == "image/png") return "png";
  if (mime == "image/jpeg") return "jpeg";
  if (mime == "application/pdf") return "pdf";
  return nullptr;
}

std::string result_line(const guest::Display& display) {
  std::string line = "{\"type\":\"result\",\"is_main_result\":";
  line += display.main_result() ? "true" : "false";
  for (const auto& [mime, data] : display.data()) {
    bool binary = false, raw_json = false;
    const char* key = result_key(mime, binary, raw_json);
    if (!key) continue;
    line += ",\"" + std::string(key) + "\":";
    if (binary)
      line += json_string(mcp::base64_encode(data));
    else if (raw_json)
      line += data;
    else
      line += json_string(is_valid_utf8(data) ? data : std::string("<not valid UTF-8>"));
  }
  return line + "}\n";
}

// The NDJSON lines of one execution, from the agent's events.
struct LineMaker {
  Utf8HoldBack out, err;
  bool main_result_sent = false;

  void text(std::vector<std::string>& lines, const char* type, std::string bytes) {
    if (bytes.empty()) return;
    if (!is_valid_utf8(bytes)) bytes = "<output not valid UTF-8>";
    lines.push_back("{\"type\":\"" + std::string(type) + "\",\"text\":" + json_string(bytes) +
                    "}\n");
  }
  std::vector<std::string> lines_of(const guest::Event& event) {
    std::vector<std::string> lines;
    switch (event.kind_case()) {
    case guest::Event::kStdout:
      text(lines, "stdout", out.feed(event.stdout()));
      break;
    case guest::Event::kStderr:
      text(lines, "stderr", err.feed(event.stderr()));
      break;
    case guest::Event::kDisplay:
      main_result_sent = main_result_sent || event.display().main_result();
      lines.push_back(result_line(event.display()));
      break;
    case guest::Event::kResult:
      if (!main_result_sent) {
        main_result_sent = true;
        const auto& repr = event.result();
        lines.push_back("{\"type\":\"result\",\"is_main_result\":true,\"text\":" +
                        json_string(is_valid_utf8(repr) ? repr : std::string("<repr>")) + "}\n");
      }
      break;
    case guest::Event::kError:
      lines.push_back("{\"type\":\"error\",\"name\":" + json_string(event.error().name()) +
                      ",\"value\":" + json_string(event.error().value()) +
                      ",\"traceback\":" + json_string(event.error().traceback()) + "}\n");
      break;
    default:
      break;
    }
    return lines;
  }
  void flush(std::vector<std::string>& lines) {
    text(lines, "stdout", out.flush());
    text(lines, "stderr", err.flush());
  }
};

asio::awaitable<void> respond_error(Exchange& exchange, const Error& error) {
  co_await exchange.respond(status_of(error), error_body(status_of(error), error.message()));
}

std::string context_json(const CodeContext& context) {
  return "{\"id\":" + json_string(context.id) + ",\"language\":" + json_string(context.language) +
         ",\"cwd\":" + json_string(context.cwd) + "}";
}

// "python" or "bash", or "" for a language vesicle does not run.
std::string language_of(const std::string& asked) {
  if (asked.empty() || asked == "python" || asked == "python3") return "python";
  if (asked == "bash" || asked == "sh") return "bash";
  return "";
}

} // namespace

asio::awaitable<void> E2b::interpreter(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                       const std::vector<std::string>& path, bool token_checked) {
  const auto method = exchange.method();
  if (path.size() == 1 && path[0] == "health") co_return co_await exchange.respond(200, "\"OK\"");
  if (path.size() == 1 && path[0] == "execute" && method == http::verb::post) {
    if (!token_checked)
      co_return co_await exchange.respond(401, error_body(401, "X-Access-Token is required"));
    co_return co_await execute(exchange, sandbox);
  }
  if (path.size() == 1 && path[0] == "contexts" && method == http::verb::get) {
    std::string out = "[";
    for (const auto& [id, context] : sandbox->contexts) {
      if (out.size() > 1) out += ",";
      out += context_json(context);
    }
    co_return co_await exchange.respond(200, out + "]");
  }
  if (path.size() == 1 && path[0] == "contexts" && method == http::verb::post) {
    auto body = co_await exchange.read_json_body();
    if (!body) co_return co_await respond_error(exchange, body.error());
    ContextRequest request;
    if (auto parsed = parse(*body, request); !parsed)
      co_return co_await respond_error(exchange, parsed.error());
    CodeContext context;
    context.id = random_id("", kIdDigits);
    context.language = language_of(request.language());
    if (context.language.empty())
      co_return co_await respond_error(
          exchange, Error::of(ErrorKind::invalid_argument,
                              "language: vesicle runs \"python\" and \"bash\", not \"" +
                                  request.language() + "\""));
    // No `?:` with temporaries in a coroutine (g++ 12 miscompiles them).
    context.cwd = kHome;
    if (request.has_cwd() && !request.cwd().empty()) context.cwd = absolute(request.cwd());
    sandbox->contexts[context.id] = context;
    co_return co_await exchange.respond(200, context_json(context));
  }
  if (!path.empty() && path[0] == "contexts" && path.size() >= 2) {
    auto found = sandbox->contexts.find(path[1]);
    if (found == sandbox->contexts.end())
      co_return co_await exchange.respond(404,
                                          error_body(404, "context " + path[1] + " not found"));
    const bool remove = path.size() == 2 && method == http::verb::delete_;
    const bool restart = path.size() == 3 && path[2] == "restart" && method == http::verb::post;
    if (remove || restart) {
      const auto context = found->second;
      if (remove) sandbox->contexts.erase(found);
      if (restart) found->second.executions = 0;
      if (context.language == "python") {
        api::ExecRequest forget;
        forget.set_code(forget_cell(context.id));
        vmm::ExecEventSink ignore = [](const guest::Event&) {};
        auto done = co_await api_.run_exec(sandbox->owner, sandbox->vid, forget, ignore);
        if (!done) co_return co_await respond_error(exchange, done.error());
      }
      co_return co_await exchange.respond_no_content();
    }
  }
  co_await exchange.respond(404, error_body(404, "the code interpreter has no such route"));
}

asio::awaitable<void> E2b::execute(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await respond_error(exchange, body.error());
  ExecuteRequest request;
  if (auto parsed = parse(*body, request); !parsed)
    co_return co_await respond_error(exchange, parsed.error());

  CodeContext* context = nullptr;
  std::string language;
  if (request.has_context_id() && !request.context_id().empty()) {
    auto found = sandbox->contexts.find(request.context_id());
    if (found == sandbox->contexts.end())
      co_return co_await exchange.respond(
          404, error_body(404, "context " + request.context_id() + " not found"));
    context = &found->second;
    language = context->language;
  } else {
    language = language_of(request.language());
    if (language.empty())
      co_return co_await respond_error(
          exchange, Error::of(ErrorKind::invalid_argument,
                              "language: vesicle runs \"python\" and \"bash\", not \"" +
                                  request.language() + "\""));
  }
  api::ExecRequest exec;
  exec.set_language(language);
  if (language == "python") {
    if (!request.env_vars().empty())
      co_return co_await respond_error(
          exchange, Error::of(ErrorKind::invalid_argument,
                              "env_vars: vesicle applies them to bash only; in Python set "
                              "os.environ"));
    if (context)
      exec.set_code(context_cell(context->id, request.code()));
    else
      exec.set_code(request.code());
  } else {
    exec.set_code(request.code());
    exec.mutable_env()->insert(sandbox->env_vars.begin(), sandbox->env_vars.end());
    for (const auto& [name, value] : request.env_vars())
      (*exec.mutable_env())[name] = value;
    exec.set_cwd(kHome);
    if (context) exec.set_cwd(context->cwd);
  }
  const std::uint32_t count = context ? ++context->executions : ++sandbox->default_executions;

  auto executor = co_await asio::this_coro::executor;
  auto outbox = std::make_shared<Outbox>(executor);
  auto early = std::make_shared<std::optional<Error>>();
  auto maker = std::make_shared<LineMaker>();
  const bool bash = language == "bash";
  // An empty cell runs nothing; it still counts, as in Jupyter.
  const bool empty = request.code().find_first_not_of(" \t\r\n") == std::string::npos;
  asio::co_spawn(
      executor,
      [self = shared_from_this(), sandbox, outbox, early, maker, exec = std::move(exec), count,
       bash, empty]() -> asio::awaitable<void> {
        std::vector<std::string> last;
        if (!empty) {
          bool produced = false;
          vmm::ExecEventSink sink = [outbox, maker, &produced](const guest::Event& event) {
            for (auto& line : maker->lines_of(event)) {
              produced = true;
              outbox->push(std::move(line));
            }
          };
          auto exit = co_await self->api_.run_exec(sandbox->owner, sandbox->vid, exec, sink);
          maker->flush(last);
          if (!exit) {
            if (!produced && last.empty()) {
              *early = exit.error();
              outbox->close();
              co_return;
            }
            last.push_back("{\"type\":\"error\",\"name\":\"SandboxError\",\"value\":" +
                           json_string(exit.error().message()) + ",\"traceback\":\"\"}\n");
          } else if (bash && (exit->exit_code() != 0 || exit->signal() != 0)) {
            std::string status = "exit status " + std::to_string(exit->exit_code());
            if (exit->signal() != 0) status = "killed by signal " + std::to_string(exit->signal());
            last.push_back("{\"type\":\"error\",\"name\":\"BashError\",\"value\":" +
                           json_string(status) + ",\"traceback\":\"\"}\n");
          }
        }
        last.push_back("{\"type\":\"number_of_executions\",\"execution_count\":" +
                       std::to_string(count) + "}\n");
        for (auto& line : last)
          outbox->push(std::move(line));
        outbox->close();
      },
      asio::detached);

  // The 200 goes out with the first line, or after a short grace when the
  // cell is silent, so a cell that fails at once gets its own status.
  bool header_sent = false;
  const auto header_due = std::chrono::steady_clock::now() + kHeaderGrace;
  bool client_ok = true;
  for (;;) {
    if (!header_sent) {
      if (outbox->closed && *early) co_return co_await respond_error(exchange, **early);
      if (!outbox->items.empty() || outbox->closed ||
          std::chrono::steady_clock::now() >= header_due) {
        header_sent = true;
        client_ok = co_await exchange.begin_stream(200, "application/x-ndjson");
        continue;
      }
    }
    if (!outbox->items.empty()) {
      std::string chunk;
      for (auto& line : outbox->items)
        chunk += line;
      outbox->items.clear();
      // The cell runs to its end even when the client left: the REPL is
      // one per sandbox and must not be left mid-cell.
      if (client_ok) client_ok = co_await exchange.write_chunk(chunk);
      continue;
    }
    if (outbox->closed) break;
    if (header_sent)
      outbox->wake.expires_at(asio::steady_timer::time_point::max());
    else
      outbox->wake.expires_at(header_due);
    boost::system::error_code ignored;
    co_await outbox->wake.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
  // No co_await in a `||` operand (g++ 12: see e2b_process.cpp's stream_error).
  if (client_ok) client_ok = co_await exchange.end_stream();
  if (!client_ok) exchange.abandon_stream();
}

} // namespace vesicle::hostd::e2b
