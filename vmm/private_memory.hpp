// Copying the RAM of a running QEMU whose guest memory is a private
// (share=off, copy-on-write) mapping of a sealed memory file: what a fork of
// a VM restored from a snapshot needs, since no file holds its memory.
//
// Its RAM is the source file plus the pages the guest has written since:
// those are anonymous copies in QEMU's address space, which
// /proc/<pid>/pagemap tells apart from pages still backed by the file. The
// copy is a new memory file holding the source's data with the written
// pages laid over it, read from QEMU with process_vm_readv. All-zero pages
// stay holes, so the copy costs what the guest holds, not its size.
//
// The VM must be paused while this runs (its vCPUs and devices write its
// RAM), and hostd needs ptrace access to QEMU (root does).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "common/result.hpp"
#include "vmm/guest_memory.hpp"

namespace vesicle::vmm {

// What a copy found and took, for logs and benchmarks.
struct RamCopyStats {
  std::uint64_t private_pages = 0; // written by the guest since the restore
};

// The address at which process `pid` maps `file` (a memory file it was
// given), `bytes` long: found in /proc/<pid>/maps by the file's inode.
Result<std::uint64_t> find_mapping(pid_t pid, const GuestMemory& file, std::uint64_t bytes);

// How many pages of [address, address + bytes) process `pid` has written
// (made private copies of) since it mapped them: 0 for a QEMU waiting to
// be restored into a file that is still being filled (ForkLanding).
Result<std::uint64_t> count_private_pages(pid_t pid, std::uint64_t address, std::uint64_t bytes);

// The first half of a copy, which needs no pause: a new, unsealed memory
// file named `name` with `source`'s data (its all-zero pages left holes).
Result<std::shared_ptr<GuestMemory>> copy_memory_data(const GuestMemory& source,
                                                      const std::string& name);

// The second half, with the process paused: lays over `copy` (made by
// copy_memory_data from the file process `pid` maps privately at
// `address`) every page the process has written since, read from it; a
// page it zeroed becomes a hole. `source` may also be a file `pid` maps
// share=on: then no page is private and this changes nothing.
Result<void> overlay_private_pages(pid_t pid, std::uint64_t address, GuestMemory& copy,
                                   RamCopyStats* stats = nullptr);

} // namespace vesicle::vmm
