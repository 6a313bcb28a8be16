// The jail-escape probe: started through the same launcher, with the same
// kind of Jail, uid, cgroup leaf and launcher seccomp filter as a VM's QEMU
// (but not QEMU's own -sandbox filter, which QEMU loads itself: the probe
// tests the wall that holds even if QEMU's filter had a hole), it tries what
// a guest that took over QEMU would try next, and prints one line per
// attempt: "BLOCKED <name> <how>" when the attempt failed, "ESCAPED <name>
// <what it got>" when it worked. The test (jail_escape_test.cpp) requires
// every named attempt to print BLOCKED. The memory attempt comes last: it
// allocates until the cgroup's OOM killer ends the probe.
//
// Arguments: key=value pairs naming the targets (paths and pids on the
// host, which the probe should not be able to reach):
//   other_overlay=PATH other_memory=/proc/PID/fd/N other_pid=PID
//   shared_disk=PATH (bound read-only) sealed_fd=N (a sealed memfd it holds)
//   key_file=PATH api_port=PORT abstract_socket=NAME allocate_mib=N
// With the single argument "exit42" it exits 42 at once: what the exec
// attempts run, to tell "ran" from "failed".
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace {

std::map<std::string, std::string> args;

void report(const char* name, bool escaped, const std::string& how) {
  std::printf("%s %s %s\n", escaped ? "ESCAPED" : "BLOCKED", name, how.c_str());
  std::fflush(stdout);
}

std::string err(int value = errno) {
  return std::strerror(value);
}

// A target the test must give: without it the attempt proves nothing, so it
// counts as an escape (the test fails) rather than passing vacuously.
bool missing(const char* name, const char* key) {
  if (!args[key].empty()) return false;
  report(name, true, std::string("no ") + key + "= given: nothing was tried");
  return true;
}

// Runs `attempt` (a syscall's 0 or -1) in a child, so what it changes (a
// namespace it got into, a limit it raised) cannot help or spoil the
// attempts after it. The child exits 1 when the attempt worked, 100 + errno
// when it failed.
void in_child(const char* name, const std::function<int()>& attempt, const std::string& success) {
  const pid_t child = ::fork();
  if (child < 0) return report(name, false, "fork: " + err());
  if (child == 0) {
    errno = 0;
    const int worked = attempt();
    ::_exit(worked == 0 ? 1 : 100 + errno);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 1) return report(name, true, success);
  if (WIFEXITED(status) && WEXITSTATUS(status) >= 100)
    return report(name, false, err(WEXITSTATUS(status) - 100));
  report(name, false, "the attempt ended with status " + std::to_string(status));
}

// Opening `path` with `flags` must fail (or the descriptor be useless).
void try_open(const char* name, const char* key, const std::string& path, int flags) {
  if (key && missing(name, key)) return;
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return report(name, false, path + ": " + err());
  char byte;
  const bool used =
      (flags & O_ACCMODE) != O_RDONLY ? ::write(fd, "x", 1) == 1 : ::read(fd, &byte, 1) >= 0;
  const std::string why = err();
  ::close(fd);
  report(name, used, path + (used ? ": opened and used" : ": opened, but not usable: " + why));
}

void try_other_vmm() {
  if (missing("signal_other_vmm", "other_pid")) return;
  const pid_t pid = static_cast<pid_t>(std::atol(args["other_pid"].c_str()));
  // kill(pid, 0) checks reachability without harming it: success means a
  // real signal would have been delivered.
  if (::kill(pid, 0) == 0) {
    report("signal_other_vmm", true, "kill(" + std::to_string(pid) + ", 0) reached a process");
  } else {
    report("signal_other_vmm", false, "kill: " + err());
  }
  // -1: every process the probe may signal, other than itself.
  if (::kill(-1, 0) == 0) {
    report("signal_every_process", true, "kill(-1, 0) reached some process");
  } else {
    report("signal_every_process", false, "kill(-1): " + err());
  }
  if (::ptrace(PTRACE_ATTACH, pid, nullptr, nullptr) == 0) {
    report("ptrace_other_vmm", true, "attached");
  } else {
    report("ptrace_other_vmm", false, "ptrace: " + err());
  }
  std::vector<char> buffer(16);
  iovec local{buffer.data(), buffer.size()}, remote{reinterpret_cast<void*>(0x400000), 16};
  if (::process_vm_readv(pid, &local, 1, &remote, 1, 0) >= 0) {
    report("read_other_vmm_memory", true, "process_vm_readv read its memory");
  } else {
    report("read_other_vmm_memory", false, "process_vm_readv: " + err());
  }
}

// Runs `exec` (an exec of something that exits 42) in a child: true if it
// ran; `how` says what happened.
bool runs(const std::function<void()>& exec, std::string& how) {
  const pid_t child = ::fork();
  if (child < 0) {
    how = "fork: " + err();
    return false;
  }
  if (child == 0) {
    exec();
    ::_exit(100 + errno);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 42) {
    how = "it ran";
    return true;
  }
  how = WIFEXITED(status) && WEXITSTATUS(status) >= 100 ? "exec: " + err(WEXITSTATUS(status) - 100)
                                                        : "status " + std::to_string(status);
  return false;
}

void try_exec() {
  // A shell from the host: there is none in the jail.
  std::string how, tried;
  bool ran = false;
  for (const char* shell :
       {"/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/bash", "/bin/busybox"}) {
    ran = runs(
        [shell] {
          char* const argv[] = {const_cast<char*>(shell), const_cast<char*>("-c"),
                                const_cast<char*>("exit 42"), nullptr};
          ::execv(shell, argv);
        },
        how);
    tried += std::string(tried.empty() ? "" : ", ") + shell + ": " + how;
    if (ran) break;
  }
  report("exec_shell", ran, tried);

  // A program of its own, written where it can write (its VM directory, the
  // jail's root, /tmp) and run from there: every writable place is noexec,
  // the root read-only.
  std::string own;
  {
    const int self = ::open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (self >= 0) {
      char chunk[65536];
      ssize_t n;
      while ((n = ::read(self, chunk, sizeof chunk)) > 0)
        own.append(chunk, static_cast<std::size_t>(n));
      ::close(self);
    }
  }
  if (own.empty()) return report("exec_written_file", true, "could not read its own binary");
  std::string places;
  bool escaped = false;
  for (const std::string& dir : {args["own_dir"], std::string("/"), std::string("/tmp")}) {
    if (dir.empty()) continue;
    const std::string path = (dir == "/" ? "" : dir) + "/probe-copy";
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
    if (fd < 0) {
      places += path + ": " + err() + "; ";
      continue;
    }
    const bool written = ::write(fd, own.data(), own.size()) == static_cast<ssize_t>(own.size());
    ::close(fd);
    if (!written) {
      places += path + ": write failed; ";
      continue;
    }
    const bool copy_ran = runs(
        [&path] {
          char* const argv[] = {const_cast<char*>(path.c_str()), const_cast<char*>("exit42"),
                                nullptr};
          ::execv(path.c_str(), argv);
        },
        how);
    ::unlink(path.c_str());
    places += path + ": " + how + "; ";
    escaped = escaped || copy_ran;
  }
  report("exec_written_file", escaped, places);

  // The same bytes in a memfd, run with fexecve: no mount flag applies to a
  // memfd. Asked for plainly, then explicitly executable (MFD_EXEC).
  std::string memfd_how;
  bool memfd_ran = false;
  for (const unsigned flags : {0u, 0x10u /* MFD_EXEC */}) {
    const int memfd = static_cast<int>(::syscall(SYS_memfd_create, "probe", flags));
    if (memfd < 0) {
      memfd_how += "memfd_create(" + std::to_string(flags) + "): " + err() + "; ";
      continue;
    }
    const bool copied = ::write(memfd, own.data(), own.size()) == static_cast<ssize_t>(own.size());
    const bool ran_now =
        copied && runs(
                      [memfd] {
                        char* const argv[] = {const_cast<char*>("probe"),
                                              const_cast<char*>("exit42"), nullptr};
                        char* const envp[] = {nullptr};
                        ::fexecve(memfd, argv, envp);
                      },
                      how);
    ::close(memfd);
    memfd_how +=
        "flags " + std::to_string(flags) + ": " + (copied ? how : "write: " + err()) + "; ";
    memfd_ran = memfd_ran || ran_now;
  }
  report("exec_memfd", memfd_ran, memfd_how);
}

void try_privileges() {
  in_child(
      "become_root", [] { return ::setresuid(0, 0, 0); }, "setresuid(0) worked");
  in_child(
      "mount_tmpfs", [] { return ::mount("none", "/", "tmpfs", 0, nullptr); }, "mounted");
  in_child(
      "unmount_proc", [] { return ::umount2("/proc", MNT_DETACH); }, "unmounted /proc");
  in_child(
      "chroot", [] { return ::chroot("/proc"); }, "chrooted");
  // In its own writable directory (nodev too, but mknod needs CAP_MKNOD
  // first): a node for the host's first disk.
  const std::string node = args["own_dir"] + "/sda";
  in_child(
      "make_device_node", [&node] { return ::mknod(node.c_str(), S_IFBLK | 0600, makedev(8, 0)); },
      "made a block device node " + node);
  struct {
    int flag;
    const char* name;
  } namespaces[] = {{CLONE_NEWUSER, "unshare_user"},
                    {CLONE_NEWNS, "unshare_mount"},
                    {CLONE_NEWNET, "unshare_net"},
                    {CLONE_NEWPID, "unshare_pid"},
                    {CLONE_NEWCGROUP, "unshare_cgroup"}};
  for (const auto& ns : namespaces) {
    const int flag = ns.flag;
    in_child(
        ns.name, [flag] { return ::unshare(flag); }, "unshared");
  }
  // The same through clone (what a filter on unshare alone would miss).
  in_child(
      "clone_new_user",
      [] {
        const long pid =
            ::syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, nullptr, nullptr, nullptr, 0);
        if (pid == 0) ::_exit(0);
        if (pid > 0) ::waitpid(static_cast<pid_t>(pid), nullptr, 0);
        return pid > 0 ? 0 : -1;
      },
      "cloned into a new user namespace");
  // The user namespace escape in two steps: a user namespace (where the
  // probe would be root) and then a mount namespace inside it.
  in_child(
      "user_then_mount_namespace",
      [] { return ::unshare(CLONE_NEWUSER) == 0 ? ::unshare(CLONE_NEWNS) : -1; },
      "root in a new user namespace, then a mount namespace");
}

