// The VMM driver interface: what hostd needs from a hypervisor. QEMU
// (qemu.hpp) implements it first; a Firecracker or Cloud Hypervisor driver
// would implement the same.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <utility> // before Boost 1.74's awaitable.hpp, which uses std::exchange without it

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "common/result.hpp"
#include "vmm/agent_client.hpp"
#include "vmm/cgroup.hpp"
#include "vmm/guest_memory.hpp"
#include "vmm/spare_copy.hpp"
#include "vmm/uid_pool.hpp"

namespace vesicle::vmm {

enum class Accel { kvm, tcg };
const char* to_string(Accel accel);
// KVM when /dev/kvm opens read-write and is backed by hardware
// virtualization (kvm_intel or kvm_amd), TCG otherwise. VESICLE_ACCEL=tcg
// or =kvm in the environment decides instead.
Accel detect_accel();

// The three files a guest boots from (see images/).
struct GuestImages {
  std::filesystem::path kernel;    // vmlinuz
  std::filesystem::path initrd;    // initrd.img
  std::filesystem::path base_disk; // rootfs.ext4, raw, never written
  // images_dir/{vmlinuz,initrd.img,rootfs.ext4}
  static GuestImages in(const std::filesystem::path& images_dir);
  Result<void> check() const; // every file exists and is readable
};

// The guest's network interface: a tap device the bridge manager opened in
// the sandbox's network slot (net/). QEMU inherits the fd; the caller
// keeps it open until boot() returns.
struct NetworkAttachment {
  int tap_fd = -1;
  std::string mac = "02:76:73:00:00:02"; // the same in every slot: each has its own namespace
};

// How QEMU processes are confined (vmm/jail.hpp): each runs as a uid of its
// own from `uids`, in a jail holding only its own files (vm_jail.hpp), under
// QEMU's seccomp filter and ours, and in a cgroup leaf of `cgroups` named
// after the VM (renamed to its sandbox's id when a sandbox adopts it) with
// memory, pids and CPU limits. Shared by every VM of a driver's user.
struct VmConfinement {
  std::shared_ptr<UidPool> uids;
  std::shared_ptr<const cgroup::Tree> cgroups; // null: no cgroup leaves
};

struct VmConfig {
  std::string id; // [a-z0-9-]+; names the VM's files and QEMU's -name
  GuestImages images;
  // Everything the VM owns on disk lives in runtime_dir/id (sockets, the
  // disk overlay, logs); its memory is a memfd (guest_memory.hpp).
  std::filesystem::path runtime_dir = "/var/lib/vesicle/vms";
  std::filesystem::path shm_dir = "/dev/shm";
  unsigned vcpus = 2;
  unsigned memory_mib = 1024;
  std::chrono::milliseconds boot_timeout{90'000};
  // A cold boot whose agent has not started this long after QEMU did is
  // ended and booted once more, with the rest of boot_timeout, when that
  // rest is at least this long too (QemuDriver's boot_steps); 0: never.
  // Healthy boots take 3-5 s under TCG on these machines (12 s under
  // load), a fraction of a second with KVM.
  std::chrono::milliseconds boot_stall_timeout{20'000};
  std::string qemu_binary = "qemu-system-x86_64";
  unsigned tcg_translation_cache_mib = 64; // -accel tcg,tb-size=
  // TCG only: every vCPU of the VM on one host thread, taking turns
  // (-accel tcg,thread=single), not a thread per vCPU: a vCPU spinning for
  // a lock whose holder's thread the host preempted hands the thread over
  // at its `pause`. Measured (BENCHMARKS.md, "one TCG thread per VM"):
  // exec p99 2-3.3x p50 with 4 and 6 busy sandboxes (7-14x with a thread
  // each), a lone sandbox's exec ~2x faster; but cold boots ~1 s slower,
  // fork(5)'s children ~110 ms later, and a single guest's parallel work
  // gets one host core.
  bool tcg_single_thread = true;
  // A booted VM's root disk in MiB: the qcow2 overlay's virtual size, the
  // most the guest can ever write (the agent grows the filesystem to it at
  // boot). 0: the base image's size. At least the base image's size (a
  // smaller disk would cut its filesystem). A restored VM's disk is the
  // snapshot's size; Vm::grow_disk enlarges it.
  unsigned disk_mib = 0;
  // Without one the guest has no network device at all.
  std::optional<NetworkAttachment> network;
  // Null: QEMU runs as its caller does (the vesicle-vm CLI, some tests).
  std::shared_ptr<const VmConfinement> confinement;
  // The host-side deadlines of calls to the VM's agent.
  AgentDeadlines agent_deadlines;
  // Told on the VM's executor when the VM is paused by the host (its disk
  // found the host's filesystem full) with why, and with nullopt once it
  // runs again or ends: so a sandbox's status can say so while its calls
  // fail with that reason. `name`: what Vm::label named the VM last (its
  // id until then). Null: nobody is told.
  std::function<void(const std::string& name, const std::optional<std::string>& why)> on_pause;
};

// A saved VM: device state + RAM file + disk, immutable once written (its
// files are made read-only; nothing may write them while VMs restored from
// it run, because a share=off mapping sees writes to pages it has not copied).
// Made by Vm::save_snapshot, read back with open_snapshot, started any
// number of times with Driver::restore.
struct Snapshot {
  std::filesystem::path dir; // manifest, device state, disk
  // Where the RAM image is kept on disk (a template's, read back after a
  // restart), or /proc/self/fd/<n> of `memory` when only memory holds it
  // (a fork's). Empty for a full-RAM snapshot.
  std::filesystem::path memory_file;
  // The RAM image VMs are restored from: a sealed memory file
  // (guest_memory.hpp), passed to each restored QEMU as a descriptor.
  // Null for a full-RAM snapshot and for one described but not opened.
  std::shared_ptr<GuestMemory> memory;
  // A copy of `memory` kept ready for the next fork of a VM restored from
  // this snapshot (spare_copy.hpp); set for templates only, null otherwise.
  std::shared_ptr<SpareCopy> spare;
  std::filesystem::path disk; // what restored VMs' qcow2 overlays are backed by
  GuestImages images;         // kernel+initrd it booted from (restore must match the machine)
  unsigned vcpus = 0;
  unsigned memory_mib = 0;
  // The kernel command line it booted with (kept in the manifest; a restore
  // passes no kernel at all). What else the restored machine must match, or
  // the device state does not load: whether it had a network device (the
  // virtio-mmio slots), the accelerator (TCG state does not load into KVM).
  std::string kernel_cmdline;
  bool network = false;
  Accel accel = Accel::tcg;
  // A full-RAM snapshot (Vm::save_full): every RAM page is in the device
  // state file, memory_file is empty, and the snapshot is resumed once, by
  // Driver::restore_full (which takes its disk). Driver::restore refuses it.
  bool full_ram = false;
  // Its machine had the legacy PIT (snapshots from before the machine went
  // without one): a VM restored from it gets one too, or the state does not
  // load.
  bool pit = false;
  // Each vCPU was a socket of its own (a TCG guest's since vcpu_sockets
  // came in): a VM restored from it gets the same topology, so the CPUID
  // it reads after the restore says what it read at boot.
  bool vcpu_sockets = false;
  std::filesystem::path device_state() const { return dir / "state"; }
  std::filesystem::path manifest() const { return dir / "manifest"; }
};

// Reads dir's manifest and checks version, sizes and checksums of every file
// it names. The Error says which file failed and how (and that the snapshot
// must be rebuilt). Never returns a snapshot that would restore wrongly.
// It reads every byte of the snapshot (the RAM file's data extents only):
// blocking, ~1 s for a few hundred MB; call it once per template, off the
// executor that runs VMs.
Result<Snapshot> open_snapshot(const std::filesystem::path& dir);

// What one Vm::save_fork_snapshot did and how long the VM was paused.
struct ForkSaveStats {
  // Copying a restored VM's snapshot RAM file, before the pause (0 for a
  // booted VM: its own file is copied paused, counted in `memory`).
  std::chrono::microseconds data_copy{0};
  bool spare_copy = false;                   // that copy was made ahead (SpareCopy): data_copy ~0
  std::chrono::microseconds paused{0};       // stop to cont
  std::chrono::microseconds device_state{0}; // of which: saving the device state
  std::chrono::microseconds disk{0};         // of which: copying the disk overlay
  std::chrono::microseconds memory{0};       // of which: copying the pages the guest wrote
  std::uint64_t private_pages = 0;           // 4 KiB pages the guest had written since its restore
  std::uint64_t memory_bytes = 0; // what the snapshot's RAM file holds (its non-zero pages)
  bool stayed_paused = false;     // the save left the VM paused (AfterForkSave)
};

// How a fork save of a running VM leaves it once the snapshot is taken. By
// default it runs on (`cont`) where it was, keeping the pages it wrote.
// With stay_paused_from set, a VM restored share=off that had written at
// least that many bytes over its snapshot's file (its private pages, which
// the save counts as it copies them) stays paused, as the snapshot has it:
// the caller ends it and restores it from the snapshot, which then holds
// its pages. ForkSaveStats::stayed_paused says which it was.
struct AfterForkSave {
  std::optional<std::uint64_t> stay_paused_from;
};

struct ForkLanding;

class Vm {
public:
  virtual ~Vm() = default;
  virtual const std::string& id() const = 0;
  virtual int qemu_pid() const = 0;
  // Names the VM after the sandbox it now serves (a pool VM handed out, a
  // fork child merged into its parent): its cgroup leaf takes the name, so
  // an operator finds a sandbox's QEMU by id. Best effort: a failure is
  // logged, the VM runs on.
  virtual void label(const std::string& /*sandbox_id*/) {}
  virtual AgentClient& agent() = 0;
  // True until the VM's process has exited.
  virtual bool running() const = 0;
  // Completes when the VM's process has exited, for any reason, and its
  // files and cgroup leaf are gone (several waiters may wait); the string
  // says how (exit status or signal, and the tail of the guest console when
  // it died unexpectedly).
  virtual asio::awaitable<std::string> wait_exit() = 0;
  // Asks the guest to power off, kills it after `grace`, removes its files.
  virtual asio::awaitable<void> shutdown(std::chrono::milliseconds grace) = 0;
  // Kills the VM now (SIGKILL) and returns without waiting for the kernel:
  // running() is false from here on; its process is reaped through a pidfd
  // and its files and cgroup leaf are removed on the blocking pool
  // (vmm/blocking.hpp), and wait_exit() completes once all that is done.
  // Safe to call more than once.
  virtual void destroy() = 0;

  // Makes the root disk `bytes` large (QMP block_resize on the overlay; the
  // guest's kernel hears of the new size at once, and the agent grows the
  // filesystem when asked: AgentClient::send_grow_root_fs). True when it
  // grew, false when it was that size already; an Error when it is larger:
  // a disk is never shrunk (that would cut the filesystem on it).
  virtual asio::awaitable<Result<bool>> grow_disk(std::uint64_t bytes) = 0;

  // Pauses the VM, saves its device state (x-ignore-shared) into `dir`, moves
  // its disk into `dir`, seals its RAM (a memfd: no copy) into the
  // snapshot's `memory`, also writes it to `memory_file` unless that is
  // empty (a copy on disk, for a snapshot that must outlive hostd: mode
  // 0400), and then writes the manifest (version, sizes, sha256s)
  // atomically and fsyncs; makes the files read-only, and ends the VM (its
  // process exits; the Vm is then not running). With `memory_file` empty
  // (a fork's snapshot: never read back from disk, gone with hostd) nothing
  // is hashed, synced or written as a manifest: it would only slow the fork.
  // On failure nothing half-written is left in dir and the Error says why.
  // `dir` and `memory_file` must not exist; dir's parent must.
  // Let agent calls finish first: one in flight is saved half-done, and
  // every restored VM finishes it and sends its events to a host that no
  // longer waits for them (the restored clients drop them: their request
  // ids start at a random point).
  // A failure before the device state is saved resumes the VM (it keeps
  // running); a later one ends it.
  // Only a booted VM (its RAM a share=on file) can be saved this way. A VM
  // made by Driver::restore maps its RAM share=off (a private copy-on-write
  // of the snapshot's file): there is no file holding its memory, so this
  // returns the Error "a VM restored share=off cannot be snapshotted fast"
  // and leaves it running. Forking a restored VM (issue 5) needs a full-RAM
  // save or a share=on copy; not built yet.
  virtual asio::awaitable<Result<Snapshot>> save_snapshot(std::filesystem::path dir,
                                                          std::filesystem::path memory_file) = 0;
  // True when the VM's RAM is a share=on file of its own (a booted VM), so
  // save_snapshot works; false for a VM restored share=off.
  virtual bool maps_memory_shared() const = 0;

  // Saves a snapshot of the VM into `dir` to fork from, and lets the VM run
  // on: paused only while its device state (no RAM), its disk and the pages
  // it wrote are copied (a restored VM's snapshot RAM file, which never
  // changes, is copied before the pause; a booted VM's own file during it).
  // Works for a VM restored share=off (a pool sandbox, a
  // fork's child), whose RAM no file holds: the copy is a new memory file
  // with the snapshot's data plus the pages the guest wrote since, read
  // from QEMU (private_memory.hpp); and for a booted VM (a sparse copy of
  // its own RAM file). The snapshot is restored with Driver::restore like
  // save_snapshot's; its `memory` is that new sealed file, kept in memory
  // only (memory_file is its /proc/self/fd path), and its disk a copy of
  // the VM's qcow2 overlay, backed by what the VM's overlay is backed by
  // (which must therefore outlive the snapshot).
  // Like save_snapshot without a memory_file, nothing is hashed or synced
  // and no manifest file is written (a fork snapshot is never reopened
  // from disk).
  // `dir` must not exist; its parent must. On failure nothing is left in
  // dir, the VM is resumed if it was running, and the Error says why.
  // Let agent calls finish first (see save_snapshot).
  // `after` may leave the VM paused when the save succeeds (one that fails
  // still resumes it).
  virtual asio::awaitable<Result<Snapshot>> save_fork_snapshot(std::filesystem::path dir,
                                                               ForkSaveStats* stats = nullptr,
                                                               AfterForkSave after = {});
  // save_fork_snapshot with `copy`, a copy of the data of the snapshot this
  // VM was restored from, made ahead (a fork landing's, given up for a
  // freeze): the written pages are laid over it, and no copy is made on
  // the way. A copy of another size is refused; without one, or for a
  // booted VM, this is save_fork_snapshot.
  virtual asio::awaitable<Result<Snapshot>>
  save_fork_snapshot_over(std::filesystem::path dir, std::shared_ptr<GuestMemory> copy,
                          ForkSaveStats* stats = nullptr);
  // Whether this VM's fork can go into `landing` (Driver::prepare_fork_landing):
  // it was restored from the snapshot the landing was made for, not
  // filled yet, whose waiting QEMUs run and have written none of its
  // memory, and it has a network device exactly when the landing's VMs do.
  virtual bool fits_landing(const ForkLanding& /*landing*/) const { return false; }
  // save_fork_snapshot into `landing`, which the VM must fit: the landing's
  // memory file gets the pages the guest wrote (its copy of the snapshot's
  // data was made ahead), the landing's disk placeholder the VM's overlay,
  // in place, and the device state goes beside it; the returned snapshot
  // is landing.snapshot, filled (its dir is then the fork's, removed by
  // whoever holds the snapshot), and the landing's waiting children can be
  // finished from it. The VM is paused no longer than for
  // save_fork_snapshot. On failure the Error says why, the VM runs on, and
  // the landing is spent: nothing may finish its children.
  virtual asio::awaitable<Result<Snapshot>> save_fork_snapshot_into(ForkLanding& landing,
                                                                    ForkSaveStats* stats = nullptr,
                                                                    AfterForkSave after = {});

  // Saves the whole VM, device state and every RAM page, into `dir` (meant
  // for a real disk: a Space survives a host reboot), and ends the VM. Works
  // for any running VM: booted (RAM share=on), restored share=off, or made by
  // restore_full. Pauses the VM, migrates (x-ignore-shared off) into
  // dir/state, moves the VM's qcow2 overlay to dir/disk.qcow2 (a rename, or a
  // copy across filesystems), writes the manifest (sizes, sha256s) last and
  // atomically, then ends QEMU (wait_exit() says it was saved).
  // `dir` must not exist; its parent must. The files stay writable (the
  // snapshot is resumed once; nothing maps them).
  // On any failure nothing is left in dir, the VM runs on exactly as before
  // (its disk back in place, resumed if it was running) and the Error says
  // what failed.
  // Cost: the migration reads every page of guest RAM. Pages of a tmpfs
  // memory file that were holes get allocated by that read (QEMU's zero-page
  // check faults them in); the driver punches those holes again afterwards
  // (a restored VM's template file stays as sparse as it was).
  // Blocking work (hashing the state) runs off the executor.
  virtual asio::awaitable<Result<Snapshot>> save_full(std::filesystem::path dir) = 0;
};

// How long the phases of one restore took (filled in by
// PreparedRestore::finish).
struct RestoreTimes {
  std::chrono::microseconds qemu_start{0}; // spawn to QMP ready (prepare)
  std::chrono::microseconds incoming{0};   // migrate-incoming until the device state is loaded
  std::chrono::microseconds resume{0};     // cont until the agent answered a ping
};

// A QEMU started for one snapshot and waiting (-incoming defer) for its
// device state: what prepare_restore returns, so a pool can pay QEMU's
// start-up before a restore is asked for. Destroying it without finish()
// kills that QEMU and removes its files.
class PreparedRestore {
public:
  virtual ~PreparedRestore() = default;
  // Loads the device state, resumes the VM and waits for the agent's ping.
  // Once only; the object is spent afterwards (whatever the result).
  virtual asio::awaitable<Result<std::unique_ptr<Vm>>> finish() = 0;
  virtual const RestoreTimes& times() const = 0;
  // The waiting QEMU's pid (0 when there is no process).
  virtual int qemu_pid() const { return 0; }
  // Kills the waiting QEMU unless finish() took it, and completes once it
  // has exited and its files are gone (so its network slot can go).
  virtual asio::awaitable<void> discard() { co_return; }
};

// A fork's first children, started before the fork: the pre-started VMMs
// of issue 15. A QEMU is given its RAM file and its disk when it starts,
// and a fork's are made only when the fork happens, so a landing makes
// them ahead as containers the fork fills in:
// - snapshot.memory is a copy of the source snapshot's RAM (a template's),
//   over which the fork lays the pages its parent wrote, as
//   save_fork_snapshot does with a copy of its own; every child maps it
//   share=off. A private mapping shows a file's current bytes in every
//   page the process has not written, and a QEMU waiting with -S has
//   written none (checked before the fork fills the file).
// - snapshot.disk is an empty overlay on the source's disk, the backing
//   file of each child's own overlay; the fork overwrites it in place with
//   its parent's overlay. A QEMU started with -incoming opens its disks
//   inactive and reads their metadata again when the incoming migration
//   activates them (made for storage that the migration's source wrote
//   meanwhile), so the children see the parent's disk.
// Destroying an unfilled landing kills its QEMUs and removes its files.
struct ForkLanding {
  ForkLanding() = default;
  ForkLanding(ForkLanding&&) = default;
  ForkLanding& operator=(ForkLanding&&) = delete;
  ~ForkLanding();

  // What the fork will be. Until it is filled: dir holds only the disk
  // placeholder, memory is unsealed; the rest is the source snapshot's.
  Snapshot snapshot;
  // The snapshot whose VMs can land here (Vm::fits_landing).
  std::shared_ptr<GuestMemory> source_memory;
  // The virtual size of the children's disks. A parent whose disk was
  // grown (every pool sandbox's is, to its quota, when it is handed out)
  // has them rewritten to its size before the fork fills the landing: the
  // children's own overlays are empty until then, and are read again too.
  std::uint64_t disk_bytes = 0;
  // QEMUs waiting to be the fork's children, in the order to use them, and
  // their overlays (backed by snapshot.disk).
  std::vector<std::unique_ptr<PreparedRestore>> children;
  std::vector<std::filesystem::path> child_overlays;
  // Set once a fork filled it: snapshot.dir is the fork's from then on.
  bool filled = false;
};

class Driver {
public:
  virtual ~Driver() = default;
  virtual Accel accel() const = 0;
  // Whether a VM booted now would start as `snapshot`'s did: the same
  // machine and kernel parameters, the host's TSC rate aside. A snapshot
  // restores either way; a cache of booted state (a pool's template) that
  // differs is rebuilt, so a change of parameters reaches its VMs.
  virtual bool boots_as(const Snapshot& /*snapshot*/) const { return true; }
  // Starts a VM and returns once its agent answers a ping. On any failure
  // nothing is left behind (process, socket, overlay, memory file) and the
  // Error says what went wrong, with the guest console's tail if it booted.
  virtual asio::awaitable<Result<std::unique_ptr<Vm>>> boot(VmConfig config) = 0;

  // Starts a VM from `snapshot`: QEMU with -incoming defer, the RAM file mapped
  // share=off (private copy-on-write: many VMs share the file's pages), a fresh
  // qcow2 overlay backed by snapshot.disk; migrate-incoming of the device state,
  // cont, and returns once the agent answers a ping. config supplies id,
  // runtime_dir, shm_dir, qemu_binary, network, boot_timeout (as the ready
  // timeout); its images/vcpus/memory_mib are ignored (the snapshot's are used).
  // config.network must be set exactly when the snapshot's VM had one.
  // On failure nothing is left behind (process, overlay, sockets).
  // It does not re-check the snapshot's checksums (open_snapshot does),
  // only that its files are there with their recorded sizes.
  virtual asio::awaitable<Result<std::unique_ptr<Vm>>> restore(const Snapshot& snapshot,
                                                               VmConfig config) = 0;
  // restore()'s first half: spawns QEMU and waits for its monitor. The
  // snapshot's files must stay in place until finish() returns.
  virtual asio::awaitable<Result<std::unique_ptr<PreparedRestore>>>
  prepare_restore(const Snapshot& snapshot, VmConfig config) = 0;

  // Resumes a full-RAM snapshot (Vm::save_full): QEMU with -incoming defer,
  // RAM on a fresh memory file of its own in config.shm_dir mapped share=on
  // (so the VM can be save_snapshot'ed fast, or save_full'ed again), the
  // snapshot's disk moved to be the VM's own overlay (the snapshot is spent:
  // its dir keeps manifest and state, which open_snapshot then refuses for the
  // missing disk; the caller removes the dir), migrate-incoming of the state,
  // cont, and returns once the agent answers a ping. config as for restore();
  // config.network must be set exactly when the snapshot's VM had one.
  // On failure nothing is left behind and the disk is put back: the snapshot
  // opens again. (If the failure came after the guest resumed, e.g. its agent
  // did not answer, the guest may have written to the disk meanwhile; the
  // disk's checksum then tells, and open_snapshot refuses the snapshot rather
  // than resume it half.) Does not re-check checksums (open_snapshot does).
  virtual asio::awaitable<Result<std::unique_ptr<Vm>>> restore_full(const Snapshot& snapshot,
                                                                    VmConfig config) = 0;

  // Makes a ForkLanding for forks of VMs restored from `source` (a
  // template's snapshot, loaded): `dir` (which must not exist; its parent
  // must) with the disk placeholder, `memory` (a copy of source.memory's
  // data, unsealed: SpareCopy makes them; the landing's VMs read it before
  // it is sealed, so it is made readable to them) as the fork's RAM, and
  // one waiting QEMU per config in `children` (each config as for
  // restore(): its own id, network exactly when the source had one).
  // On failure nothing is left behind.
  virtual asio::awaitable<Result<ForkLanding>>
  prepare_fork_landing(const Snapshot& source, std::shared_ptr<GuestMemory> memory,
                       std::filesystem::path dir, std::vector<VmConfig> children);
};

// The QEMU driver. Its VMs and their agent clients live on `executor`: call
// them, and destroy them, only from coroutines or handlers running there,
// and destroy every Vm before the io_context (a Vm's sockets belong to it).
// QEMU is spawned from the thread that runs boot() with PR_SET_PDEATHSIG,
// so a hostd killed with SIGKILL takes its VMs along; that thread must
// therefore live as long as the VMs it started (an io_context thread does).
//
// How a VM ends: QEMU runs with -no-reboot -no-shutdown, so a guest that
// powers off, resets or panics (panic=-1) stops and QEMU reports SHUTDOWN
// over QMP; the driver then reads the console ring buffer for wait_exit()'s
// account, lets QEMU exit, and removes the VM's files. Agent calls pending at
// that moment fail with the channel-closed Error (is_channel_closed()).
std::unique_ptr<Driver> make_qemu_driver(asio::any_io_executor executor);

} // namespace vesicle::vmm
