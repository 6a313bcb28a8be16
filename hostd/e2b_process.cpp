// envd's process.Process onto the agent's bash commands (ExecBash). Each
// Start runs `exec <cmd> <args>` behind a one-line prologue that prints the
// shell's pid on stderr: the agent starts every command as the leader of
// its own process group (setsid), so that pid is the E2B pid, SendSignal
// signals its group with kill(1), and List shows the commands still
// running. A command runs on when its client stops reading (background
// commands); Connect attaches another reader to its events.
//
// stdin: the agent starts every command with stdin on /dev/null and its
// protocol carries no input, so a Start with `stdin: true` reads a FIFO in
// the guest instead (<kStdinDir>/<pid>), which SendInput writes with one
// short script each. A keeper in the command's process group holds the
// FIFO open for writing, so the command sees no end of input between two
// SendInputs; CloseStdin ends the keeper, and the command reads EOF. The
// keeper also ends, removing the FIFO, when the command does.
// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "hostd/api.hpp"
#include "hostd/e2b.hpp"
#include "hostd/e2b_connect.hpp"

namespace vesicle::hostd::e2b {

namespace {

// Marks the prologue's line; a command's own stderr cannot have started
// before it (the prologue runs first, in the same shell).
constexpr std::string_view kPidMarker = "\x1evesicle-pid ";
constexpr std::chrono::seconds kKeepalive{30};
constexpr const char* kStdinDir = "/run/vesicle-e2b-stdin";
constexpr std::size_t kStdinPiece = 16 * 1024;

// Before the pid line: the FIFO, its keeper (an O_RDWR open never blocks;
// it outlives the command by at most a poll), then stdin from the FIFO.
std::string stdin_prologue() {
  const std::string dir = kStdinDir;
  return "mkdir -p -m 700 " + dir + " && f=" + dir +
         "/$$ && rm -f \"$f\" && mkfifo -m 600 \"$f\" || exit 125; "
         "( trap 'rm -f \"$f\" \"$f.keeper\"; exit 0' TERM; exec 3<>\"$f\" </dev/null >/dev/null "
         "2>&1; while kill -0 $$ 2>/dev/null; do sleep 0.2; done; rm -f \"$f\" \"$f.keeper\" ) & "
         "echo $! > \"$f.keeper\"; exec <\"$f\"; ";
}

// `bytes` as a printf format that prints exactly them (every byte an
// octal escape: no '%' or quoting left to interpret).
std::string printf_escaped(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 4);
  for (unsigned char c : bytes) {
    char escaped[6];
    std::snprintf(escaped, sizeof escaped, "\\%03o", c);
    out += escaped;
  }
  return out;
}

std::string shell_quote(std::string_view word) {
  std::string out = "'";
  for (char c : word) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

std::string signal_name(int signal) {
  switch (signal) {
  case 9:
    return "killed";
  case 15:
    return "terminated";
  case 2:
    return "interrupt";
  case 1:
    return "hangup";
  default:
    return "signal " + std::to_string(signal);
  }
}

// The end event as envd's Go side words it.
ProcessEvent end_event(const guest::Exit& exit) {
  ProcessEvent event;
  auto* end = event.mutable_end();
  if (exit.signal() != 0) {
    end->set_exit_code(-1);
    end->set_exited(false);
    end->set_status("signal: " + signal_name(exit.signal()));
    end->set_error(end->status());
  } else {
    end->set_exit_code(exit.exit_code());
    end->set_exited(true);
    end->set_status("exit status " + std::to_string(exit.exit_code()));
    if (exit.exit_code() != 0) end->set_error(end->status());
  }
  return event;
}

ProcessEvent data_event(bool err, std::string bytes) {
  ProcessEvent event;
  if (err)
    event.mutable_data()->set_stderr(std::move(bytes));
  else
    event.mutable_data()->set_stdout(std::move(bytes));
  return event;
}

std::shared_ptr<Process> find_process(const Sandbox& sandbox, const ProcessSelector& selector) {
  if (selector.selector_case() == ProcessSelector::kPid) {
    auto found = sandbox.processes.find(selector.pid());
    return found == sandbox.processes.end() ? nullptr : found->second;
  }
  if (selector.selector_case() == ProcessSelector::kTag)
    for (const auto& [pid, process] : sandbox.processes)
      if (process->tag && *process->tag == selector.tag()) return process;
  return nullptr;
}

asio::awaitable<void> unary_error(Exchange& exchange, std::string_view code,
                                  std::string_view message) {
  co_await exchange.respond(connect_http_status(code), error_json(code, message));
}

// A server stream that fails before its first message: a 200 whose only
// envelope is the end-of-stream error (Connect's rule for streams).
asio::awaitable<void> stream_error(Exchange& exchange, std::string_view code,
                                   std::string_view message) {
  // One co_await a statement: g++ 12 destroys the awaitables of the
  // operands that `||` skips, which were never made (hostd crashed here).
  bool ok = co_await exchange.begin_stream(200, "application/connect+json");
  if (ok) ok = co_await exchange.write_chunk(end_of_stream(code, message));
  if (ok) ok = co_await exchange.end_stream();
  if (!ok) exchange.abandon_stream();
}

} // namespace

void Process::publish(const ProcessEvent& event) {
  ProcessStreamResponse response;
  *response.mutable_event() = event;
  auto item = envelope(print(response));
  for (const auto& weak : readers)
    if (auto reader = weak.lock()) reader->push(item);
}

void Process::finish(const std::string& end) {
  for (const auto& weak : readers)
    if (auto reader = weak.lock()) {
      reader->push(end);
      reader->close();
    }
  readers.clear();
}

void Process::abort() {
  for (const auto& weak : readers)
    if (auto reader = weak.lock()) {
      reader->aborted = true;
      reader->close();
    }
  readers.clear();
}

asio::awaitable<void> E2b::process_call(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                        const std::string& method) {
  auto body = co_await exchange.read_json_body();
  const bool streaming = method == "Start" || method == "Connect";
  if (!body) {
    if (streaming)
      co_return co_await stream_error(exchange, connect_code(body.error().kind),
                                      body.error().message());
    co_return co_await unary_error(exchange, connect_code(body.error().kind),
                                   body.error().message());
  }
  if (streaming) {
    auto json = single_envelope(*body);
    if (!json)
      co_return co_await stream_error(exchange, "invalid_argument", json.error().message());
    if (method == "Start") co_return co_await start(exchange, sandbox, *json);
    co_return co_await attach(exchange, sandbox, *json);
  }

  if (method == "List") {
    ListResponse out;
    for (const auto& [pid, process] : sandbox->processes) {
      auto* info = out.add_processes();
      info->set_pid(pid);
      *info->mutable_config() = process->config;
      if (process->tag) info->set_tag(*process->tag);
    }
    co_return co_await exchange.respond(200, print(out));
  }
  if (method == "SendSignal") {
    SendSignalRequest request;
    if (auto parsed = parse(*body, request); !parsed)
      co_return co_await unary_error(exchange, "invalid_argument", parsed.error().message());
    auto process = find_process(*sandbox, request.process());
    if (!process) co_return co_await unary_error(exchange, "not_found", "no such process");
    std::string name;
    if (request.signal() == SIGNAL_SIGKILL) name = "KILL";
    if (request.signal() == SIGNAL_SIGTERM) name = "TERM";
    if (name.empty())
      co_return co_await unary_error(exchange, "invalid_argument",
                                     "signal: SIGNAL_SIGKILL or SIGNAL_SIGTERM");
    const auto pid = std::to_string(process->pid);
    auto killed = co_await run_script(
        *sandbox,
        "kill -s " + name + " -- -" + pid + " 2>/dev/null || kill -s " + name + " -- " + pid, {});
    if (!killed)
      co_return co_await unary_error(exchange, connect_code(killed.error().kind),
                                     killed.error().message());
    if (killed->exit_code != 0)
      co_return co_await unary_error(exchange, "not_found", "the process has already ended");
    co_return co_await exchange.respond(200, "{}");
  }
  if (method == "SendInput" || method == "CloseStdin") {
    SendInputRequest request; // CloseStdin's body is its selector alone
    if (auto parsed = parse(*body, request); !parsed)
      co_return co_await unary_error(exchange, "invalid_argument", parsed.error().message());
    auto process = find_process(*sandbox, request.process());
    if (!process) co_return co_await unary_error(exchange, "not_found", "no such process");
    // Started without stdin: it reads /dev/null, closed already.
    if (!process->stdin_open) {
      if (method == "CloseStdin") co_return co_await exchange.respond(200, "{}");
      co_return co_await unary_error(exchange, "failed_precondition",
                                     "the process was started without stdin; start it with "
                                     "stdin: true to send it input");
    }
    if (request.input().input_case() == ProcessInput::kPty)
      co_return co_await unary_error(exchange, "unimplemented",
                                     "pty input: vesicle's guest agent has no PTY");
    const std::string fifo = std::string(kStdinDir) + "/" + std::to_string(process->pid);
    // One script per piece: each piece travels in an environment variable,
    // which execve caps at 128 KiB (a byte escaped is four).
    std::vector<std::string> scripts;
    std::vector<std::string> pieces;
    if (method == "CloseStdin") {
      scripts.push_back("[ -e \"$F.keeper\" ] && kill $(cat \"$F.keeper\") 2>/dev/null; exit 0");
      pieces.emplace_back();
    } else {
      const auto& data = request.input().stdin();
      for (std::size_t at = 0; at < data.size(); at += kStdinPiece) {
        // The FIFO is gone when the command has ended.
        scripts.push_back("[ -p \"$F\" ] || exit 3; printf \"$D\" > \"$F\"");
        pieces.push_back(printf_escaped(std::string_view(data).substr(at, kStdinPiece)));
      }
    }
    for (std::size_t i = 0; i < scripts.size(); ++i) {
      std::map<std::string, std::string> env{{"F", fifo}, {"D", pieces[i]}};
      auto sent = co_await run_script(*sandbox, scripts[i], std::move(env));
      if (!sent)
        co_return co_await unary_error(exchange, connect_code(sent.error().kind),
                                       sent.error().message());
      if (sent->exit_code == 3)
        co_return co_await unary_error(exchange, "not_found", "the process has already ended");
      if (sent->exit_code != 0)
        co_return co_await unary_error(exchange, "internal",
                                       "writing the process's stdin failed: " + sent->err);
    }
    if (method == "CloseStdin") process->stdin_open = false;
    co_return co_await exchange.respond(200, "{}");
  }
  co_await unary_error(exchange, "unimplemented",
                       "process.Process/" + method +
                           " is not implemented by vesicle (no PTY, no stdin streaming)");
}

asio::awaitable<void> E2b::start(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                 std::string_view json) {
  StartRequest request;
  if (auto parsed = parse(json, request); !parsed)
    co_return co_await stream_error(exchange, "invalid_argument", parsed.error().message());
  if (request.has_pty())
    co_return co_await stream_error(exchange, "unimplemented",
                                    "pty: vesicle's guest agent has no PTY; run commands "
                                    "without one (sandbox.commands, not sandbox.pty)");
  if (request.process().cmd().empty())
    co_return co_await stream_error(exchange, "invalid_argument", "process.cmd: required");

  guest::ExecBash exec;
  const bool with_stdin = request.has_stdin() && request.stdin();
  std::string command = with_stdin ? stdin_prologue() : std::string();
  command +=
      "printf '\\036vesicle-pid %d\\n' \"$$\" >&2; exec " + shell_quote(request.process().cmd());
  for (const auto& arg : request.process().args())
    command += " " + shell_quote(arg);
  exec.set_command(std::move(command));
  exec.mutable_env()->insert(sandbox->env_vars.begin(), sandbox->env_vars.end());
  for (const auto& [name, value] : request.process().envs())
    (*exec.mutable_env())[name] = value;
  // No `?:` with temporaries in a coroutine (g++ 12 miscompiles them).
  std::string cwd = kHome;
  if (request.process().has_cwd() && !request.process().cwd().empty())
    cwd = absolute(request.process().cwd());
  exec.set_cwd(cwd);

  auto lease = co_await api_.begin_op(sandbox->owner, sandbox->vid);
  if (!lease)
    co_return co_await stream_error(exchange, connect_code(lease.error().kind),
                                    lease.error().message());

  auto executor = co_await asio::this_coro::executor;
  auto process = std::make_shared<Process>();
  process->config = request.process();
  process->stdin_open = with_stdin;
  if (request.has_tag()) process->tag = request.tag();
  auto outbox = std::make_shared<Outbox>(executor);
  process->readers.push_back(outbox);

  // The command runs in its own coroutine, which owns the lease: it runs
  // to its end whether or not anyone still reads its events.
  auto held = std::make_shared<VmLease>(std::move(*lease));
  asio::co_spawn(
      executor,
      [self = shared_from_this(), sandbox, process, held,
       exec = std::move(exec)]() mutable -> asio::awaitable<void> {
        struct Head {
          bool started = false;
          std::string stderr_head, early_stdout;
        };
        auto head = std::make_shared<Head>();
        vmm::ExecEventSink sink = [sandbox, process, head](const guest::Event& event) {
          const bool err = event.kind_case() == guest::Event::kStderr;
          if (!err && event.kind_case() != guest::Event::kStdout) return;
          const auto& bytes = err ? event.stderr() : event.stdout();
          if (head->started) return process->publish(data_event(err, bytes));
          if (!err) {
            head->early_stdout += bytes;
            return;
          }
          head->stderr_head += bytes;
          auto newline = head->stderr_head.find('\n');
          if (newline == std::string::npos) return;
          std::uint32_t pid = 0;
          if (head->stderr_head.compare(0, kPidMarker.size(), kPidMarker) == 0)
            pid = static_cast<std::uint32_t>(
                std::strtoul(head->stderr_head.c_str() + kPidMarker.size(), nullptr, 10));
          head->started = true;
          process->pid = pid;
          sandbox->processes[pid] = process;
          ProcessEvent started;
          started.mutable_start()->set_pid(pid);
          process->publish(started);
          if (!head->early_stdout.empty())
            process->publish(data_event(false, std::move(head->early_stdout)));
          if (newline + 1 < head->stderr_head.size())
            process->publish(data_event(true, head->stderr_head.substr(newline + 1)));
        };
        std::string failure_code, failure_message;
        try {
          auto exit = co_await held->vm().agent().exec_bash(std::move(exec), sink);
          if (exit && head->started) {
            process->publish(end_event(*exit));
          } else if (exit) {
            failure_code = "internal";
            failure_message = "the command ended before it started";
          } else {
            auto failure =
                co_await self->api_.agent_failure(*held, exit.error(), "running the command");
            failure_code = std::string(connect_code(failure.kind));
            failure_message = failure.message();
          }
        } catch (const std::exception& e) {
          failure_code = "internal";
          failure_message = std::string("hostd failed: ") + e.what();
        }
        auto found = sandbox->processes.find(process->pid);
        if (head->started && found != sandbox->processes.end() && found->second == process)
          sandbox->processes.erase(found);
        process->finish(end_of_stream(failure_code, failure_message));
      },
      asio::detached);
  co_await stream_out(exchange, outbox, true);
}

asio::awaitable<void> E2b::attach(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                  std::string_view json) {
  ConnectRequest request;
  if (auto parsed = parse(json, request); !parsed)
    co_return co_await stream_error(exchange, "invalid_argument", parsed.error().message());
  auto process = find_process(*sandbox, request.process());
  if (!process) co_return co_await stream_error(exchange, "not_found", "no such process");
  auto outbox = std::make_shared<Outbox>(co_await asio::this_coro::executor);
  ProcessStreamResponse started;
  started.mutable_event()->mutable_start()->set_pid(process->pid);
  outbox->push(envelope(print(started)));
  process->readers.push_back(outbox);
  co_await stream_out(exchange, outbox, true);
}

asio::awaitable<void> E2b::stream_out(Exchange& exchange, std::shared_ptr<Outbox> outbox,
                                      bool keepalives) {
  if (!co_await exchange.begin_stream(200, "application/connect+json"))
    co_return exchange.abandon_stream();
  bool sent_any = false;
  for (;;) {
    if (!outbox->items.empty()) {
      std::string chunk;
      for (auto& item : outbox->items)
        chunk += item;
      outbox->items.clear();
      sent_any = true;
      // A client that went away leaves the command running (background).
      if (!co_await exchange.write_chunk(chunk)) co_return exchange.abandon_stream();
      continue;
    }
    if (outbox->aborted) co_return exchange.abandon_stream();
    if (outbox->closed) break;
    outbox->wake.expires_after(kKeepalive);
    boost::system::error_code error;
    co_await outbox->wake.async_wait(asio::redirect_error(asio::use_awaitable, error));
    if (!error && keepalives && sent_any && outbox->items.empty() && !outbox->closed) {
      ProcessStreamResponse keepalive;
      keepalive.mutable_event()->mutable_keepalive();
      outbox->items.push_back(envelope(print(keepalive)));
    }
  }
  if (!co_await exchange.end_stream()) exchange.abandon_stream();
}

} // namespace vesicle::hostd::e2b
