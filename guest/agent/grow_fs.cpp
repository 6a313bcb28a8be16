#include "guest/agent/grow_fs.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <thread>

#include "common/unique_fd.hpp"

// From the kernel's fs/ext4/ext4.h (no uapi header carries it): the new
// block count, a __u64.
#ifndef EXT4_IOC_RESIZE_FS
#define EXT4_IOC_RESIZE_FS _IOW('f', 16, std::uint64_t)
#endif

namespace vesicle::agent {

namespace {

using Clock = std::chrono::steady_clock;

// The block device of the filesystem at `mount_point`: /dev/<name> as the
// kernel names it ("vda").
Result<std::string> device_path(const std::string& mount_point) {
  struct stat st {};
  if (::stat(mount_point.c_str(), &st) != 0) return sys_error("stat", mount_point);
  const std::string link =
      "/sys/dev/block/" + std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
  char target[512] = {};
  const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
  if (n <= 0) return sys_error("readlink", link);
  std::string path(target, static_cast<std::size_t>(n));
  return "/dev/" + path.substr(path.rfind('/') + 1);
}

Result<std::uint64_t> device_bytes(int fd, const std::string& device) {
  std::uint64_t bytes = 0;
  if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) return sys_error("BLKGETSIZE64", device);
  return bytes;
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
// the count's high half is used only with the 64bit feature). Read through
// the device's page cache, which the mounted filesystem's superblock
// buffer lives in, so it is current.
Result<Superblock> read_superblock(int fd, const std::string& device) {
  unsigned char sb[1024] = {};
  if (::pread(fd, sb, sizeof sb, 1024) != static_cast<ssize_t>(sizeof sb))
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

std::uint64_t blocks_to_fill(std::uint64_t device_bytes, std::uint64_t block_bytes) {
  return block_bytes == 0 ? 0 : device_bytes / block_bytes;
}

Result<RootFsGrown> grow_root_fs(const std::string& mount_point, std::uint64_t disk_bytes,
                                 std::chrono::milliseconds wait) {
  auto device = device_path(mount_point);
  if (!device)
    return std::move(device).error().with_context("finding the root filesystem's device");
  UniqueFd fd(::open(device->c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", *device);

  RootFsGrown grown;
  const auto deadline = Clock::now() + wait;
  for (;;) {
    auto bytes = device_bytes(fd.get(), *device);
    if (!bytes) return std::move(bytes).error();
    grown.device_bytes = *bytes;
    if (*bytes >= disk_bytes) break;
    if (Clock::now() >= deadline)
      return make_error("grow the root filesystem",
                        "the disk is " + std::to_string(*bytes) + " bytes, not the " +
                            std::to_string(disk_bytes) +
                            " the host made it (the kernel did not "
                            "hear of the resize in " +
                            std::to_string(wait.count()) + " ms)",
                        *device);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }

  auto sb = read_superblock(fd.get(), *device);
  if (!sb) return std::move(sb).error().with_context("growing the root filesystem");
  grown.fs_bytes_before = grown.fs_bytes = sb->blocks * sb->block_bytes;
  std::uint64_t target = blocks_to_fill(grown.device_bytes, sb->block_bytes);
  if (target <= sb->blocks) return grown;

  UniqueFd root(::open(mount_point.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root) return sys_error("open", mount_point);
  if (::ioctl(root.get(), EXT4_IOC_RESIZE_FS, &target) != 0)
    return sys_error("EXT4_IOC_RESIZE_FS to " + std::to_string(target) + " blocks", mount_point);
  // The kernel may leave off a last group too small to hold its own
  // metadata: the superblock says what it made.
  auto after = read_superblock(fd.get(), *device);
  grown.fs_bytes = after ? after->blocks * after->block_bytes : target * sb->block_bytes;
  return grown;
}

} // namespace vesicle::agent
