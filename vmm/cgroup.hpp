// Each QEMU in a cgroup leaf of its own, named after its sandbox, with a
// memory limit (guest RAM plus the VMM's own overhead, no swap), a pids
// limit and a CPU quota from its vCPUs. Both hierarchies:
//   v1 (these hosts): /sys/fs/cgroup/{memory,pids,cpu}/<parent>/<sandbox id>/
//   v2 (systemd with Delegate=yes): <hostd's cgroup>/<parent>/<sandbox id>/,
//       hostd itself moved into <hostd's cgroup>/hostd (no process may sit in
//       a cgroup that hands controllers to its children); without systemd,
//       /sys/fs/cgroup/<parent>/<sandbox id>/.
// The launcher puts the VMM into its leaf: the child writes "0" into each of
// Leaf::open_procs()'s fds before exec, so QEMU charges its first page there.
// An operator finds a sandbox's QEMU with `cat /proc/<pid>/cgroup`.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.hpp"
#include "common/unique_fd.hpp"

namespace vesicle::vmm::cgroup {

enum class Version { v1, v2 };
const char* to_string(Version version);

// Where the three controllers a leaf uses are mounted. On v1 each has its own
// mount (cpu is often co-mounted with cpuacct); on v2 all three are the
// unified mount.
struct Hierarchy {
  Version version = Version::v1;
  std::filesystem::path memory;
  std::filesystem::path pids;
  std::filesystem::path cpu;
};

// The hierarchy from /proc/self/mountinfo's text. v1 when the memory
// controller has a v1 mount (then pids and cpu must too: a host that splits
// them between v1 and v2 is refused); otherwise the cgroup2 mount
// (/sys/fs/cgroup preferred when there are several).
Result<Hierarchy> parse_mountinfo(std::string_view mountinfo);

// The v2 path ("0::<path>") in /proc/self/cgroup's text; "/" when there is
// none.
std::string parse_own_cgroup_v2(std::string_view proc_self_cgroup);

// QEMU's memory beyond its guest RAM, not counting the TCG translation buffer
// (added per VM from its tb-size: it fills up over a VM's life; measured 63
// MiB of 64 resident). Measured with scripts/measure-qemu-overhead.sh (QEMU
// 7.2, TCG microVM, numpy/pandas/matplotlib and a tar of /usr in the guest):
// at peak QEMU's own anonymous memory was 43 MiB (1 vCPU, 512 MiB), 46 (2,
// 512), 48 (4, 1 GiB); the kernel memory charged 4 to 6 MiB; its mapped
// binary and libraries 22 MiB: 76 MiB at most. A 512 MiB 2-vCPU guest was
// OOM-killed under a limit of guest + TB + 25 MiB and lived under + 57 MiB.
// 96 MiB leaves ~25% above the worst seen.
inline constexpr std::uint64_t kQemuOverheadBytes = std::uint64_t{96} << 20;
// QEMU's threads: main, RCU, one per vCPU, the I/O thread pool (up to 64
// workers), plus room; the runs above peaked at 17. Each thread counts
// against pids.max.
inline constexpr std::uint32_t kQemuPidsMax = 128;
inline constexpr std::uint32_t kCpuPeriodUs = 100'000;

struct Limits {
  std::uint64_t guest_ram_bytes = 0;
  std::uint64_t vmm_overhead_bytes = 0; // QEMU itself
  // A VM restored share=off from a snapshot's sealed memfd: the first fault
  // on a hole of the snapshot allocates a zero page in the memfd, charged
  // to the VM that faulted (and shared with its siblings from then on), on
  // top of the VM's private copy. Up to its guest RAM again; 0 for a VM
  // whose RAM is its own.
  std::uint64_t shared_fault_bytes = 0;
  std::uint32_t pids_max = kQemuPidsMax;
  std::uint32_t vcpus = 1; // CPU quota: this many full CPUs

  // The memory limit: guest RAM, the VMM's overhead, shared faults.
  std::uint64_t memory_bytes() const {
    return guest_ram_bytes + vmm_overhead_bytes + shared_fault_bytes;
  }

  // A QEMU VM's limits: `memory_mib` of guest RAM, `vcpus`, and under TCG a
  // translation buffer of `tcg_tb_mib` (-accel tcg,tb-size=; 0 under KVM).
  static Limits for_qemu(unsigned memory_mib, unsigned vcpus, unsigned tcg_tb_mib);
};

// The death reason a sandbox shows after its VM was OOM-killed in its leaf:
// "oom: the sandbox's VM used its whole memory limit (576 MiB: 512 MiB guest
// RAM + 64 MiB VMM overhead) and was killed by the kernel".
std::string oom_message(const Limits& limits);

// How the tree's directories are made and removed. cgroupfs fills a new
// directory with its control files itself; a test's plain directory tree
// fakes that here. A failure carries errno (EEXIST, EBUSY, ...).
struct DirOps {
  std::function<Result<void>(const std::filesystem::path&)> make;
  std::function<Result<void>(const std::filesystem::path&)> remove;
};
DirOps cgroupfs_dir_ops(); // mkdir 0755, rmdir

class Leaf {
public:
  Leaf(Leaf&& other) noexcept;
  Leaf& operator=(Leaf&& other) noexcept;
  Leaf(const Leaf&) = delete;
  Leaf& operator=(const Leaf&) = delete;
  ~Leaf(); // remove() unless removed; a failure is logged