void try_rlimits() {
  struct {
    int resource;
    const char* name;
  } limits[] = {{RLIMIT_NOFILE, "raise_rlimit_nofile"},
                {RLIMIT_NPROC, "raise_rlimit_nproc"},
                {RLIMIT_CORE, "raise_rlimit_core"}};
  for (const auto& each : limits) {
    const int resource = each.resource;
    rlimit limit{};
    ::getrlimit(resource, &limit);
    if (limit.rlim_max == RLIM_INFINITY) {
      report(each.name, true, "the hard limit is already unlimited");
      continue;
    }
    in_child(
        each.name,
        [resource, limit] {
          const rlimit raised{limit.rlim_max + 1, limit.rlim_max + 1};
          return ::setrlimit(resource, &raised);
        },
        "raised past its hard limit " + std::to_string(limit.rlim_max));
  }
}

void try_api() {
  if (!missing("connect_api", "api_port")) {
    const int port = std::atoi(args["api_port"].c_str());
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
      report("connect_api", false, "socket: " + err());
    } else {
      sockaddr_in address{};
      address.sin_family = AF_INET;
      address.sin_port = htons(static_cast<std::uint16_t>(port));
      address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      const bool connected =
          ::connect(s, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
      const std::string why =
          connected ? "connected to 127.0.0.1:" + std::to_string(port) : "connect: " + err();
      ::close(s);
      report("connect_api", connected, why);
    }
  }
  // Abstract unix sockets have no file to hide: only the network namespace
  // keeps the host's out of reach.
  if (!missing("connect_abstract_socket", "abstract_socket")) {
    const std::string name = args["abstract_socket"];
    const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path + 1, name.data(),
                std::min(name.size(), sizeof address.sun_path - 2));
    const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    const bool connected =
        s >= 0 && ::connect(s, reinterpret_cast<sockaddr*>(&address), length) == 0;
    const std::string why = connected ? "connected to @" + name : "connect: " + err();
    if (s >= 0) ::close(s);
    report("connect_abstract_socket", connected, why);
  }
}

