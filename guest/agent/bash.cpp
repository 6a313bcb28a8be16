#include "guest/agent/bash.hpp"

#include <signal.h>
#include <sys/wait.h>

#include "guest/agent/cgroup.hpp"
#include "guest/agent/events.hpp"
#include "guest/agent/spawn.hpp"

namespace vesicle::agent {

namespace {
constexpr const char* kBash = "/bin/bash";
// The OOM killer should pick a runaway command before the REPL, and never
// the agent (-1000 in PID-1 mode).
constexpr int kBashOomScoreAdj = 500;

bool valid_env_name(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (c == '=' || c == '\0') return false;
  }
  return true;
}
} // namespace

BashCommand::BashCommand(Agent& agent, std::uint64_t id, guest::ExecBash request)
    : Request(agent, id), request_(std::move(request)),
      budget_(request_.max_output_bytes() != 0 ? request_.max_output_bytes()
                                               : agent.options().default_max_output_bytes),
      timer_(agent.loop()) {}

BashCommand::~BashCommand() {
  if (pid_ > 0 && !exited_) {
    // Only reached when the agent itself is tearing down.
    kill_group();
    agent_.loop().forget_child(pid_);
  }
}

void BashCommand::begin() {
  auto env = default_environment(agent_.options().home);
  for (const auto& [name, value] : request_.env()) {
    if (!valid_env_name(name) || value.find('\0') != std::string::npos) {
      finish(failure_event(guest::Failure::BAD_REQUEST, 0,
                           "environment variable name \"" + clean_utf8(name, 256) +
                               "\" is empty or holds '=' or NUL; fix the env map"));
      return;
    }
    env[name] = value;
  }
  std::string cwd = request_.cwd().empty() ? agent_.options().home : request_.cwd();
  if (cwd.find('\0') != std::string::npos || cwd.front() != '/') {
    finish(failure_event(guest::Failure::BAD_REQUEST, 0,
                         "cwd \"" + clean_utf8(cwd, 4096) + "\" must be an absolute path"));
    return;
  }
  if (auto made = make_directories(cwd); !made) {
    finish(failure_from_error(std::move(made).error().with_context("preparing the cwd of bash")));
    return;
  }

  // Armed before the spawn: without a timer the limit could not be
  // enforced, and a command the host believes bounded must not run unbounded.
  if (request_.timeout_ms() > 0) {
    auto armed = timer_.arm(std::chrono::milliseconds(request_.timeout_ms()), [this] {
      timed_out_ = true;
      kill_group();
    });
    if (!armed) {
      finish(failure_from_error(std::move(armed).error().with_context("arming the timeout")));
      return;
    }
  }

  SpawnSpec spec;
  spec.program = kBash;
  spec.argv = {"bash", "-c", request_.command()};
  spec.env = flatten_environment(env);
  spec.cwd = cwd;
  spec.oom_score_adj = kBashOomScoreAdj;
  if (!agent_.options().workload_cgroup.empty())
    spec.cgroup = agent_.options().workload_cgroup + "/" + kCommandsCgroup;
  auto spawned = spawn(spec);
  if (!spawned) {
    finish(failure_from_error(std::move(spawned).error().with_context("starting bash")));
    return;
  }
  started_us_ = monotonic_us();
  pid_ = spawned->pid;
  agent_.loop().on_child_exit(pid_, [this](int status) { on_exit(status); });

  out_ = std::make_unique<PipeReader>(
      agent_.loop(), agent_.channel(), std::move(spawned->out),
      [this](std::string_view data) { deliver(false, data); }, [this] { return wants_bytes(); });
  err_ = std::make_unique<PipeReader>(
      agent_.loop(), agent_.channel(), std::move(spawned->err),
      [this](std::string_view data) { deliver(true, data); }, [this] { return wants_bytes(); });
  out_->start();
  err_->start();
}

bool BashCommand::wants_bytes() const {
  return !orphaned() && !budget_.exhausted();
}

void BashCommand::deliver(bool is_stderr, std::string_view data) {
  emit_output(budget_, is_stderr, data);
}

void BashCommand::kill_group() {
  // Once bash is reaped its pid may be reused; its group may still hold the
  // daemons the user asked for, which outlive the command by design.
  if (pid_ > 0 && !exited_) signal_group(pid_, SIGKILL);
}

void BashCommand::cancel() {
  if (finished()) return;
  timed_out_ = true;
  timer_.cancel();
  kill_group();
}

void BashCommand::on_exit(int status) {
  exited_ = true;
  status_ = status;
  ended_us_ = monotonic_us();
  timer_.cancel();
  pending_drains_ = 2;
  auto drained = [this] {
    if (--pending_drains_ == 0) finish_exit();
  };
  out_->drain_now(drained);
  err_->drain_now(drained);
}

void BashCommand::finish_exit() {
  out_->close();
  err_->close();
  guest::Event event;
  auto* exit = event.mutable_exit();
  if (WIFSIGNALED(status_)) {
    exit->set_signal(WTERMSIG(status_));
    exit->set_exit_code(128 + WTERMSIG(status_));
  } else {
    exit->set_exit_code(WEXITSTATUS(status_));
  }
  exit->set_timed_out(timed_out_);
  exit->set_truncated(budget_.truncated());
  exit->set_duration_us(ended_us_ - started_us_);
  finish(std::move(event));
}

} // namespace vesicle::agent
