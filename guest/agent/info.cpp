#include "guest/agent/info.hpp"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "guest/agent/events.hpp"

#ifndef VESICLE_VERSION
#define VESICLE_VERSION "unknown"
#endif

namespace vesicle::agent {

namespace {

std::string read_proc_file(const char* path) {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string text;
  char buffer[4096];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof buffer)) > 0 && text.size() < (1u << 16)) {
    text.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

// "MemTotal:       503316 kB" -> bytes
std::uint64_t meminfo_bytes(const std::string& meminfo, const char* key) {
  const std::string needle = std::string(key) + ":";
  std::size_t at = meminfo.find(needle);
  if (at == std::string::npos) return 0;
  return std::strtoull(meminfo.c_str() + at + needle.size(), nullptr, 10) * 1024u;
}

} // namespace

guest::Info collect_info(pid_t repl_pid) {
  guest::Info info;
  utsname names{};
  if (::uname(&names) == 0) info.set_kernel(clean_utf8(names.release, 256));
  const std::string uptime = read_proc_file("/proc/uptime");
  if (!uptime.empty()) {
    info.set_uptime_ms(static_cast<std::uint64_t>(std::strtod(uptime.c_str(), nullptr) * 1000.0));
  }
  const std::string meminfo = read_proc_file("/proc/meminfo");
  info.set_mem_total_bytes(meminfo_bytes(meminfo, "MemTotal"));
  info.set_mem_available_bytes(meminfo_bytes(meminfo, "MemAvailable"));
  struct statvfs fs {};
  if (::statvfs("/", &fs) == 0) {
    info.set_disk_total_bytes(static_cast<std::uint64_t>(fs.f_blocks) * fs.f_frsize);
    info.set_disk_free_bytes(static_cast<std::uint64_t>(fs.f_bavail) * fs.f_frsize);
  }
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) == 0) info.set_hostname(clean_utf8(host, 256));
  info.set_agent_version(VESICLE_VERSION);
  info.set_repl_pid(static_cast<std::uint32_t>(repl_pid > 0 ? repl_pid : 0));
  return info;
}

} // namespace vesicle::agent
