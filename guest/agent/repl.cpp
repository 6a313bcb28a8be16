#include "guest/agent/repl.hpp"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "guest/agent/cgroup.hpp"
#include "guest/agent/events.hpp"
#include "guest/agent/log.hpp"
#include "guest/agent/spawn.hpp"

namespace vesicle::agent {

namespace {
// Between bash commands (500) and the agent (-1000): a memory bomb in a cell
// takes the REPL, not the agent.
constexpr int kReplOomScoreAdj = 200;
// A REPL that dies sooner than this after starting is not restarted
// eagerly (it would spin if python3 or repl.py is broken); the next cell
// starts one and reports why it failed.
constexpr std::uint64_t kEagerRestartMinLifetimeUs = 1000000;
constexpr std::size_t kMaxResultBytes = 1u << 20;
constexpr std::size_t kMaxErrorFieldBytes = 64u << 10;

// True when `pid` has exited but is not reaped yet: its exit is about to be
// handled, so closed pipes are no reason to kill it (or its group).
bool exited_unreaped(pid_t pid) {
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid == pid;
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) {
    std::string text = "was killed by signal " + std::to_string(WTERMSIG(status));
    if (const char* name = ::sigabbrev_np(WTERMSIG(status)))
      text += std::string(" (SIG") + name + ")";
    return text;
  }
  return "exited with status " + std::to_string(WEXITSTATUS(status));
}
} // namespace

// ---------------------------------------------------------------- PythonCell

PythonCell::PythonCell(Agent& agent, std::uint64_t id, guest::ExecPython request)
    : Request(agent, id), request_(std::move(request)),
      budget_(request_.max_output_bytes() != 0 ? request_.max_output_bytes()
                                               : agent.options().default_max_output_bytes) {}

void PythonCell::cancel() {
  if (finished()) return;
  agent_.repl().cancel(this);
}

void PythonCell::deliver(bool is_stderr, std::string_view data) {
  emit_output(budget_, is_stderr, data);
}

// ---------------------------------------------------------------- Repl

Repl::Repl(Agent& agent)
    : agent_(agent), timeout_timer_(agent.loop()), grace_timer_(agent.loop()) {}

Repl::~Repl() {
  terminate();
}

pid_t Repl::pid() const {
  return process_ && !process_->exited ? process_->pid : 0;
}

void Repl::start() {
  if (process_) return;
  if (auto launched = launch(); !launched) log_line(launched.error().message());
}

void Repl::terminate() {
  if (process_ && !process_->exited) {
    signal_group(process_->pid, SIGKILL);
    agent_.loop().forget_child(process_->pid);
  }
}

Result<void> Repl::launch() {
  const auto& options = agent_.options();
  if (python_.empty()) {
    auto resolved = resolve_program(options.python, kDefaultPath);
    if (!resolved) return std::move(resolved).error().with_context("starting the Python REPL");
    python_ = *resolved;
  }
  if (auto made = make_directories(options.home); !made) {
    return std::move(made).error().with_context("preparing the REPL's working directory");
  }
  auto command = make_pipe(false, true);
  if (!command) return std::move(command).error().with_context("starting the Python REPL");
  auto reply = make_pipe(true, false);
  if (!reply) return std::move(reply).error().with_context("starting the Python REPL");

  SpawnSpec spec;
  spec.program = python_;
  spec.argv = {python_, "-u", options.repl_path};
  spec.env = flatten_environment(default_environment(options.home));
  spec.cwd = options.home;
  spec.oom_score_adj = kReplOomScoreAdj;
  if (!options.workload_cgroup.empty()) spec.cgroup = options.workload_cgroup + "/" + kReplCgroup;
  spec.extra_fds = {{command->read.get(), 3}, {reply->write.get(), 4}};
  auto spawned = spawn(spec);
  if (!spawned) return std::move(spawned).error().with_context("starting the Python REPL");

  auto process = std::make_unique<Process>();
  process->pid = spawned->pid;
  process->started_us = monotonic_us();
  process->cgroup = spec.cgroup;
  if (!process->cgroup.empty()) process->oom_kills_at_start = oom_kill_count(process->cgroup);
  process->command = std::move(command->write);
  process->reply = std::move(reply->read);
  process->out = std::make_unique<PipeReader>(
      agent_.loop(), agent_.channel(), std::move(spawned->out),
      [this](std::string_view data) { deliver(false, data); }, [this] { return wants_bytes(); });
  process->err = std::make_unique<PipeReader>(
      agent_.loop(), agent_.channel(), std::move(spawned->err),
      [this](std::string_view data) { deliver(true, data); }, [this] { return wants_bytes(); });
  process->command_watch =
      Watch(agent_.loop(), process->command.get(), [this](std::uint32_t) { write_command(); });
  process->reply_watch =
      Watch(agent_.loop(), process->reply.get(), [this](std::uint32_t) { on_reply_readable(); });
  process->reply_watch.set_events(EPOLLIN);
  process->out->start();
  process->err->start();
  agent_.loop().on_child_exit(process->pid, [this](int status) { on_process_exit(status); });
  process_ = std::move(process);
  return {};
}

