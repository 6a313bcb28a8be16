#include "guest/agent/spawn.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <unordered_map>

namespace vesicle::agent {

namespace {

rlimit g_child_fd_limit{};
bool g_fd_limit_raised = false;

// Runs in the child between fork and exec. The agent is single-threaded, so
// no lock can be held by another thread here, but keep it to plain syscalls
// anyway: everything it needs was prepared before the fork.
[[noreturn]] void exec_child(const SpawnSpec& spec, char* const* argv, char* const* envp,
                             int out_write, int err_write, const char* oom_text,
                             const char* cgroup_procs) {
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  // The agent ignores SIGPIPE, SIGTERM, SIGINT and SIGHUP, and ignored
  // dispositions survive exec: reset them so user programs behave normally
  // (a `yes | head` must die of SIGPIPE).
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    ::signal(sig, SIG_DFL);
  }
  ::setsid();
  if (g_fd_limit_raised) ::setrlimit(RLIMIT_NOFILE, &g_child_fd_limit);

  if (cgroup_procs != nullptr) {
    // Before exec, so nothing the command does runs outside the limits. If
    // it fails the command still runs (uncontained) rather than not at all.
    const int fd = ::open(cgroup_procs, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      [[maybe_unused]] ssize_t n = ::write(fd, "0", 1);
      ::close(fd);
    }
  }
  if (oom_text != nullptr) {
    const int fd = ::open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      [[maybe_unused]] ssize_t n = ::write(fd, oom_text, std::strlen(oom_text));
      ::close(fd);
    }
  }

  // Move every fd the child keeps above the target numbers first, so that
  // placing one cannot overwrite another that happens to sit on its number.
  struct Move {
    int from;
    int to;
  };
  Move moves[16];
  int count = 0;
  const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  moves[count++] = {devnull, 0};
  moves[count++] = {out_write, 1};
  moves[count++] = {err_write, 2};
  for (const auto& [from, to] : spec.extra_fds) {
    if (count < 16) moves[count++] = {from, to};
  }
  int highest = 2;
  for (int i = 0; i < count; ++i) {
    moves[i].from = ::fcntl(moves[i].from, F_DUPFD_CLOEXEC, 100);
    if (moves[i].to > highest) highest = moves[i].to;
  }
  for (int i = 0; i < count; ++i) {
    if (moves[i].from < 0 || ::dup2(moves[i].from, moves[i].to) < 0) _exit(126);
  }
  ::close_range(static_cast<unsigned>(highest) + 1, ~0u, 0);

  if (::chdir(spec.cwd.c_str()) != 0) {
    const char* msg = "vesicle-agent: cannot enter the working directory\n";
    [[maybe_unused]] ssize_t n = ::write(2, msg, std::strlen(msg));
    _exit(126);
  }
  ::execve(spec.program.c_str(), argv, envp);
  const int err = errno;
  const char* prefix = "vesicle-agent: cannot execute ";
  [[maybe_unused]] ssize_t n = ::write(2, prefix, std::strlen(prefix));
  n = ::write(2, spec.program.data(), spec.program.size());
  n = ::write(2, ": ", 2);
  const char* reason = ::strerror(err);
  n = ::write(2, reason, std::strlen(reason));
  n = ::write(2, "\n", 1);
  _exit(127);
}

std::vector<char*> c_strings(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const auto& s : strings)
    out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

} // namespace

void raise_fd_limit() {
  rlimit original{};
  if (::getrlimit(RLIMIT_NOFILE, &original) != 0) return;
  rlimit raised{65536, 65536};
  if (original.rlim_max != RLIM_INFINITY && original.rlim_max > raised.rlim_max) {
    raised = {original.rlim_max, original.rlim_max};
  }
  if (::setrlimit(RLIMIT_NOFILE, &raised) != 0) {
    raised = {original.rlim_max, original.rlim_max};
    if (::setrlimit(RLIMIT_NOFILE, &raised) != 0) return;
  }
  g_child_fd_limit = original;
  g_fd_limit_raised = true;
}

Result<Pipe> make_pipe(bool nonblocking_read, bool nonblocking_write) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return sys_error("pipe2");
  Pipe pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
  if (nonblocking_read) ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
  if (nonblocking_write) ::fcntl(fds[1], F_SETFL, O_NONBLOCK);
  return pipe;
}

