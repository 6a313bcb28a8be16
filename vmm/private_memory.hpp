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
  std::uint64_t copied_bytes = 0;  // non-zero bytes written into the copy
};

// The address at which process `pid` maps `file` (a memory file it was
// given), `bytes` long: found in /proc/<pid>/maps by the file's inode.
Result<std::uint64_t> find_mapping(pid_t pid, const GuestMemory& file, std::uint64_t bytes);

// A new, unsealed memory file named `name` with what process `pid` sees in
// its private mapping of `source` at `address`: `source`'s data where the
// page is still the file's, the process's own copy where it wrote.
// `source` may also be a file `pid` maps share=on (then no page is
// private and this is a sparse copy of the file).
Result<std::shared_ptr<GuestMemory>> copy_private_memory(pid_t pid, std::uint64_t address,
                                                         const GuestMemory& source,
                                                         const std::string& name,
                                                         RamCopyStats* stats = nullptr);

} // namespace vesicle::vmm
