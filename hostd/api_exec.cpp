// POST /v1/sandboxes/{id}/exec: runs a cell or command and streams its
// events as NDJSON while it runs.
#include "hostd/api.hpp"

#include <chrono>
#include <deque>
#include <optional>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "hostd/exec_request_json.hpp"
#include "hostd/json.hpp"
#include "hostd/ndjson.hpp"

namespace vesicle::hostd {

namespace {

constexpr std::uint32_t kMaxTimeoutS = 86'400;
// Output waiting for a slow client beyond this is dropped (and the exit
// event says truncated) rather than held in hostd's memory.
constexpr std::size_t kMaxPendingBytes = 8u << 20;
constexpr std::chrono::milliseconds kHeaderGrace{250};

struct ExecPlan {
  bool python = true;
  guest::ExecPython python_request;
  guest::ExecBash bash_request;
};

Result<ExecPlan> plan_exec(const api::ExecRequest& request) {
  if (request.code().empty())
    return Error::of(ErrorKind::invalid_argument,
                     "code: required; give the Python cell or bash command to run");
  if (request.timeout_s() > kMaxTimeoutS)
    return Error::of(ErrorKind::invalid_argument,
                     "timeout_s: at most " + std::to_string(kMaxTimeoutS) + " (one day), got " +
                         std::to_string(request.timeout_s()));
  ExecPlan plan;
  const auto& language = request.language();
  if (language.empty() || language == "python") {
    if (!request.env().empty() || !request.cwd().empty())
      return Error::of(
          ErrorKind::invalid_argument,
          std::string(request.env().empty() ? "cwd" : "env") +
              ": applies to language \"bash\" only; in Python use os.environ / os.chdir");
    plan.python_request.set_code(request.code());
    plan.python_request.set_timeout_ms(request.timeout_s() * 1000);
  } else if (language == "bash") {
    plan.python = false;
    plan.bash_request.set_command(request.code());
    plan.bash_request.mutable_env()->insert(request.env().begin(), request.env().end());
    plan.bash_request.set_cwd(request.cwd());
    plan.bash_request.set_timeout_ms(request.timeout_s() * 1000);
  } else {
    return Error::of(ErrorKind::invalid_argument, "language: unsupported language \"" + language +
                                                      "\"; use \"python\" or \"bash\"");
  }
  return plan;
}

// Lines produced by the exec, waiting for the writer.
struct LineQueue {
  explicit LineQueue(asio::any_io_executor executor) : wake(executor) {
    wake.expires_at(asio::steady_timer::time_point::max());
  }
  void push(std::string line, bool droppable) {
    if (droppable && pending_bytes > kMaxPendingBytes) {
      dropped = true;
      return;
    }
    pending_bytes += line.size();
    lines.push_back(std::move(line));
    wake.cancel();
  }
  void close() {
    closed = true;
    wake.cancel();
  }
  std::deque<std::string> lines;
  // The exec failed before producing any output: answered as a plain error
  // if the 200 has not gone out yet.
  std::optional<Error> early_failure;
  std::size_t pending_bytes = 0;
  bool dropped = false;
  bool closed = false;
  asio::steady_timer wake;
};

} // namespace

// The exec flow: validate, lease the VM (404/409/410 before any output),
// send the 200, run the cell in one coroutine while this one writes each
// event out as it arrives, end with exactly one exit event.
asio::awaitable<void> Api::exec(Exchange& exchange, const std::string& owner,
                                const std::string& id) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await exchange.respond_error(body.error());
  api::ExecRequest request;
  auto parsed = parse_exec_request(*body, request);
  if (!parsed)
    co_return co_await exchange.respond_error(
        Error::of(ErrorKind::invalid_argument, "invalid exec request: " + parsed.error().detail));
  auto plan = plan_exec(request);
  if (!plan) co_return co_await exchange.respond_error(plan.error());

  auto lease = co_await begin_op(owner, id);
  if (!lease) co_return co_await exchange.respond_error(lease.error());

  auto executor = co_await asio::this_coro::executor;
  auto queue = std::make_shared<LineQueue>(executor);
  auto encoder = std::make_shared<ExecEventEncoder>();
  vmm::ExecEventSink sink = [queue, encoder](const guest::Event& event) {
    for (auto& line : encoder->encode(event))
      queue->push(std::move(line), true);
  };

