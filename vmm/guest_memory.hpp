// Guest RAM held in memory files (memfd) that hostd creates and hands to
// QEMU as file descriptors, instead of named files in /dev/shm.
//
// Why: a named RAM file can be opened by anyone the file mode lets in, and
// QEMU 7.2 opens even a share=off (private, copy-on-write) memory backend
// read-write, so a template or fork snapshot that many VMs map could not be
// both usable by VMs running as their own users and unwritable by them.
// A memfd reaches only the processes given its descriptor; sealed
// (F_SEAL_WRITE, SHRINK, GROW, SEAL) nobody can change it any more, not even
// through a read-write descriptor, while private writable mappings of it
// still work. And it disappears with its last holder: a crashed hostd
// leaves no RAM file behind.
//
// QEMU reaches a passed memfd as /proc/self/fd/<n> (memory-backend-file's
// mem-path; it re-opens the path), and so does hostd for the steps that take
// paths (checksums, punching holes).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "common/result.hpp"
#include "common/unique_fd.hpp"
#include "vmm/sparse_file.hpp"

namespace vesicle::vmm {

// A memory file and what it is for. Shared by whoever maps or keeps it.
class GuestMemory {
public:
  // A new zero-filled memory file of `bytes`, writable, mode 0600 (the
  // owner may be changed for the VM that maps it share=on).
  static Result<std::shared_ptr<GuestMemory>> create(const std::string& name, std::uint64_t bytes);
  // A sealed copy of a file (a template's RAM image kept on disk); holes
  // stay holes. `seen`, if given, is shown every piece of data as it is
  // copied, so a caller can checksum the copy without reading it again.
  static Result<std::shared_ptr<GuestMemory>>
  load(const std::filesystem::path& file, const std::string& name, const ChunkFn& seen = {});

  int fd() const { return fd_.get(); }
  std::uint64_t bytes() const { return bytes_; }
  bool sealed() const { return sealed_; }
  // The path hostd's own file calls use: /proc/self/fd/<fd>.
  std::filesystem::path path() const;

  // No more changes, ever: after the last VM that mapped it share=on has
  // exited (a writable shared mapping makes sealing fail with EBUSY). Also
  // opens the mode to 0666, which a sealed file ignores for writes, because
  // QEMU 7.2 re-opens it read-write even for a private mapping and VMs run as
  // users other than its owner. Blocking: it waits up to a few seconds for
  // pages the kernel holds (see the definition); call it off the executor.
  Result<void> seal();
  // Makes `uid` the owner of an unsealed memory file: the one VM that maps
  // it share=on re-opens it read-write as that user (mode 0600).
  Result<void> give_to(uid_t uid, gid_t gid);
  // Opens an unsealed file to VMs that map it share=off before it is sealed
  // (a ForkLanding's: its QEMUs start before the fork fills the file). Mode
  // 0666, as a sealed file's: QEMU re-opens it read-write as another user.
  // None of their guests runs before the file is sealed.
  Result<void> open_to_vms();
  // Writes the content to `file` (created, mode 0400), keeping holes.
  Result<void> write_to(const std::filesystem::path& file) const;

  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

private:
  GuestMemory(UniqueFd fd, std::uint64_t bytes) : fd_(std::move(fd)), bytes_(bytes) {}
  UniqueFd fd_;
  std::uint64_t bytes_;
  bool sealed_ = false;
};

// /proc/self/fd/<fd>: the path under which a process reaches its own
// descriptor.
std::filesystem::path fd_path(int fd);

} // namespace vesicle::vmm
