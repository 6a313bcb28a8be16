// Whether this host has the memory and disk for more sandboxes. hostd admits
// a create, fork or resume only when the host can hold what the new VMs may
// grow into on top of what the running ones may still grow into; otherwise
// the kernel's OOM killer (or a full disk) would pick a victim later, maybe
// hostd itself, maybe another tenant's sandbox.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "common/result.hpp"

namespace vesicle {

struct HostRoomSettings {
  // Memory kept for the host and hostd: never handed to sandboxes.
  std::uint64_t memory_reserve_mib = 1024;
  // How many times the memory left may be promised to sandboxes. 1.0: every
  // sandbox can fill its whole RAM at once and the host still holds. Above
  // 1: betting that idle guests don't (free page reporting hands idle
  // memory back), for density.
  double memory_overcommit = 1.0;
  // What a VM costs the host beyond its guest RAM (QEMU, TCG's translation
  // buffer), counted per new VM.
  std::uint64_t vm_overhead_mib = 96;
  // Disk kept free where overlays live; empty disk_dir: no disk check.
  std::uint64_t disk_reserve_mib = 1024;
  // How many times the disk left may be promised. 1.0: every sandbox can
  // fill its whole disk at once and the host's disk still holds. Above 1:
  // betting that guests don't, for density; one that does fills the host's
  // disk.
  double disk_overcommit = 1.0;
  std::filesystem::path disk_dir;
  std::filesystem::path meminfo = "/proc/meminfo";
  // How much of the host's memory a running sandbox's VM holds now (MiB, its
  // cgroup's figure), nullopt when not known; unset: never known, and every
  // running sandbox counts with its whole size.
  std::function<std::optional<std::uint64_t>(const std::string& sandbox_id)> memory_in_use_mib;
  // How much of the host's disk a running sandbox's writable disk holds now
  // (MiB, its overlay's allocated blocks), asked by its QEMU's pid; nullopt
  // when not known; unset: never known, and every running sandbox counts
  // with its whole disk.
  std::function<std::optional<std::uint64_t>(std::int32_t qemu_pid)> disk_in_use_mib;
};

// What the host has now.
struct HostFigures {
  std::uint64_t memory_available_mib = 0; // MemAvailable
  std::uint64_t disk_free_mib = 0;        // statvfs f_bavail of disk_dir
};

// What the running sandboxes may still grow into: their sizes less what
// they use already (which MemAvailable and the free disk already count);
// and what they use already, of what they were promised. An overcommit
// ratio scales the host's room for sandboxes, what is free plus what they
// hold: scaling only what is free would charge what they hold that many
// times over (at 10, an idle sandbox's 80 MiB cost 800 MiB of room).
struct HostCommitments {
  std::uint64_t memory_mib = 0;
  std::uint64_t disk_mib = 0;
  std::uint64_t memory_held_mib = 0;
  std::uint64_t disk_held_mib = 0;
};

struct RoomRequest {
  std::uint32_t count = 1;      // VMs to start
  std::uint64_t memory_mib = 0; // guest RAM of each
  std::uint64_t disk_mib = 0;   // writable disk of each
};

Result<HostFigures> read_host_figures(const HostRoomSettings& settings);

// What a running sandbox was promised, split: what it may still take, and
// what it holds already (at most what it was promised; 0 when not known).
struct Promised {
  std::uint64_t still_mib = 0;
  std::uint64_t held_mib = 0;
};

// Of the host's memory, for running sandbox `id` with `memory_mib` of guest
// RAM: its RAM and VMM overhead, less what its cgroup says it holds already
// (all of it still to take when that is not known).
Promised memory_promised(const HostRoomSettings& settings, const std::string& id,
                         std::uint64_t memory_mib);

// What a VM with a writable disk of `disk_mib` may write to the host's
// disk: the disk and qcow2's tables for it. A full 64 KiB-cluster overlay
// holds an 8-byte L2 entry and a 2-byte refcount per cluster (1/6554 of
// the disk) and a few clusters of header and top-level tables; counted
// as 1/4096 of the disk plus 1 MiB, so that what is promised bounds what
// an overlay can hold (2 GiB: 1 MiB; 100 GiB: 26 MiB).
std::uint64_t disk_promised_mib(std::uint64_t disk_mib);

// Of the host's disk, for a running sandbox with QEMU `qemu_pid` (0: none
// yet) and a writable disk of `disk_mib`: disk_promised_mib, less what its
// overlay holds already (all of it still to write when that is not known).
Promised disk_promised(const HostRoomSettings& settings, std::int32_t qemu_pid,
                       std::uint64_t disk_mib);

// Empty when `request` fits; otherwise why not, in a sentence that names the
// figures ("creating a sandbox needs 608 MiB of memory; this host can
// promise 412 MiB more ...").
std::optional<std::string> refuse_room(const HostRoomSettings& settings, const HostFigures& host,
                                       const HostCommitments& committed, const RoomRequest& request,
                                       const std::string& what);

} // namespace vesicle
