// A child process watched through a pidfd: spawned in its own process group,
// killed with SIGKILL if the spawning thread dies, waited for on an asio
// executor without blocking it, and reaped exactly once.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <utility> // before Boost 1.74's awaitable.hpp, which uses std::exchange without it

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "common/result.hpp"
#include "common/unique_fd.hpp"
#include "vmm/jail.hpp"

namespace vesicle::vmm::detail {

namespace asio = boost::asio;

struct SpawnOptions {
  std::vector<std::string> argv;     // argv[0] is looked up in PATH
  std::filesystem::path output;      // stdout and stderr, appended
  std::filesystem::path working_dir; // empty: inherit (in a jail: inside it; empty: /)
  std::vector<int> pass_fds;         // pass_fds[i] becomes fd 3+i in the child
  // The child's /proc/<pid>/oom_score_adj (-1000 to 1000), set before it
  // runs its program; unset: inherited from the parent.
  std::optional<int> oom_score_adj;
  // Confines the child (vmm/jail.hpp): its own uid, namespaces, root,
  // capabilities, rlimits, seccomp filter and cgroups. Unset: the child runs
  // as the parent does.
  std::optional<Jail> jail;
};

// How a process ended: exactly one of exit_status or signal is meaningful.
struct ExitStatus {
  bool signaled = false;
  int code = 0;                 // exit status, or the signal number when signaled
  std::string describe() const; // "exited with status 1", "killed by signal 9 (Killed)"
};

class Process {
public:
  // Forks and execs. The child gets /dev/null as stdin, `output` as stdout
  // and stderr, no other inherited descriptors, default signal handling, its
  // own process group, and PR_SET_PDEATHSIG(SIGKILL): it dies when the thread
  // that spawned it exits, so run this on a thread that lives as long as the
  // process should (an io_context thread of hostd). An exec failure, and
  // with a jail the setup step that failed ("jail: bind-mount /x: ..."), is
  // reported here, not as an exit status. A jailed child is PID 1 of its
  // own PID namespace: from outside, only SIGKILL, SIGSTOP and the signals
  // it handles reach it.
  static Result<std::unique_ptr<Process>> spawn(asio::any_io_executor executor,
                                                const SpawnOptions& options);
  // The same, waiting for the child's exec without blocking the thread: a
  // jail's setup (mount namespace, binds, cgroup join, seccomp) takes
  // milliseconds, and a fork's children then set up side by side instead
  // of one after another on the event loop.
  static asio::awaitable<Result<std::unique_ptr<Process>>>
  spawn_async(asio::any_io_executor executor, SpawnOptions options);

  // SIGKILLs a child still running; the blocking pool (vmm/blocking.hpp)
  // reaps it, so this never waits for the kernel.
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  bool exited() const { return status_.has_value(); }
  const std::optional<ExitStatus>& status() const { return status_; }

  // Completes when the process has exited and was reaped. One waiter at a
  // time.
  asio::awaitable<ExitStatus> wait();
  // Sends `signal` unless the process was already reaped.
  void kill(int signal);
  // SIGKILL, then a blocking reap: the kernel takes milliseconds to tear a
  // small process down, far longer for a QEMU with gigabytes of guest RAM.
  // Not for an event loop: there, kill() and await wait().
  ExitStatus kill_and_reap();

private:
  Process(asio::any_io_executor executor, pid_t pid, UniqueFd pidfd);
  // Reaps if the process has exited; blocks only when `block`.
  void reap(bool block);

  struct Watch;
  pid_t pid_;
  UniqueFd pidfd_;
  std::shared_ptr<Watch> watch_;
  std::optional<ExitStatus> status_;
};

// Finds `name` in PATH (or checks it when it contains a '/').
Result<std::filesystem::path> find_executable(const std::string& name);

// Runs a short helper (qemu-img) to completion; a non-zero exit is an Error
// carrying the tail of its output.
asio::awaitable<Result<void>> run_helper(asio::any_io_executor executor, SpawnOptions options);

// The last `max_bytes` of a file (for error messages), or "".
std::string file_tail(const std::filesystem::path& path, std::size_t max_bytes);

} // namespace vesicle::vmm::detail