void Repl::submit(std::shared_ptr<PythonCell> cell) {
  queue_.push_back(std::move(cell));
  if (phase_ == Phase::kIdle) run_next();
}

void Repl::run_next() {
  while (phase_ == Phase::kIdle && !queue_.empty()) {
    current_ = std::move(queue_.front());
    queue_.pop_front();
    if (current_->finished()) {
      current_.reset();
      continue;
    }
    outcome_ = Outcome{};
    current_->started_us_ = monotonic_us();
    current_->running_ = true;
    current_->state_lost_before_ = std::exchange(state_lost_, false);
    phase_ = Phase::kRunning;

    if (!process_) {
      if (auto launched = launch(); !launched) {
        guest::PythonError error;
        error.set_name("ReplUnavailable");
        error.set_value(clean_utf8(launched.error().message(), kMaxErrorFieldBytes));
        outcome_.error = std::move(error);
        outcome_.repl_died = true;
        finish_current();
        continue;
      }
    }
    const std::uint64_t sequence = ++sequence_;
    process_->command_pending += repl_protocol::encode(
        {{'k', "exec"}, {'q', std::to_string(sequence)}, {'c', current_->request_.code()}});
    write_command();

    if (current_->request_.timeout_ms() > 0) {
      auto armed = timeout_timer_.arm(std::chrono::milliseconds(current_->request_.timeout_ms()),
                                      [this] { interrupt(); });
      if (!armed) {
        log_line(armed.error().message());
        interrupt();
      }
    }
  }
}

void Repl::reseed(std::string seed) {
  if (!process_ || process_->exited || process_->killed) return;
  process_->command_pending += repl_protocol::encode({{'k', "reseed"}, {'s', std::move(seed)}});
  write_command();
}

