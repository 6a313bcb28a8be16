#include "guest/agent/disk_limit.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "common/unique_fd.hpp"

namespace vesicle::agent {

namespace {

Result<std::string> read_text(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", path);
  char buffer[256] = {};
  const ssize_t n = ::read(fd.get(), buffer, sizeof buffer - 1);
  if (n < 0) return sys_error("read", path);
  return std::string(buffer, static_cast<std::size_t>(n));
}

Result<void> write_text(const std::string& path, const std::string& text) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", path);
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
    return sys_error("write " + text + " to", path);
  return {};
}

// The block device's name ("vda") of the filesystem at `mount_point`.
Result<std::string> device_name(const std::string& mount_point) {
  struct stat st {};
  if (::stat(mount_point.c_str(), &st) != 0) return sys_error("stat", mount_point);
  const std::string link =
      "/sys/dev/block/" + std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
  char target[512] = {};
  const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
  if (n <= 0) return sys_error("readlink", link);
  std::string path(target, static_cast<std::size_t>(n));
  return path.substr(path.rfind('/') + 1);
}

struct Superblock {
  std::uint64_t blocks = 0;
  std::uint64_t block_bytes = 0;
};

std::uint32_t le32(const unsigned char* p) {
  return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
         std::uint32_t{p[3]} << 24;
}

// The ext4 superblock's block count and size (at byte 1024 of the device;
// the count's high half is used only with the 64bit feature).
Result<Superblock> read_superblock(const std::string& device) {
  UniqueFd fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", device);
  unsigned char sb[1024] = {};
  if (::pread(fd.get(), sb, sizeof sb, 1024) != static_cast<ssize_t>(sizeof sb))
    return sys_error("read the ext4 superblock of", device);
  if (sb[0x38] != 0x53 || sb[0x39] != 0xEF)
    return make_error("read the ext4 superblock", "no ext4 magic", device);
  Superblock result;
  result.block_bytes = std::uint64_t{1024} << le32(sb + 24);
  result.blocks = le32(sb + 4);
  const bool is64 = (le32(sb + 0x60) & 0x80) != 0; // INCOMPAT_64BIT
  if (is64) result.blocks |= std::uint64_t{le32(sb + 0x150)} << 32;
  return result;
}

} // namespace

std::uint64_t clusters_to_reserve(std::uint64_t max_bytes, std::uint64_t total_clusters,
                                  std::uint64_t cluster_bytes, std::uint64_t base_reserved) {
  if (total_clusters == 0 || cluster_bytes == 0) return base_reserved;
  const std::uint64_t allowed = max_bytes / cluster_bytes;
  const std::uint64_t extra = allowed >= total_clusters ? 0 : total_clusters - allowed;
  return std::min(base_reserved + extra, total_clusters - 1);
}

Result<DiskLimitApplied> apply_disk_limit(const std::string& mount_point, std::uint64_t max_bytes) {
  // The kernel's own reservation, as found before the first limit, so a
  // later limit (or lifting it) starts from it again.
  static std::map<std::string, std::uint64_t> base_reserved;

  auto name = device_name(mount_point);
  if (!name) return std::move(name).error().with_context("finding the root filesystem's device");
  const std::string knob = "/sys/fs/ext4/" + *name + "/reserved_clusters";
  auto sb = read_superblock("/dev/" + *name);
  if (!sb) return std::move(sb).error().with_context("setting the disk limit");
  if (!base_reserved.count(*name)) {
    auto current = read_text(knob);
    if (!current)
      return std::move(current).error().with_context(
          "setting the disk limit (is the root filesystem ext4?)");
    base_reserved[*name] = std::strtoull(current->c_str(), nullptr, 10);
  }
  DiskLimitApplied applied;
  applied.fs_bytes = sb->blocks * sb->block_bytes;
  applied.reserved_clusters =
      clusters_to_reserve(max_bytes, sb->blocks, sb->block_bytes, base_reserved[*name]);
  if (auto written = write_text(knob, std::to_string(applied.reserved_clusters)); !written)
    return std::move(written).error().with_context("setting the disk limit");
  return applied;
}

} // namespace vesicle::agent
