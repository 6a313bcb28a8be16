#include "net/netns.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

namespace vesicle::net {
namespace {

std::string netns_path(const std::string& name) {
  return std::string(kNetnsDir) + "/" + name;
}

Result<void> validate_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || name.find('/') != std::string::npos || name == "." ||
      name == "..") {
    return make_error("name network namespace", "names are 1-64 characters without '/'", name);
  }
  return {};
}

// iproute2 makes /run/netns a shared mount point so a name bound in one
// mount namespace shows up in the others; doing the same keeps `ip netns`
// and our namespaces interchangeable.
Result<void> prepare_netns_dir() {
  static std::mutex mutex;
  static bool prepared = false;
  std::lock_guard lock(mutex);
  if (prepared) return {};
  if (mkdir(kNetnsDir, 0755) != 0 && errno != EEXIST) return sys_error("mkdir", kNetnsDir);
  bool bound = false;
  while (mount("", kNetnsDir, "none", MS_SHARED | MS_REC, nullptr) != 0) {
    if (errno != EINVAL || bound) return sys_error("make shared mount", kNetnsDir);
    if (mount(kNetnsDir, kNetnsDir, "none", MS_BIND | MS_REC, nullptr) != 0) {
      return sys_error("bind mount", kNetnsDir);
    }
    bound = true;
  }
  prepared = true;
  return {};
}

} // namespace

Result<Netns> Netns::open_named(const std::string& name) {
  if (auto valid = validate_name(name); !valid) return std::move(valid).error();
  auto path = netns_path(name);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error("open network namespace", path);
  return Netns(name, UniqueFd(fd));
}

Result<Netns> Netns::of_current_thread() {
  int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error("open", "/proc/thread-self/ns/net");
  return Netns("(host)", UniqueFd(fd));
}

Result<Netns> Netns::duplicate() const {
  int fd = fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return sys_error("dup network namespace fd", name_);
  return Netns(name_, UniqueFd(fd));
}

namespace detail {
Result<void> join_netns(int netns_fd, const std::string& name) {
  if (setns(netns_fd, CLONE_NEWNET) != 0) return sys_error("setns", name);
  return {};
}
} // namespace detail

Result<Netns> create_named_netns(const std::string& name) {
  if (auto valid = validate_name(name); !valid) return std::move(valid).error();
  if (auto dir = prepare_netns_dir(); !dir) return std::move(dir).error();
  auto path = netns_path(name);
  int placeholder = open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
  if (placeholder < 0) {
    int err = errno;
    auto error = sys_error("create network namespace name", path, err);
    if (err == EEXIST)
      error.detail =
          "the name is taken; a leftover of an earlier run is removed by reclaim_leftovers()";
    return error;
  }
  close(placeholder);

  // The new namespace is made on a throwaway thread, bound to the name, and
  // the thread exits: no thread that runs anything else is ever inside it.
  Result<void> made = make_error("create network namespace", "the worker did not run", name);
  std::thread worker([&] {
    if (unshare(CLONE_NEWNET) != 0) {
      made = sys_error("unshare(CLONE_NEWNET)", name);
      return;
    }
    if (mount("/proc/thread-self/ns/net", path.c_str(), "none", MS_BIND, nullptr) != 0) {
      made = sys_error("bind mount network namespace", path);
      return;
    }
    made = {};
  });
  worker.join();
  if (!made) {
    unlink(path.c_str());
    return std::move(made).error();
  }
  auto opened = Netns::open_named(name);
  if (!opened) {
    umount2(path.c_str(), MNT_DETACH);
    unlink(path.c_str());
  }
  return opened;
}

Result<void> delete_named_netns(const std::string& name) {
  if (auto valid = validate_name(name); !valid) return std::move(valid).error();
  auto path = netns_path(name);
  if (umount2(path.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT) {
    return sys_error("unmount network namespace", path);
  }
  if (unlink(path.c_str()) != 0 && errno != ENOENT) return sys_error("unlink", path);
  return {};
}

Result<std::vector<std::string>> list_named_netns(std::string_view prefix) {
  std::vector<std::string> names;
  DIR* dir = opendir(kNetnsDir);
  if (!dir) {
    if (errno == ENOENT) return names;
    return sys_error("opendir", kNetnsDir);
  }
  while (dirent* entry = readdir(dir)) {
    std::string_view name = entry->d_name;
    if (name == "." || name == "..") continue;
    if (name.substr(0, prefix.size()) == prefix) names.emplace_back(name);
  }
  closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

Result<UniqueFd> socket_in(const Netns& netns, int domain, int type, int protocol) {
  return in_netns(netns, [&]() -> Result<UniqueFd> {
    int fd = ::socket(domain, type | SOCK_CLOEXEC, protocol);
    if (fd < 0) return sys_error("socket", "in network namespace " + netns.name());
    return UniqueFd(fd);
  });
}

Result<void> write_sysctl(const std::string& path, std::string_view value) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return sys_error("open sysctl", path);
  UniqueFd owned(fd);
  if (write(fd, value.data(), value.size()) != static_cast<ssize_t>(value.size())) {
    return sys_error("write sysctl", path);
  }
  return {};
}

Result<std::string> read_sysctl(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error("open sysctl", path);
  UniqueFd owned(fd);
  char buffer[256];
  ssize_t n = read(fd, buffer, sizeof buffer);
  if (n < 0) return sys_error("read sysctl", path);
  std::string text(buffer, static_cast<size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == ' '))
    text.pop_back();
  return text;
}

} // namespace vesicle::net
