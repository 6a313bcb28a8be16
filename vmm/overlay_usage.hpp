// How much of the host's disk a running VM's writable disk holds, found
// through its QEMU's pid. Admission counts a running sandbox's disk by
// what it may still write, and the registry knows each sandbox's QEMU pid
// but not the VM id its overlay's directory is named after (a pool VM's id
// is not its sandbox's). /proc/<pid>/fd holds the overlay QEMU writes to,
// whatever the VM is called; reading it needs no shared state, so any
// thread may ask.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string_view>

#include "common/result.hpp"

namespace vesicle::vmm {

// The file name of every VM's writable disk in its directory (VmPaths).
inline constexpr const char* kOverlayFileName = "overlay.qcow2";

// The bytes the overlay of QEMU `pid` holds on the host's disk: the
// allocated blocks (st_blocks x 512; holes left by the guest's discards
// and never-written clusters cost nothing) of the file named
// kOverlayFileName that it holds open for writing (its backing images are
// open read-only: only the top of the chain is its own). A restored VM's
// QEMU holds its overlay read-only too until the incoming migration is
// done (QEMU 7.2, seen in its fdinfo), so a VM still restoring is an error
// here and counts whole, as admission does with what it cannot see. The
// link's directory is not compared with runtime_dir: QEMU's jail binds its
// files at their host paths, but a symlink in runtime_dir would make the
// two spellings differ. An error when the process is gone (it may exit
// while this reads), its /proc is not ours to read, or it holds no such
// file.
// `fd_hint`, when given: the descriptor number to look at first (-1: none
// known), set to the one found. A QEMU keeps its overlay's descriptor, so
// with the hint a lookup is three system calls instead of a read of every
// descriptor's link (~20 per QEMU): admission asks for every running
// sandbox at each create.
Result<std::uint64_t> overlay_bytes_in_use(pid_t pid, int* fd_hint = nullptr);

// The open flags /proc/<pid>/fdinfo/<fd> shows ("flags:\t0100002", octal);
// nullopt when its text has no such line.
std::optional<unsigned> fdinfo_flags(std::string_view fdinfo);

} // namespace vesicle::vmm
