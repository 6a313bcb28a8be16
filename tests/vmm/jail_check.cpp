// The probe jail_test starts through Process::spawn with a Jail: it reports,
// one "name=value" line each, what it sees and what it was refused from
// inside, then holds still (so the test can inspect it from outside) until
// fd 3 reaches end of file.
//
//   jail_check <read-only dir> <writable dir>
//
// fd 3: a pipe the test closes to let it finish; fd 4: a file to read back.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <string>
#include <vector>

extern char** environ;

namespace {

// "ok" when `rc` is not -1, else the errno's name ("EPERM").
std::string outcome(long rc) {
  if (rc != -1) return "ok";
  const char* name = ::strerrorname_np(errno);
  return name ? name : std::to_string(errno);
}

std::string listing(const char* dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir)) {
    while (dirent* entry = ::readdir(d)) {
      const std::string name = entry->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
  } else {
    return outcome(-1);
  }
  std::sort(names.begin(), names.end());
  std::string joined;
  for (const auto& name : names)
    joined += (joined.empty() ? "" : ",") + name;
  return joined;
}

std::string read_all(int fd) {
  std::string text;
  char buffer[256];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof buffer)) > 0)
    text.append(buffer, static_cast<std::size_t>(n));
  return text;
}

void report(const char* name, const std::string& value) {
  std::printf("%s=%s\n", name, value.c_str());
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: jail_check <read-only dir> <writable dir>\n");
    return 2;
  }
  const std::string read_only = argv[1];
  const std::string writable = argv[2];

  // Before the probe opens anything: only 0-4 may be open.
  report("fd5", outcome(::fcntl(5, F_GETFD)));
  report("pid", std::to_string(::getpid()));
  report("root", listing("/"));
  report("bin_sh", outcome(::access("/bin/sh", F_OK)));
  report("etc_shadow", outcome(::access("/etc/shadow", F_OK)));
  report("ro_write",
         outcome(::open((read_only + "/probe").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600)));
  report("ro_read", listing(read_only.c_str()));
  report("rw_write",
         outcome(::open((writable + "/probe").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600)));
  report("root_write", outcome(::mkdir("/probe", 0700)));
  report("mount", outcome(::mount("none", "/proc", "tmpfs", 0, nullptr)));
  report("unshare", outcome(::unshare(CLONE_NEWUSER)));
  report("clone3", outcome(::syscall(SYS_clone3, nullptr, 0)));
  report("clone_newnet", [] {
    const long rc = ::syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0);
    if (rc == 0) ::_exit(0); // the filter let it through: the child goes
    return outcome(rc);
  }());
  report("setuid0", outcome(::setuid(0)));
  report("chroot", outcome(::chroot("/")));
  report("ptrace", outcome(::syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, 1, 0, 0)));
  report("inet_socket_connect", [] {
    // No interface but a down loopback in a fresh network namespace.
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return outcome(-1);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(80);
    to.sin_addr.s_addr = htonl(0x08080808);
    return outcome(::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to));
  }());
  report("proc", listing("/proc"));
  {
    std::ifstream cgroups("/proc/self/cgroup");
    std::string line, pids;
    while (std::getline(cgroups, line)) {
      if (line.find(":pids:") != std::string::npos) pids = line.substr(line.find(":pids:") + 6);
    }
    report("pids_cgroup", pids);
  }
  // fd 4, read directly and re-opened through /proc as QEMU does a memfd.
  report("fd4", read_all(4));
  const int again = ::open("/proc/self/fd/4", O_RDONLY | O_CLOEXEC);
  report("fd4_reopened", again < 0 ? outcome(-1) : read_all(again));
  {
    std::string variables;
    for (char** variable = environ; *variable; ++variable)
      variables += (variables.empty() ? "" : ",") + std::string(*variable);
    report("environment", variables);
  }
  report("ready", "1");
  std::fflush(stdout);
  read_all(3);
  return 0;
}
