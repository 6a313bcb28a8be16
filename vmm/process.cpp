#include "vmm/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "vmm/blocking.hpp"

extern char** environ;

namespace vesicle::vmm::detail {

namespace {

ExitStatus from_siginfo(const siginfo_t& info) {
  ExitStatus status;
  if (info.si_code == CLD_EXITED) {
    status.code = info.si_status;
  } else {
    status.signaled = true;
    status.code = info.si_status;
  }
  return status;
}

// What a child that failed before exec writes to the status pipe.
struct ChildFailure {
  int step; // a JailPlan step, or one of the two below
  int err;
};
constexpr int kSetupStep = -1; // stdio, descriptors, signals, working directory
constexpr int kExecStep = -2;

// Writes the failure to the status pipe and exits; async-signal-safe.
[[noreturn]] void child_fail(int pipe_fd, int step = kSetupStep) {
  const ChildFailure failure{step, errno};
  (void)!::write(pipe_fd, &failure, sizeof failure);
  ::_exit(127);
}

// clone3's argument (linux/sched.h's struct clone_args, whose header clashes
// with glibc's <sched.h>).
struct CloneArgs {
  std::uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

// glibc 2.36's <sys/pidfd.h> lacks extern "C", so C++ cannot link its
// wrappers; the raw syscalls are the same thing.
int pidfd_open(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}
int pidfd_send_signal(int pidfd, int signal) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0));
}

} // namespace

std::string ExitStatus::describe() const {
  if (!signaled) return "exited with status " + std::to_string(code);
  const char* name = ::sigdescr_np(code);
  return "killed by signal " + std::to_string(code) + (name ? std::string(" (") + name + ")" : "");
}

// The asio side of the pidfd lives in shared state so a wait() suspended
// while the Process is destroyed wakes (cancelled) without touching it.
struct Process::Watch {
  explicit Watch(asio::any_io_executor executor, int fd) : descriptor(std::move(executor), fd) {}
  asio::posix::stream_descriptor descriptor;
};

Process::Process(asio::any_io_executor executor, pid_t pid, UniqueFd pidfd)
    : pid_(pid), pidfd_(std::move(pidfd)) {
  // The descriptor gets its own duplicate so closing it (which cancels a
  // wait) leaves pidfd_ for signalling and reaping.
  watch_ = std::make_shared<Watch>(std::move(executor), ::fcntl(pidfd_.get(), F_DUPFD_CLOEXEC, 0));
}

Process::~Process() {
  if (!status_) {
    // Killed here, reaped by the blocking pool: a large process (a QEMU
    // with gigabytes of guest RAM) takes the kernel a while to tear down,
    // and this may run on an event loop.
    kill(SIGKILL);
    post_blocking([pidfd = std::move(pidfd_)] {
      siginfo_t info{};
      while (::waitid(P_PIDFD, pidfd.get(), &info, WEXITED) != 0 && errno == EINTR) {
      }
    });
  }
  boost::system::error_code ignored;
  watch_->descriptor.close(ignored);
}

namespace {

// Everything the child uses, prepared by the parent.
struct ChildPlan {
  const std::string& binary;
  char* const* argv;
  char* const* envp;
  const std::string& working_dir;
  const std::vector<int>& pass_fds;
  int* staged; // pass_fds.size() ints of scratch
  int null_fd, out_fd, report_fd;
  pid_t parent;     // unconfined: the parent's pid, to notice its death
  int parent_pidfd; // confined (getppid() is 0 in a new PID namespace)
  const JailPlan* jail;
  const std::string& oom_score_adj; // the number as written; empty: inherited
};

// In the child, after fork or clone: async-signal-safe calls only, because
// other threads of the parent may hold the allocator's locks.
[[noreturn]] void run_child(const ChildPlan& plan) {
  int report = plan.report_fd;
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) child_fail(report);
  // The parent may have died before the prctl took effect.
  if (plan.jail) {
    pollfd parent{plan.parent_pidfd, POLLIN, 0};
    if (::poll(&parent, 1, 0) != 0) ::_exit(127);
  } else if (::getppid() != plan.parent) {
    ::_exit(127);
  }
  if (::setpgid(0, 0) != 0) child_fail(report);
  sigset_t all;
  sigemptyset(&all);
  ::sigprocmask(SIG_SETMASK, &all, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig)
    ::sigaction(sig, &dfl, nullptr);
  // Still as the parent's user, before a jail drops the capability a value
  // below the parent's own would need.
  if (!plan.oom_score_adj.empty()) {
    const int adj = ::open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (adj < 0) child_fail(report);
    const auto size = plan.oom_score_adj.size();
    if (::write(adj, plan.oom_score_adj.data(), size) != static_cast<ssize_t>(size))
      child_fail(report);
    ::close(adj);
  }
  // Cgroups first: the descriptors to join them by are closed below.
  if (plan.jail) {
    const int failed = plan.jail->join_cgroups();
    if (failed >= 0) child_fail(report, failed);
  }

