// Reclaiming what a previous hostd left behind. A hostd killed with SIGKILL
// takes its QEMU processes along (PR_SET_PDEATHSIG) but not their files:
// per-VM runtime directories and guest memory files on tmpfs, which hold
// host RAM until removed. hostd runs this before it serves. (Guest RAM lives
// in memfds now, which die with their holders; RAM files in shm_dir are
// left by earlier hostd versions.)
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
// directory in runtime_dir and the memory file in shm_dir of each, and the
// template and fork RAM files (vesicle-template-*, vesicle-fork-*) earlier
// versions kept in shm_dir.
Result<SweepReport> sweep_leftovers(const std::filesystem::path& runtime_dir,
                                    const std::filesystem::path& shm_dir);

} // namespace vesicle::hostd