void Repl::write_command() {
  if (!process_) return;
  auto& pending = process_->command_pending;
  while (!pending.empty()) {
    const ssize_t n = ::write(process_->command.get(), pending.data(), pending.size());
    if (n > 0) {
      pending.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    // EPIPE: the REPL is gone or closed its command pipe; its exit (or the
    // kill below) ends the cell.
    pending.clear();
    if (!exited_unreaped(process_->pid)) kill_process("the REPL closed its command pipe");
    break;
  }
  if (process_) process_->command_watch.set_events(pending.empty() ? 0u : std::uint32_t{EPOLLOUT});
}

void Repl::on_reply_readable() {
  if (!process_) return;
  char buffer[64 << 10];
  // A buffer this full holds a whole message (or a bad one): take it first.
  while (!replies_paused_ && process_->reply_buffer.size() <= repl_protocol::kMaxReplyBytes + 4) {
    const ssize_t n = ::read(process_->reply.get(), buffer, sizeof buffer);
    if (n > 0) {
      process_->reply_buffer.append(buffer, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    // End of file: the REPL closed its reply pipe, so it can never answer.
    // Usually it has just died and its exit is about to be reaped; only a
    // REPL still alive (user code closed fd 4) needs killing.
    process_->reply_watch.reset();
    if (!process_->exited && !exited_unreaped(process_->pid))
      kill_process("the REPL closed its reply pipe");
    break;
  }
  while (process_ && !process_->killed && !replies_paused_) {
    auto message = repl_protocol::take(process_->reply_buffer);
    if (!message) {
      kill_process(message.error().message());
      return;
    }
    if (!*message) break;
    on_reply(**message);
  }
  // Paused, the pipe is left full and the REPL waits in its write.
  if (process_ && process_->reply_watch.active())
    process_->reply_watch.set_events(replies_paused_ ? 0u : std::uint32_t{EPOLLIN});
}

void Repl::on_reply(const repl_protocol::Fields& fields) {
  const std::string* kind = repl_protocol::find(fields, 'k');
  const std::string* sequence = repl_protocol::find(fields, 'q');
  if (kind == nullptr || sequence == nullptr) return;
  const bool current = phase_ == Phase::kRunning && *sequence == std::to_string(sequence_);
  if (*kind == "display") {
    // One of a cell gone by (a thread's) is dropped, but answered all the same.
    if (current) return on_display(fields);
    return send_shown(fields);
  }
  if (!current || *kind != "done") return;
  Outcome outcome;
  if (const std::string* result = repl_protocol::find(fields, 'r')) {
    outcome.result = clean_utf8(*result, kMaxResultBytes);
  }
  if (const std::string* name = repl_protocol::find(fields, 'n')) {
    guest::PythonError error;
    error.set_name(clean_utf8(*name, kMaxErrorFieldBytes));
    if (const std::string* value = repl_protocol::find(fields, 'v')) {
      error.set_value(clean_utf8(*value, kMaxErrorFieldBytes));
    }
    if (const std::string* traceback = repl_protocol::find(fields, 't')) {
      error.set_traceback(clean_utf8(*traceback, kMaxResultBytes));
    }
    outcome.error = std::move(error);
  }
  drain_then_finish(std::move(outcome));
}

void Repl::send_shown(const repl_protocol::Fields& fields) {
  const std::string* number = repl_protocol::find(fields, 'i');
  if (!process_ || number == nullptr) return;
  process_->command_pending += repl_protocol::encode({{'k', "shown"}, {'i', *number}});
  write_command();
}

void Repl::on_display(const repl_protocol::Fields& fields) {
  auto display = repl_protocol::display_of(fields);
  if (!display) {
    current_->deliver(true,
                      "vesicle: a display output was dropped: " + display.error().detail + "\n");
    return send_shown(fields);
  }
  display_ = std::move(*display);
  if (const std::string* number = repl_protocol::find(fields, 'i')) display_number_ = *number;
  replies_paused_ = true;
  drain_pipes([this] { display_drained(); });
}

void Repl::display_drained() {
  if (current_) emit_display(*current_);
  display_.reset();
  if (!agent_.channel().has_room()) {
    agent_.channel().wait_for_room(&room_wait_);
    return;
  }
  // Posted: this runs inside a PipeReader's drain callback.
  agent_.loop().post([this] { resume_replies(); });
}

void Repl::emit_display(PythonCell& cell) {
  if (!display_) return;
  guest::Event event;
  *event.mutable_display() = std::move(*display_);
  display_.reset();
  cell.emit(std::move(event));
}

void Repl::resume_replies() {
  if (!replies_paused_ || display_) return;
  replies_paused_ = false;
  if (!display_number_.empty()) send_shown({{'i', std::exchange(display_number_, {})}});
  on_reply_readable();
}

void Repl::interrupt() {
  if (phase_ != Phase::kRunning || !current_ || current_->timed_out_) return;
  current_->timed_out_ = true;
  timeout_timer_.cancel();
  if (process_ && !process_->exited) ::kill(process_->pid, SIGINT);
  auto armed = grace_timer_.arm(agent_.options().repl_grace, [this] {
    if (phase_ == Phase::kRunning) kill_process("the cell did not stop within the grace period");
  });
  if (!armed) kill_process(armed.error().message());
}

void Repl::kill_process(const std::string& why) {
  if (!process_ || process_->exited || process_->killed) return;
  log_line("killing the Python REPL (pid " + std::to_string(process_->pid) + "): " + why);
  process_->killed = true;
  // The whole group: the cell's subprocesses go with the state they served.
  signal_group(process_->pid, SIGKILL);
}

void Repl::on_process_exit(int status) {
  if (!process_) return;
  process_->exited = true;
  process_->status = status;
  std::string how = describe_status(status);
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && !process_->cgroup.empty() &&
      oom_kill_count(process_->cgroup) > process_->oom_kills_at_start)
    how = "was killed by the out-of-memory killer (OutOfMemory: the code used more memory than "
          "the sandbox has; create it with a larger memory_mib, or use less)";
  if (!process_->killed) {
    log_line("the Python REPL (pid " + std::to_string(process_->pid) + ") " + how);
  }
  switch (phase_) {
  case Phase::kRunning: {
    Outcome outcome;
    outcome.repl_died = true;
    guest::PythonError error;
    error.set_name("ReplRestarted");
    error.set_value(std::string("the Python REPL ") + how +
                    (current_->timed_out_ ? " after the cell ignored the interrupt" : "") +
                    " while running this cell; its variables and imports are lost and the next "
                    "cell starts in a fresh REPL");
    outcome.error = std::move(error);
    drain_then_finish(std::move(outcome));
    break;
  }
  case Phase::kDraining:
    // It replied, then died: the cell's answer stands, the state does not.
    state_lost_ = true;
    break;
  case Phase::kIdle:
    state_lost_ = true;
    retire_process();
    break;
  }
}

void Repl::drain_then_finish(Outcome outcome) {
  phase_ = Phase::kDraining;
  outcome_ = std::move(outcome);
  timeout_timer_.cancel();
  grace_timer_.cancel();
  drain_pipes([this] { finish_current(); });
}

void Repl::drain_pipes(std::function<void()> then) {
  // A later drain replaces an earlier one's callbacks (PipeReader keeps
  // one), so only the latest `then` runs.
  pending_drains_ = 2;
  auto drained = [this, then = std::move(then)] {
    if (--pending_drains_ == 0) then();
  };
  process_->out->drain_now(drained);
  process_->err->drain_now(drained);
}

void Repl::finish_current() {
  auto cell = std::move(current_);
  current_.reset();
  phase_ = Phase::kIdle;
  const bool restarted = outcome_.repl_died || cell->state_lost_before_;

  // A display still waiting for its drain (the REPL died meanwhile, and the
  // final drain took over the pipes) goes out before the result.
  emit_display(*cell);
  display_number_.clear();
  replies_paused_ = false;
  agent_.channel().stop_waiting(&room_wait_);

  if (outcome_.result) {
    guest::Event event;
    event.set_result(*outcome_.result);
    cell->emit(std::move(event));
  }
  if (outcome_.error) {
    guest::Event event;
    *event.mutable_error() = *outcome_.error;
    cell->emit(std::move(event));
  }
  guest::Event event;
  auto* exit = event.mutable_exit();
  exit->set_exit_code(outcome_.error ? 1 : 0);
  exit->set_timed_out(cell->timed_out_);
  exit->set_truncated(cell->budget_.truncated());
  exit->set_repl_restarted(restarted);
  exit->set_duration_us(monotonic_us() - cell->started_us_);
  cell->finish(std::move(event));
  outcome_ = Outcome{};

  if (process_ && process_->exited) retire_process();
  agent_.loop().post([this] { run_next(); });
}

void Repl::retire_process() {
  if (!process_) return;
  const bool long_lived = monotonic_us() - process_->started_us >= kEagerRestartMinLifetimeUs;
  // Destroyed after this loop iteration: its readers may be on the stack.
  std::shared_ptr<Process> retired(std::move(process_));
  retired->command_watch.reset();
  retired->reply_watch.reset();
  retired->out->close();
  retired->err->close();
  agent_.loop().post([retired] {});
  if (long_lived && queue_.empty()) start();
}

void Repl::cancel(PythonCell* cell) {
  if (cell == current_.get()) {
    interrupt();
    return;
  }
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->get() != cell) continue;
    auto queued = std::move(*it);
    queue_.erase(it);
    guest::Event event;
    event.mutable_exit()->set_exit_code(1);
    event.mutable_exit()->set_timed_out(true);
    queued->finish(std::move(event));
    return;
  }
}

void Repl::deliver(bool is_stderr, std::string_view data) {
  // Output while no cell runs (a thread printing after its cell ended) has
  // no request to belong to; it is read and dropped.
  if (current_ && phase_ != Phase::kIdle) current_->deliver(is_stderr, data);
}

bool Repl::wants_bytes() const {
  return current_ && phase_ != Phase::kIdle && current_->wants_bytes();
}

} // namespace vesicle::agent