void try_shared_memory() {
  if (missing("write_shared_memory", "sealed_fd")) return;
  const int fd = std::atoi(args["sealed_fd"].c_str());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size == 0)
    return report("write_shared_memory", true, "sealed_fd is not an open, non-empty file");
  if (::pwrite(fd, "x", 1, 0) == 1) {
    report("write_shared_memory", true, "pwrite wrote");
  } else {
    report("write_shared_memory", false, "pwrite: " + err());
  }
  // Re-opened read-write (what QEMU does) it is still sealed.
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  const int again = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (again < 0) {
    report("write_shared_memory_reopened", false, "open: " + err());
  } else {
    const bool wrote = ::pwrite(again, "x", 1, 0) == 1;
    const std::string why = wrote ? "pwrite wrote" : "pwrite: " + err();
    ::close(again);
    report("write_shared_memory_reopened", wrote, why);
  }
  void* shared = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (shared != MAP_FAILED) {
    ::munmap(shared, 4096);
    report("map_shared_memory_writable", true, "mmap(PROT_WRITE, MAP_SHARED) worked");
  } else {
    report("map_shared_memory_writable", false, "mmap: " + err());
  }
  if (::ftruncate(fd, st.st_size / 2) == 0) {
    report("resize_shared_memory", true, "ftruncate shrank it");
  } else if (::ftruncate(fd, st.st_size * 2) == 0) {
    report("resize_shared_memory", true, "ftruncate grew it");
  } else {
    report("resize_shared_memory", false, "ftruncate: " + err());
  }
  // A private mapping is what QEMU uses: its writes must stay its own.
  void* own = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (own == MAP_FAILED) return report("private_copy_leaks", false, "mmap: " + err());
  const char before = *static_cast<char*>(own);
  *static_cast<char*>(own) = static_cast<char>(before + 1);
  char seen = 0;
  const bool leaked = ::pread(fd, &seen, 1, 0) == 1 && seen != before;
  ::munmap(own, 4096);
  report("private_copy_leaks", leaked,
         leaked ? "a private mapping's write reached the file" : "the file kept its byte");
}