Result<Spawned> spawn(const SpawnSpec& spec) {
  auto out = make_pipe(true, false);
  if (!out) return std::move(out).error().with_context("creating the stdout pipe");
  auto err = make_pipe(true, false);
  if (!err) return std::move(err).error().with_context("creating the stderr pipe");

  const auto argv = c_strings(spec.argv);
  const auto envp = c_strings(spec.env);
  std::string oom_text;
  if (spec.oom_score_adj) oom_text = std::to_string(*spec.oom_score_adj);
  const std::string cgroup_procs = spec.cgroup.empty() ? "" : spec.cgroup + "/cgroup.procs";

  const pid_t pid = ::fork();
  if (pid < 0) {
    return sys_error("fork", spec.program)
        .with_context("the machine may be out of processes or memory");
  }
  if (pid == 0) {
    exec_child(spec, argv.data(), envp.data(), out->write.get(), err->write.get(),
               spec.oom_score_adj ? oom_text.c_str() : nullptr,
               cgroup_procs.empty() ? nullptr : cgroup_procs.c_str());
  }
  return Spawned{pid, std::move(out->read), std::move(err->read)};
}

std::map<std::string, std::string> default_environment(const std::string& home) {
  return {{"PATH", kDefaultPath}, {"HOME", home}, {"LANG", "C.UTF-8"}, {"TERM", "dumb"}};
}

std::vector<std::string> flatten_environment(const std::map<std::string, std::string>& env) {
  std::vector<std::string> out;
  out.reserve(env.size());
  for (const auto& [name, value] : env)
    out.push_back(name + "=" + value);
  return out;
}

Result<std::string> resolve_program(const std::string& name, const std::string& path) {
  if (name.find('/') != std::string::npos) {
    if (::access(name.c_str(), X_OK) != 0) return sys_error("access", name);
    return name;
  }
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    if (!dir.empty()) {
      std::string candidate = dir + "/" + name;
      struct stat st {};
      if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
          ::access(candidate.c_str(), X_OK) == 0) {
        return candidate;
      }
    }
    start = end + 1;
  }
  return make_error("find program", "not found on PATH " + path, name);
}

Result<void> make_directories(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return {};
    return sys_error("mkdir", dir, ENOTDIR);
  }
  for (std::size_t at = 1; at <= dir.size(); ++at) {
    if (at != dir.size() && dir[at] != '/') continue;
    const std::string prefix = dir.substr(0, at);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) return sys_error("mkdir", prefix);
  }
  if (::stat(dir.c_str(), &st) != 0) return sys_error("stat", dir);
  if (!S_ISDIR(st.st_mode)) return sys_error("mkdir", dir, ENOTDIR);
  return {};
}

void signal_group(pid_t pgid, int sig) {
  if (pgid > 1) ::kill(-pgid, sig);
}

namespace {

// Parent pid from /proc/<pid>/stat; the command name (field 2) may hold
// spaces and parentheses, so parse after the last ')'.
pid_t parent_of(const char* pid) {
  char path[300];
  std::snprintf(path, sizeof path, "/proc/%s/stat", pid);
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buffer[1024];
  const ssize_t n = ::read(fd, buffer, sizeof buffer - 1);
  ::close(fd);
  if (n <= 0) return -1;
  buffer[n] = '\0';
  const char* close_paren = std::strrchr(buffer, ')');
  if (close_paren == nullptr) return -1;
  char state = 0;
  int ppid = -1;
  if (std::sscanf(close_paren + 1, " %c %d", &state, &ppid) != 2) return -1;
  return ppid;
}

} // namespace

void kill_descendants() {
  const pid_t self = ::getpid();
  for (int round = 0; round < 5; ++round) {
    std::unordered_map<pid_t, std::vector<pid_t>> children;
    std::unique_ptr<DIR, int (*)(DIR*)> proc(::opendir("/proc"), ::closedir);
    if (!proc) return;
    while (const dirent* entry = ::readdir(proc.get())) {
      if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
      const pid_t ppid = parent_of(entry->d_name);
      if (ppid > 0) children[ppid].push_back(static_cast<pid_t>(std::atoi(entry->d_name)));
    }
    std::vector<pid_t> doomed;
    std::vector<pid_t> frontier{self};
    while (!frontier.empty()) {
      const pid_t parent = frontier.back();
      frontier.pop_back();
      for (pid_t child : children[parent]) {
        doomed.push_back(child);
        frontier.push_back(child);
      }
    }
    if (doomed.empty()) return;
    for (pid_t pid : doomed)
      ::kill(pid, SIGKILL);
    for (int wait_round = 0; wait_round < 20; ++wait_round) {
      while (::waitpid(-1, nullptr, WNOHANG) > 0) {
      }
      ::usleep(5000);
    }
  }
}

} // namespace vesicle::agent
