// Growing the root filesystem to fill its disk (GrowRootFs in
// messages/guest.proto). The disk's size is the sandbox's quota, which the
// host sets (the qcow2 overlay's virtual size, vmm/root_disk.hpp) and no one
// in the guest can change; the image's ext4 is made only as large as its
// files need, so the agent grows it online to the disk at start (a cold
// boot's disk is its quota from the beginning) and when hostd says it
// enlarged the disk of a VM restored from a snapshot.
//
// Why the EXT4_IOC_RESIZE_FS ioctl and not resize2fs: it is what resize2fs
// itself calls for a mounted filesystem, one syscall from a static binary
// that is already running as root, with no process to spawn and no
// dependency on e2fsprogs being in the image.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "common/result.hpp"

namespace vesicle::agent {

// The block count an ext4 of `block_bytes` blocks should have to fill a
// device of `device_bytes` (whole blocks only).
std::uint64_t blocks_to_fill(std::uint64_t device_bytes, std::uint64_t block_bytes);

struct RootFsGrown {
  std::uint64_t fs_bytes_before = 0;
  std::uint64_t fs_bytes = 0; // afterwards
  std::uint64_t device_bytes = 0;
};

// Grows the ext4 mounted at `mount_point` to fill its block device, once
// that device is at least `disk_bytes` large: the kernel learns of a
// resize from a virtio config interrupt, which may land a moment after
// the host's request, so it waits up to `wait` for it (0: use the size
// now). Nothing to do (no error) when the filesystem fills the device.
Result<RootFsGrown> grow_root_fs(const std::string& mount_point, std::uint64_t disk_bytes,
                                 std::chrono::milliseconds wait);

} // namespace vesicle::agent