  // Keep only stdio, the passed descriptors (at 3, 4, ...) and the status
  // pipe (close-on-exec). Everything is first copied above the targets, so
  // no dup2 overwrites a descriptor still to be moved.
  const int count = static_cast<int>(plan.pass_fds.size());
  const int high = 3 + count;
  report = ::fcntl(report, F_DUPFD_CLOEXEC, high);
  if (report < 0) child_fail(plan.report_fd);
  int parent_pidfd = -1;
  if (plan.jail) {
    parent_pidfd = ::fcntl(plan.parent_pidfd, F_DUPFD_CLOEXEC, high);
    if (parent_pidfd < 0) child_fail(report);
  }
  for (int i = 0; i < count; ++i) {
    plan.staged[i] = ::fcntl(plan.pass_fds[i], F_DUPFD_CLOEXEC, high);
    if (plan.staged[i] < 0) child_fail(report);
  }
  if (::dup2(plan.null_fd, 0) < 0 || ::dup2(plan.out_fd, 1) < 0 || ::dup2(plan.out_fd, 2) < 0) {
    child_fail(report);
  }
  for (int i = 0; i < count; ++i) {
    if (::dup2(plan.staged[i], 3 + i) < 0) child_fail(report);
  }
  // Close everything from `high` up but the (close-on-exec) report pipe and
  // parent pidfd.
  const int kept_low = parent_pidfd >= 0 && parent_pidfd < report ? parent_pidfd : report;
  const int kept_high = parent_pidfd > report ? parent_pidfd : report;
  if (kept_low > high) ::close_range(high, kept_low - 1, 0);
  if (kept_high > kept_low + 1) ::close_range(kept_low + 1, kept_high - 1, 0);
  ::close_range(kept_high + 1, ~0U, 0);
  // The rest of the jail after the descriptors are in place, so its
  // RLIMIT_NOFILE cannot stop their moves.
  if (plan.jail) {
    // The jail's skeleton (its root and the directories leading to its
    // mounts) must be traversable by the jail's uid, whatever umask the
    // parent runs with (hostd: 077); what QEMU creates stays private.
    ::umask(022);
    const int failed = plan.jail->enter();
    ::umask(077);
    if (failed >= 0) child_fail(report, failed);
    // Changing uid cleared the parent-death signal: set it again, and see
    // whether the parent died meanwhile.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) child_fail(report);
    pollfd parent{parent_pidfd, POLLIN, 0};
    if (::poll(&parent, 1, 0) != 0) ::_exit(127);
  }
  const char* dir = !plan.working_dir.empty() ? plan.working_dir.c_str()
                    : plan.jail               ? "/"
                                              : nullptr;
  if (dir && ::chdir(dir) != 0) child_fail(report);
  ::execve(plan.binary.c_str(), plan.argv, plan.envp);
  child_fail(report, kExecStep);
}

// The child's side of spawn, in new namespaces: clone3 returns a pidfd from
// the start, so there is no window in which the pid could be reused.
pid_t clone_confined(const ChildPlan& plan, UniqueFd& pidfd) {
  int fd = -1;
  CloneArgs args{};
  args.flags = JailPlan::clone_flags() | CLONE_PIDFD;
  args.pidfd = reinterpret_cast<std::uintptr_t>(&fd);
  args.exit_signal = SIGCHLD;
  const auto pid = static_cast<pid_t>(::syscall(SYS_clone3, &args, sizeof args));
  if (pid == 0) run_child(plan);
  if (pid > 0) pidfd.reset(fd);
  return pid;
}

} // namespace

