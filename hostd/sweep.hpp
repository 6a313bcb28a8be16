// Reclaiming what a previous hostd left behind. A hostd killed with SIGKILL
// takes its QEMU processes along (PR_SET_PDEATHSIG) but not their files:
// per-VM runtime directories and guest memory files on tmpfs, which hold
// host RAM until removed. hostd runs this before it serves.
#pragma once

#include <filesystem>
#include <string>

#include "common/result.hpp"

namespace vesicle::hostd {

struct SweepReport {
  unsigned processes = 0;    // QEMU processes killed
  unsigned directories = 0;  // VM runtime directories removed
  unsigned memory_files = 0; // guest memory files removed
};

// Kills QEMU processes whose sockets live under runtime_dir (only this
// hostd's VMs: other hostds use other runtime dirs), then removes every VM
// directory in runtime_dir and the memory file in shm_dir of each. Template
// memory files (vesicle-template-*) are kept: they are checked before use.
Result<SweepReport> sweep_leftovers(const std::filesystem::path& runtime_dir,
                                    const std::filesystem::path& shm_dir);

} // namespace vesicle::hostd
