#include "guest/agent/virtio_port.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <memory>

namespace vesicle::agent {

namespace {

std::string read_small_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  char buf[256];
  const ssize_t n = ::read(fd, buf, sizeof buf);
  ::close(fd);
  if (n <= 0) return {};
  std::string text(buf, static_cast<std::size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0'))
    text.pop_back();
  return text;
}

} // namespace

Result<std::string> find_virtio_port(const std::string& name, const std::string& sysfs_dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(sysfs_dir.c_str()), ::closedir);
  if (!dir) {
    return sys_error("opendir", sysfs_dir)
        .with_context("looking for the virtio-serial port \"" + name + "\"");
  }
  while (const dirent* entry = ::readdir(dir.get())) {
    const std::string dev = entry->d_name;
    if (dev == "." || dev == "..") continue;
    if (read_small_file(sysfs_dir + "/" + dev + "/name") == name) return "/dev/" + dev;
  }
  return make_error("find virtio-serial port",
                    "no port named \"" + name +
                        "\"; is the VM started with -device virtserialport,name=" + name + "?",
                    sysfs_dir);
}

} // namespace vesicle::agent