namespace {

// A child cloned and on its way to exec; its status pipe says how that went
// (EOF: it exec'd; a ChildFailure: it did not).
struct Started {
  pid_t pid = -1;
  UniqueFd pidfd;
  UniqueFd status_read;
  std::string binary;
  std::string name; // argv[0], for errors
  std::optional<JailPlan> jail;
  int pidfd_errno = 0; // why pidfd_open failed, if it did
};

Result<Started> start_child(const SpawnOptions& options) {
  if (options.argv.empty()) return make_error("spawn process", "empty argument list");
  auto binary = find_executable(options.argv[0]);
  if (!binary) return std::move(binary).error();

  // Everything the child needs is prepared here: between fork and exec only
  // async-signal-safe calls are allowed, because other threads may hold the
  // allocator's locks.
  Started started;
  started.binary = binary->string();
  started.name = options.argv[0];
  if (options.jail) {
    auto plan = JailPlan::prepare(*options.jail, *binary);
    if (!plan) return std::move(plan).error().with_context("confining " + options.argv[0]);
    started.jail.emplace(std::move(plan.value()));
  }
  const JailPlan* jail = started.jail ? &*started.jail : nullptr;
  std::vector<char*> argv;
  for (const auto& arg : options.argv)
    argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> jail_environment;
  if (options.jail) {
    for (const auto& variable : options.jail->environment)
      jail_environment.push_back(const_cast<char*>(variable.c_str()));
    jail_environment.push_back(nullptr);
  }
  const std::string output = options.output.string();
  const std::string working_dir = options.working_dir.string();
  if (options.oom_score_adj && (*options.oom_score_adj < -1000 || *options.oom_score_adj > 1000))
    return make_error("spawn process", "oom_score_adj must be between -1000 and 1000, not " +
                                           std::to_string(*options.oom_score_adj));
  const std::string oom_score_adj =
      options.oom_score_adj ? std::to_string(*options.oom_score_adj) : std::string();
  std::vector<int> staged(options.pass_fds.size(), -1);

  UniqueFd out(::open(output.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!out) return sys_error("open", output).with_context("opening the log of " + options.argv[0]);
  UniqueFd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null) return sys_error("open", "/dev/null");
  int status_pipe[2];
  if (::pipe2(status_pipe, O_CLOEXEC) != 0) return sys_error("pipe2");
  started.status_read.reset(status_pipe[0]);
  UniqueFd status_write(status_pipe[1]);
  UniqueFd parent_pidfd;
  if (jail) {
    parent_pidfd.reset(pidfd_open(::getpid()));
    if (!parent_pidfd) return sys_error("pidfd_open", "self");
  }

  const ChildPlan plan{started.binary, argv.data(),        jail ? jail_environment.data() : environ,
                       working_dir,    options.pass_fds,   staged.data(),
                       null.get(),     out.get(),          status_write.get(),
                       ::getpid(),     parent_pidfd.get(), jail,
                       oom_score_adj};
  if (jail) {
    started.pid = clone_confined(plan, started.pidfd);
    if (started.pid < 0) {
      return sys_error("clone3", options.argv[0])
          .with_context("starting a confined process (Linux 5.5 or later is required)");
    }
  } else {
    started.pid = ::fork();
    if (started.pid < 0) return sys_error("fork", options.argv[0]);
    if (started.pid == 0) run_child(plan);
    started.pidfd.reset(pidfd_open(started.pid));
    if (!started.pidfd) started.pidfd_errno = errno;
  }
  return started;
}

// What the status pipe said: `read` bytes of `failure` (0: EOF, it exec'd).
// An error when the child did not get to run its program (it is reaped).
Result<void> check_started(Started& started, std::size_t read, const ChildFailure& failure) {
  if (read == sizeof failure) {
    siginfo_t info{};
    ::waitid(P_PID, started.pid, &info, WEXITED);
    if (failure.step == kExecStep) return sys_error("execute", started.binary, failure.err);
    if (failure.step == kSetupStep) return sys_error("set up the child", started.name, failure.err);
    return started.jail->step_error(failure.step, failure.err)
        .with_context("starting " + started.name);
  }
  if (!started.pidfd) {
    const int err = started.pidfd_errno;
    ::kill(started.pid, SIGKILL);
    siginfo_t info{};
    ::waitid(P_PID, started.pid, &info, WEXITED);
    return sys_error("pidfd_open", std::to_string(started.pid), err)
        .with_context("watching " + started.name + " (Linux 5.3 or later is required)");
  }
  return {};
}

} // namespace

