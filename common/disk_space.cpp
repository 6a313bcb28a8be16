#include "common/disk_space.hpp"

#include <sys/statvfs.h>

#include <cerrno>

namespace vesicle {

Result<std::uint64_t> available_bytes(const std::filesystem::path& path) {
  struct statvfs figures {};
  std::filesystem::path dir = path;
  while (::statvfs(dir.c_str(), &figures) != 0) {
    if (errno != ENOENT || !dir.has_relative_path()) return sys_error("statvfs", path.string());
    dir = dir.parent_path();
  }
  return static_cast<std::uint64_t>(figures.f_bavail) * figures.f_frsize;
}

} // namespace vesicle