  const std::string& name() const { return name_; }
  const Limits& limits() const { return limits_; }
  Version version() const { return version_; }
  // Its directories: v1 memory, pids, cpu; v2 the one.
  const std::vector<std::filesystem::path>& dirs() const { return dirs_; }

  // Each directory's cgroup.procs, O_WRONLY|O_CLOEXEC, for the launcher:
  // its child writes "0" into each before exec.
  Result<std::vector<UniqueFd>> open_procs() const;

  // How many times the kernel's OOM killer killed a process of this leaf.
  // v1: memory.oom_control's oom_kill (kernel >= 4.13), else memory.failcnt
  // (times the limit was hit); v2: memory.events' oom_kill.
  Result<std::uint64_t> oom_kills() const;
  // The most memory the leaf ever used (v1 memory.max_usage_in_bytes, v2
  // memory.peak: kernel >= 5.19).
  Result<std::uint64_t> memory_peak() const;
  // oom_message(limits()) when oom_kills() > 0, nullopt when none: what the
  // sandbox shows as its death reason once its VM has died. Read it before
  // remove(): a removed leaf has no counters left.
  Result<std::optional<std::string>> oom_report() const;

  // The processes in the leaf (cgroup.procs of its memory directory).
  Result<std::vector<pid_t>> pids() const;
  // SIGKILL to every process in the leaf; the ones signalled.
  Result<std::vector<pid_t>> kill_all() const;

  // Renames the leaf (a pool VM handed out to a sandbox takes the sandbox's
  // id); its processes stay in it.
  Result<void> rename(const std::string& new_name);

  // rmdir of each directory. A reaped process may still count in its cgroup
  // for a few ms, so EBUSY is retried for up to ~130 ms; after that (or on
  // any other failure) an Error to log; what is left stays for remove() again,
  // the destructor, or the next start's sweep. Blocking, then: call it on
  // the blocking pool (vmm/blocking.hpp), never on an event loop.
  Result<void> remove();
  bool removed() const { return dirs_.empty(); }

private:
  friend class Tree;
  Leaf(Version version, std::string name, Limits limits, DirOps dir_ops)
      : version_(version), name_(std::move(name)), limits_(limits), dir_ops_(std::move(dir_ops)) {}

  Version version_;
  std::string name_;
  Limits limits_;
  DirOps dir_ops_;
  std::vector<std::filesystem::path> dirs_;
};

struct SweepReport {
  std::vector<std::string> removed; // leaf names
  std::vector<pid_t> killed;
  std::vector<Error> failed; // leaves that could not be removed
};

struct Options {
  std::string parent = "vesicle"; // our root's name
  // v2: hostd's cgroup, as /proc/self/cgroup names it; "/" when hostd runs
  // outside systemd (then our root is <mount>/<parent>).
  std::string own_cgroup = "/";
  pid_t self = 0; // v2 under systemd: the process moved into <own>/hostd; 0: getpid()
  DirOps dir_ops = cgroupfs_dir_ops();
};

class Tree {
public:
  // This host's: the hierarchy from /proc/self/mountinfo, hostd's own cgroup
  // from /proc/self/cgroup.
  static Result<Tree> open_host(std::string parent = "vesicle");
  // Makes our root. On v2 it first checks the controllers are available,
  // moves `self` into <own>/hostd when under systemd and enables +memory
  // +pids +cpu for the children of <own> (or of the mount) and of our root.
  static Result<Tree> open(const Hierarchy& hierarchy, Options options);

  Version version() const { return version_; }
  // Our root in each controller: v1 three directories, v2 one.
  const std::vector<std::filesystem::path>& roots() const { return roots_; }

  // A leaf `name` (a sandbox id: [A-Za-z0-9_-], at most 64) with `limits`
  // written. A leaf of that name already there is refused (a leftover: the
  // start-up sweep removes those).
  Result<Leaf> create(const std::string& name, const Limits& limits) const;

  // What leaf `name` holds of the host's memory now, less its page cache
  // (which the kernel reclaims and MemAvailable counts as free): usage
  // (v1 memory.usage_in_bytes, v2 memory.current) less memory.stat's
  // active_file and inactive_file. Guest RAM is shmem and stays in.
  Result<std::uint64_t> memory_in_use(const std::string& name) const;

  // After a crash: every leaf under our root is emptied (SIGKILL to each
  // process in it) and removed.
  SweepReport sweep() const;

  // rmdir of our (empty) root directories; for tests and uninstalls.
  Result<void> remove_roots() const;

private:
  Tree(Version version, std::vector<std::filesystem::path> roots, DirOps dir_ops)
      : version_(version), roots_(std::move(roots)), dir_ops_(std::move(dir_ops)) {}

  Version version_;
  std::vector<std::filesystem::path> roots_;
  DirOps dir_ops_;
};

} // namespace vesicle::vmm::cgroup