  // The writer below waits for queue->closed, so `lease` and `plan` outlive
  // this coroutine.
  asio::co_spawn(
      executor,
      [&, queue, encoder, sink]() -> asio::awaitable<void> {
        std::vector<std::string> last;
        try {
          auto& agent = lease->vm().agent();
          // No `?:` around co_await: g++ 12 miscompiles it (double free).
          Result<guest::Exit> exit = make_error("exec", "not started");
          if (plan->python)
            exit = co_await agent.exec_python(plan->python_request, sink);
          else
            exit = co_await agent.exec_bash(plan->bash_request, sink);
          if (exit) {
            if (queue->dropped) exit->set_truncated(true);
            last = encoder->finish(*exit);
          } else {
            auto failure = co_await agent_failure(*lease, exit.error(), "running the code");
            if (encoder->next_seq() == 1) queue->early_failure = failure;
            last = encoder->finish(guest::Exit{}, std::string(kind_info(failure.kind).api_code),
                                   failure.message());
          }
        } catch (const std::exception& e) {
          last =
              encoder->finish(guest::Exit{}, std::string(kind_info(ErrorKind::internal).api_code),
                              std::string("hostd failed: ") + e.what());
        }
        for (auto& line : last)
          queue->push(std::move(line), false);
        queue->close();
      },
      asio::detached);

  // The 200 goes out with the first lines, or after a short grace when the
  // code is silent, so an exec that fails at once (the VM died a moment
  // ago) still gets its proper status (410) instead of a stream. Whatever
  // is waiting goes out as one chunk, in the same write as the header or
  // the final chunk when it can: a short cell is one or two sends.
  auto take_lines = [&queue] {
    std::string chunk;
    for (auto& line : queue->lines)
      chunk += line;
    queue->lines.clear();
    queue->pending_bytes = 0;
    return chunk;
  };
  bool header_sent = false;
  auto header_due = std::chrono::steady_clock::now() + kHeaderGrace;
  bool client_ok = true;
  bool ended = false;
  for (;;) {
    if (!header_sent) {
      if (queue->closed && queue->early_failure)
        co_return co_await exchange.respond_error(*queue->early_failure);
      if (!queue->lines.empty() || queue->closed ||
          std::chrono::steady_clock::now() >= header_due) {
        header_sent = true;
        const bool complete = queue->closed;
        const auto chunk = take_lines();
        client_ok = co_await exchange.begin_stream(200, "application/x-ndjson", chunk, complete);
        if (complete) {
          ended = client_ok;
          break;
        }
        continue;
      }
    }
    if (queue->closed) {
      const auto chunk = take_lines();
      if (client_ok) ended = co_await exchange.end_stream(chunk);
      break;
    }
    if (!queue->lines.empty()) {
      // A client that went away stops getting lines, but the cell runs on
      // to its end (or timeout): the REPL is one per sandbox and must not
      // be left mid-cell.
      const auto chunk = take_lines();
      if (client_ok) client_ok = co_await exchange.write_chunk(chunk);
      continue;
    }
    if (header_sent)
      queue->wake.expires_at(asio::steady_timer::time_point::max());
    else
      queue->wake.expires_at(header_due);
    boost::system::error_code ignored;
    co_await queue->wake.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
  if (!ended) exchange.abandon_stream();
}

asio::awaitable<Result<guest::Exit>> Api::run_exec(const std::string& owner, const std::string& id,
                                                   const api::ExecRequest& request,
                                                   vmm::ExecEventSink sink) {
  auto plan = plan_exec(request);
  if (!plan) co_return plan.error();
  auto lease = co_await begin_op(owner, id);
  if (!lease) co_return lease.error();
  auto& agent = lease->vm().agent();
  // No `?:` around co_await: g++ 12 miscompiles it (double free).
  Result<guest::Exit> exit = make_error("exec", "not started");
  if (plan->python)
    exit = co_await agent.exec_python(plan->python_request, std::move(sink));
  else
    exit = co_await agent.exec_bash(plan->bash_request, std::move(sink));
  if (!exit) co_return co_await agent_failure(*lease, exit.error(), "running the code");
  co_return exit;
}

} // namespace vesicle::hostd