// Last: allocates and touches memory until the cgroup's limit kills it.
void allocate() {
  const long mib = std::atol(args["allocate_mib"].c_str());
  std::printf("ALLOCATING %ld MiB\n", mib);
  std::fflush(stdout);
  std::vector<char*> blocks;
  for (long i = 0; i < mib; ++i) {
    char* block = static_cast<char*>(std::malloc(1 << 20));
    if (!block) break;
    std::memset(block, 1, 1 << 20);
    blocks.push_back(block);
  }
  report("allocate_past_limit", true, "allocated " + std::to_string(blocks.size()) + " MiB");
}

} // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "exit42") == 0) return 42;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto equals = arg.find('=');
    if (equals != std::string::npos) args[arg.substr(0, equals)] = arg.substr(equals + 1);
  }
  try_open("read_other_overlay", "other_overlay", args["other_overlay"], O_RDONLY);
  try_open("read_other_memory", "other_memory", args["other_memory"], O_RDONLY);
  try_open("write_shared_disk", "shared_disk", args["shared_disk"], O_WRONLY);
  try_open("read_key_file", "key_file", args["key_file"], O_RDONLY);
  try_open("read_shadow", nullptr, "/etc/shadow", O_RDONLY);
  try_other_vmm();
  try_exec();
  try_privileges();
  try_rlimits();
  try_api();
  try_shared_memory();
  std::printf("DONE\n");
  std::fflush(stdout);
  if (!args["allocate_mib"].empty()) allocate();
  return 0;
}
