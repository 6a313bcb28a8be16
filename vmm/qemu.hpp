// The QEMU driver's pieces that are worth testing without a VM: where a VM's
// files go and the command line that starts it.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vmm/base64.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::vmm::qemu {

struct VmPaths {
  std::filesystem::path dir; // runtime_dir/id, mode 0700
  std::filesystem::path agent_socket;
  std::filesystem::path qmp_socket;
  std::filesystem::path overlay;
  std::filesystem::path log;
  std::filesystem::path memory_file; // shm_dir/vesicle-<id>.mem
  static VmPaths of(const VmConfig& config);
};

// An id names files and a process, so it is held to [a-z0-9-]{1,48}.
Result<void> check_id(const std::string& id);

// The kernel command line. Under TCG it pins the TSC frequency: the guest
// kernel otherwise calibrates its TSC against the emulated PIT, which fails
// when the host is busy and leaves the kernel without a clock, hung early in
// boot. TCG's guest TSC is the host's, so the host's frequency is right.
std::string kernel_cmdline(Accel accel, std::optional<unsigned long> tsc_khz);

// Whether a VM booted now gives each vCPU a socket of its own (`-smp
// N,sockets=N`): under TCG. With the host's cores shared among busy VMs, a
// guest whose vCPUs are cores of one socket spent three times the CPU per
// exec, in spin loops waiting for its other vCPU while that vCPU's host
// thread was not running (BENCHMARKS.md, "Why execs/s falls"). Cores that
// share no cache make the guest's scheduler queue a wakeup to the other vCPU
// rather than take that vCPU's run-queue lock itself, and wake tasks where
// they last ran; measured, it spends about half that CPU. Under KVM the
// topology stays one socket of N cores (not measured there).
bool vcpu_sockets_for(Accel accel);

// Whether two kernel command lines boot the same guest: equal once the TSC
// pinning (tsc_early_khz=, tsc=), which follows the host, is left out.
bool same_boot_parameters(std::string_view a, std::string_view b);

// With `restore_from`, the command line of a VM restored from that snapshot:
// its RAM file mapped share=off, its kernel command line (the machine must
// match the saved one), and -incoming defer -S, so QEMU waits for the device
// state and stays paused until `cont`. config's images, vcpus and memory
// must already be the snapshot's.
std::vector<std::string> command_line(const VmConfig& config, const VmPaths& paths, Accel accel,
                                      std::optional<unsigned long> tsc_khz,
                                      const Snapshot* restore_from = nullptr);

// The descriptor number the VM's memory file has in QEMU: passed after the
// tap's (fd 3) when the VM has a network device, else fd 3.
int memory_fd(const VmConfig& config);

// The host's TSC frequency, measured against CLOCK_MONOTONIC_RAW once per
// process (~30 ms); nullopt on hosts without an invariant TSC or not x86.
std::optional<unsigned long> host_tsc_khz();

// The last lines of a console capture, with control characters other than
// newline and tab dropped, at most `max_bytes`.
std::string console_tail(std::string_view console, std::size_t max_bytes = 4096);

// Where each vCPU of a guest is, from the monitor's `info registers -a`:
// "CPU#0 RIP=ffffffff81000000 CPL=0 HLT=1; CPU#1 ...". A stalled boot's log
// line carries it (the kernel's address says what the guest waits in).
std::string vcpu_summary(std::string_view info_registers);

// How many cold boots this process has booted again because their guest's
// agent had not answered within boot_stall_timeout (/metrics'
// vesicle_boot_retries_total).
std::uint64_t boot_retries();

} // namespace vesicle::vmm::qemu