Result<std::unique_ptr<Process>> Process::spawn(asio::any_io_executor executor,
                                                const SpawnOptions& options) {
  auto started = start_child(options);
  if (!started) return std::move(started).error();
  // Blocks only until the child execs (or fails to): milliseconds (a jail's
  // mounts included).
  ChildFailure failure{};
  ssize_t n;
  do {
    n = ::read(started->status_read.get(), &failure, sizeof failure);
  } while (n < 0 && errno == EINTR);
  if (auto ok = check_started(*started, n > 0 ? static_cast<std::size_t>(n) : 0, failure); !ok)
    return std::move(ok).error();
  return std::unique_ptr<Process>(
      new Process(std::move(executor), started->pid, std::move(started->pidfd)));
}

asio::awaitable<Result<std::unique_ptr<Process>>>
Process::spawn_async(asio::any_io_executor executor, SpawnOptions options) {
  auto started = start_child(options);
  if (!started) co_return std::move(started).error();
  asio::posix::stream_descriptor status(executor, started->status_read.release());
  ChildFailure failure{};
  boost::system::error_code ec; // EOF when the child exec'd
  const std::size_t n = co_await asio::async_read(status, asio::buffer(&failure, sizeof failure),
                                                  asio::redirect_error(asio::use_awaitable, ec));
  if (auto ok = check_started(*started, n, failure); !ok) co_return std::move(ok).error();
  co_return std::unique_ptr<Process>(
      new Process(std::move(executor), started->pid, std::move(started->pidfd)));
}

void Process::reap(bool block) {
  if (status_) return;
  siginfo_t info{};
  int rc;
  do {
    rc = ::waitid(P_PIDFD, pidfd_.get(), &info, WEXITED | (block ? 0 : WNOHANG));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    // ECHILD: someone else reaped it (SIGCHLD set to SIG_IGN, a stray
    // waitpid(-1)). It is gone; how is unknown.
    if (errno == ECHILD || block) status_ = ExitStatus{true, 0};
    return;
  }
  if (info.si_pid == 0) return; // WNOHANG and still running
  status_ = from_siginfo(info);
}

asio::awaitable<ExitStatus> Process::wait() {
  auto watch = watch_;
  while (!status_) {
    boost::system::error_code ec;
    co_await watch->descriptor.async_wait(asio::posix::descriptor_base::wait_read,
                                          asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted && !watch->descriptor.is_open()) {
      // The Process was destroyed, which killed and reaped the child; `this`
      // is gone.
      co_return ExitStatus{true, SIGKILL};
    }
    reap(false);
  }
  co_return *status_;
}

void Process::kill(int signal) {
  if (status_) return;
  pidfd_send_signal(pidfd_.get(), signal);
}

ExitStatus Process::kill_and_reap() {
  kill(SIGKILL);
  reap(true);
  return *status_;
}

Result<std::filesystem::path> find_executable(const std::string& name) {
  auto usable = [](const std::filesystem::path& p) { return ::access(p.c_str(), X_OK) == 0; };
  if (name.find('/') != std::string::npos) {
    if (usable(name)) return std::filesystem::path(name);
    return sys_error("find executable", name);
  }
  const char* path = ::getenv("PATH");
  std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  while (!dirs.empty()) {
    const auto colon = dirs.find(':');
    const std::string_view dir = dirs.substr(0, colon);
    if (!dir.empty()) {
      std::filesystem::path candidate = std::filesystem::path(dir) / name;
      if (usable(candidate)) return candidate;
    }
    if (colon == std::string_view::npos) break;
    dirs.remove_prefix(colon + 1);
  }
  return make_error("find executable",
                    "not found in PATH; is it installed? (scripts/install-deps.sh)", name);
}

asio::awaitable<Result<void>> run_helper(asio::any_io_executor executor, SpawnOptions options) {
  auto process = Process::spawn(executor, options);
  if (!process) co_return std::move(process).error();
  const ExitStatus status = co_await process.value()->wait();
  if (!status.signaled && status.code == 0) co_return Result<void>{};
  co_return make_error("run", status.describe() + ": " + file_tail(options.output, 1024),
                       options.argv[0]);
}

std::string file_tail(const std::filesystem::path& path, std::size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  in.seekg(0, std::ios::end);
  const auto size = static_cast<std::size_t>(in.tellg());
  const std::size_t start = size > max_bytes ? size - max_bytes : 0;
  in.seekg(static_cast<std::streamoff>(start));
  std::string text(size - start, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r'))
    text.pop_back();
  return text;
}

} // namespace vesicle::vmm::detail
