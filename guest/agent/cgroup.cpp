#include "guest/agent/cgroup.hpp"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "guest/agent/log.hpp"

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

namespace vesicle::agent {

namespace {

constexpr const char* kCgroupRoot = "/sys/fs/cgroup";
constexpr const char* kWorkload = "/sys/fs/cgroup/workload";
// Memory kept out of the workload's reach, below what is available when the
// agent starts: the agent and its buffers (a few MiB) and the kernel's own
// unaccounted allocations while the workload sits at its limit. Too little
// and a memory or fork bomb drives the whole machine into the global OOM
// killer and thrashing, which is what the limit is there to prevent.
constexpr unsigned long long kAgentReserveBytes = 48ull << 20;

Result<void> write_file(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return sys_error("open", path);
  const ssize_t n = ::write(fd, text.data(), text.size());
  const int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(text.size())) return sys_error("write " + text + " to", path, err);
  return {};
}

unsigned long long meminfo_bytes(const char* key) {
  const int fd = ::open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buffer[512] = {};
  const ssize_t n = ::read(fd, buffer, sizeof buffer - 1);
  ::close(fd);
  if (n <= 0) return 0;
  const char* at = std::strstr(buffer, key);
  if (at == nullptr) return 0;
  return std::strtoull(at + std::strlen(key), nullptr, 10) * 1024ull;
}

bool is_cgroup2(const char* path) {
  struct statfs fs {};
  return ::statfs(path, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC;
}

} // namespace

WorkloadLimits workload_limits_for(unsigned long long mem_total, unsigned long long mem_available) {
  WorkloadLimits limits;
  if (mem_available > 2 * kAgentReserveBytes) {
    limits.memory_max_bytes = mem_available - kAgentReserveBytes;
  }
  // One process (or thread) per 512 KiB of the workload's memory: a shell
  // costs about 400 KiB with its page tables and stacks, so a fork bomb
  // reaches this limit (fork fails with EAGAIN) before it fills memory, and
  // the workload does not sink into out-of-memory thrashing. Real workloads
  // stay far below it: 800 tasks for a 512 MiB machine, 7000 for 4 GiB.
  const unsigned long long budget =
      limits.memory_max_bytes != 0 ? limits.memory_max_bytes : mem_total;
  limits.pids_max = std::clamp<unsigned long long>(budget / (512ull << 10), 512, 32768);
  return limits;
}

Result<std::string> setup_workload_cgroup() {
  if (!is_cgroup2(kCgroupRoot)) {
    if (::mount("cgroup2", kCgroupRoot, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) !=
        0) {
      return sys_error("mount cgroup2 on", kCgroupRoot)
          .with_context("user processes will run without cgroup limits");
    }
  }
  // One controller at a time: a kernel without one of them still gets the
  // others.
  for (const char* controller : {"+cpu", "+memory", "+pids"}) {
    if (auto enabled = write_file(std::string(kCgroupRoot) + "/cgroup.subtree_control", controller);
        !enabled) {
      log_line(enabled.error().message());
    }
  }
  if (::mkdir(kWorkload, 0755) != 0 && errno != EEXIST) {
    return sys_error("mkdir", kWorkload)
        .with_context("user processes will run without cgroup limits");
  }
  const WorkloadLimits limits =
      workload_limits_for(meminfo_bytes("MemTotal:"), meminfo_bytes("MemAvailable:"));
  if (limits.memory_max_bytes != 0) {
    if (auto set = write_file(std::string(kWorkload) + "/memory.max",
                              std::to_string(limits.memory_max_bytes));
        !set) {
      log_line(set.error().message());
    }
  }
  if (auto set = write_file(std::string(kWorkload) + "/pids.max", std::to_string(limits.pids_max));
      !set) {
    log_line(set.error().message());
  }
  // Two children share those limits and split the CPU evenly, so that a
  // runaway bash command (a fork bomb's thousand shells) leaves the REPL half
  // of the workload's time instead of a thousandth.
  if (auto enabled = write_file(std::string(kWorkload) + "/cgroup.subtree_control", "+cpu");
      !enabled) {
    log_line(enabled.error().message());
  }
  for (const char* child : {kReplCgroup, kCommandsCgroup}) {
    const std::string path = std::string(kWorkload) + "/" + child;
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
      return sys_error("mkdir", path).with_context("user processes will run without cgroup limits");
    }
  }
  return std::string(kWorkload);
}

unsigned long long oom_kill_count(const std::string& cgroup) {
  // The REPL's and the commands' cgroups have only the cpu controller
  // (setup_workload_cgroup): the memory limit, and so the count, is their
  // parent's, which counts the kills of its whole subtree.
  std::string path = cgroup + "/memory.events";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    path = cgroup.substr(0, cgroup.rfind('/')) + "/memory.events";
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  }
  if (fd < 0) return 0;
  char buffer[512] = {};
  const ssize_t n = ::read(fd, buffer, sizeof buffer - 1);
  ::close(fd);
  if (n <= 0) return 0;
  // Lines of "<name> <count>"; "oom_kill" must start a line ("oom_group_kill" also exists).
  for (const char* line = buffer; line != nullptr && *line != '\0';) {
    if (std::strncmp(line, "oom_kill ", 9) == 0) return std::strtoull(line + 9, nullptr, 10);
    line = std::strchr(line, '\n');
    if (line != nullptr) ++line;
  }
  return 0;
}

} // namespace vesicle::agent
