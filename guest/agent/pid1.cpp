#include "guest/agent/pid1.hpp"

#include <fcntl.h>
#include <net/if.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "guest/agent/log.hpp"
#include "guest/agent/loop.hpp"

namespace vesicle::agent {

namespace {

std::string read_text(const char* path) {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string text;
  char buffer[4096];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof buffer)) > 0 && text.size() < (1u << 20)) {
    text.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

// Field 5 of /proc/self/mountinfo is the mount point.
bool is_mount_point(const std::string& mountinfo, const std::string& path) {
  std::size_t line_start = 0;
  while (line_start < mountinfo.size()) {
    std::size_t line_end = mountinfo.find('\n', line_start);
    if (line_end == std::string::npos) line_end = mountinfo.size();
    std::size_t at = line_start;
    for (int field = 0; field < 4 && at < line_end; ++field) {
      at = mountinfo.find(' ', at);
      if (at == std::string::npos || at >= line_end) break;
      ++at;
    }
    if (at < line_end) {
      std::size_t end = mountinfo.find(' ', at);
      if (end == std::string::npos || end > line_end) end = line_end;
      if (mountinfo.compare(at, end - at, path) == 0) return true;
    }
    line_start = line_end + 1;
  }
  return false;
}

struct MountSpec {
  const char* target;
  const char* type;
  unsigned long flags;
  const char* data;
};

void mount_one(const MountSpec& spec) {
  // /proc is what tells us what is mounted; before it exists, ask the fs.
  if (std::strcmp(spec.target, "/proc") == 0) {
    struct stat st {};
    if (::stat("/proc/self", &st) == 0) return;
  } else if (is_mount_point(read_text("/proc/self/mountinfo"), spec.target)) {
    return;
  }
  ::mkdir(spec.target, 0755);
  if (::mount(spec.type, spec.target, spec.type, spec.flags, spec.data) != 0) {
    log_line(std::string("mount ") + spec.type + " on " + spec.target +
             " failed: " + std::strerror(errno));
  }
}

void link_if_missing(const char* target, const char* link) {
  struct stat st {};
  if (::lstat(link, &st) == 0) return;
  if (::symlink(target, link) != 0) {
    log_line(std::string("symlink ") + link + " -> " + target + " failed: " + std::strerror(errno));
  }
}

void set_hostname() {
  std::string name = read_text("/etc/hostname");
  const auto first = name.find_first_not_of(" \t\r\n");
  const auto last = name.find_last_not_of(" \t\r\n");
  name = first == std::string::npos ? "" : name.substr(first, last - first + 1);
  if (name.empty() || name.size() > 64 || name.find_first_of(" \t\r\n") != std::string::npos) {
    name = "vesicle";
  }
  if (::sethostname(name.data(), name.size()) != 0) {
    log_line(std::string("sethostname failed: ") + std::strerror(errno));
  }
}

void bring_up_loopback() {
  const int sock = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) {
    log_line(std::string("socket for lo failed: ") + std::strerror(errno));
    return;
  }
  ifreq request{};
  std::strncpy(request.ifr_name, "lo", IFNAMSIZ - 1);
  // The kernel gives lo 127.0.0.1/8 and ::1 by itself once it is up.
  if (::ioctl(sock, SIOCGIFFLAGS, &request) == 0) {
    request.ifr_flags |= IFF_UP;
    if (::ioctl(sock, SIOCSIFFLAGS, &request) != 0) {
      log_line(std::string("bringing up lo failed: ") + std::strerror(errno));
    }
  } else {
    log_line(std::string("reading the flags of lo failed: ") + std::strerror(errno));
  }
  ::close(sock);
}

void protect_from_oom_killer() {
  const int fd = ::open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  if (::write(fd, "-1000", 5) != 5) log_line("could not set the agent's oom_score_adj");
  ::close(fd);
  // Under memory pressure the kernel evicts clean file pages first, the
  // agent's own code among them, and an agent that page-faults on every
  // instruction does not answer. Its few MiB stay in RAM. Children do not
  // inherit the lock.
  if (::mlockall(MCL_CURRENT | MCL_FUTURE) != 0) {
    log_line(std::string("mlockall failed: ") + std::strerror(errno));
  }
}

} // namespace

void init_machine() {
  static const MountSpec mounts[] = {
      {"/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr},
      {"/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr},
      {"/dev", "devtmpfs", MS_NOSUID, "mode=0755"},
      {"/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666,gid=5"},
      {"/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"},
      {"/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"},
      {"/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"},
  };
  for (const auto& spec : mounts)
    mount_one(spec);
  link_if_missing("/proc/self/fd", "/dev/fd");
  link_if_missing("/proc/self/fd/0", "/dev/stdin");
  link_if_missing("/proc/self/fd/1", "/dev/stdout");
  link_if_missing("/proc/self/fd/2", "/dev/stderr");
  link_if_missing("pts/ptmx", "/dev/ptmx");
  set_hostname();
  bring_up_loopback();
  protect_from_oom_killer();
  ::setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
  ::setenv("HOME", "/root", 1);
  ::setenv("LANG", "C.UTF-8", 1);
}

void power_off() {
  log_line("powering off");
  ::sync();
  ::kill(-1, SIGKILL);
  // Reap what dies within a second; a process stuck in the kernel must not
  // keep the machine up.
  const std::uint64_t deadline = monotonic_us() + 1000000;
  while (monotonic_us() < deadline) {
    const pid_t pid = ::waitpid(-1, nullptr, WNOHANG);
    if (pid < 0 && errno == ECHILD) break;
    if (pid <= 0) ::usleep(10000);
  }
  ::sync();
  if (::mount(nullptr, "/", nullptr, MS_REMOUNT | MS_RDONLY, nullptr) != 0) {
    log_line(std::string("remounting / read-only failed: ") + std::strerror(errno));
  }
  ::reboot(RB_POWER_OFF);
  log_line(std::string("power-off failed: ") + std::strerror(errno));
}

} // namespace vesicle::agent
