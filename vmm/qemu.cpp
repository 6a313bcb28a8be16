// The QEMU microVM driver. A VM is QEMU plus three connections to it: the
// process (a pidfd), the monitor (QMP) and the guest agent (virtio-serial).
// QEMU runs with -no-shutdown, so when the guest powers off, resets or
// panics, QEMU stops instead of exiting, reports SHUTDOWN over QMP, and the
// driver reads the guest console's ring buffer before it lets QEMU go: that
// is how a dead VM's last words reach the caller.
#include "vmm/qemu.hpp"

#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include <fcntl.h>
#include <stdio.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/disk_space.hpp"
#include "common/log.hpp"
#include "vmm/async.hpp"
#include "vmm/blocking.hpp"
#include "vmm/device_state.hpp"
#include "vmm/overlay_usage.hpp"
#include "vmm/private_memory.hpp"
#include "vmm/process.hpp"
#include "vmm/qcow2_overlay.hpp"
#include "vmm/qmp.hpp"
#include "vmm/root_disk.hpp"
#include "vmm/snapshot.hpp"
#include "vmm/sparse_file.hpp"
#include "vmm/vm_jail.hpp"

namespace vesicle::vmm {

namespace qemu {

namespace {

namespace fs = std::filesystem;
using detail::Clock;
using std::chrono::milliseconds;

constexpr std::size_t kConsoleBytes = 64u << 10;
constexpr milliseconds kPingInterval{250};
// How long QEMU may take to put up its monitor socket.
constexpr milliseconds kQmpTimeout{15'000};
constexpr std::string_view kSandbox =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";
// When the host runs out of memory (admission overcommitted, or memory taken
// outside vesicle), the kernel's OOM killer should end one sandbox's QEMU,
// whose sandbox then fails on its own, rather than hostd, whose death takes
// every sandbox with it, or another service of the host. hostd lowers its
// own score (hostd/main.cpp); +500 puts a QEMU ahead of processes at the
// default 0 of the same size.
constexpr int kQemuOomScoreAdj = 500;
// A VM paused on a full host disk is resumed once this much is free where
// its overlay lives, checked this often: enough that its retried write and
// the next few do not fill it again at once.
constexpr std::uint64_t kDiskRoomToResume = 64u << 20;
constexpr milliseconds kDiskRoomPoll{1000};

} // namespace

VmPaths VmPaths::of(const VmConfig& config) {
  VmPaths paths;
  paths.dir = config.runtime_dir / config.id;
  paths.agent_socket = paths.dir / "agent.sock";
  paths.qmp_socket = paths.dir / "qmp.sock";
  paths.overlay = paths.dir / kOverlayFileName;
  paths.log = paths.dir / "qemu.log";
  // memory_file is set when the VM gets a memory file of its own
  // (QemuVm's own_memory): /proc/self/fd/<n> of that memfd.
  return paths;
}

Result<void> check_id(const std::string& id) {
  const bool valid =
      !id.empty() && id.size() <= 48 && std::all_of(id.begin(), id.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
      });
  if (valid) return {};
  return make_error("check VM id", "an id is 1 to 48 characters of [a-z0-9-]", id);
}

bool same_boot_parameters(std::string_view a, std::string_view b) {
  auto parameters = [](std::string_view line) {
    std::vector<std::string_view> kept;
    while (!line.empty()) {
      const auto space = line.find(' ');
      const auto word = line.substr(0, space);
      line = space == std::string_view::npos ? std::string_view{} : line.substr(space + 1);
      if (word.empty() || word.starts_with("tsc_early_khz=") || word.starts_with("tsc=")) continue;
      kept.push_back(word);
    }
    return kept;
  };
  return parameters(a) == parameters(b);
}

bool vcpu_sockets_for(Accel accel) {
  return accel == Accel::tcg;
}

std::string kernel_cmdline(Accel accel, std::optional<unsigned long> tsc_khz) {
  // reboot=t: microvm has no keyboard controller, PCI reset port or ACPI reset
  // register, so the kernel's default reboot sequence ends in a real-mode
  // jump back into the firmware, which can spin forever (seen under host load)
  // instead of resetting. A triple fault always reaches QEMU as a guest reset.
  // init_on_free=1: the guest zeroes every page it frees. A fork copies the
  // pages a restored VM wrote, and a freeze its whole RAM, leaving all-zero
  // pages out: without it, memory a program used and gave back (a
  // temporary, an exited process) is copied and kept as if in use. At boot
  // the kernel frees, and so zeroes, all of its RAM; boot_steps punches
  // those pages out of the memory file again (give_back_boot_zeros).
  // sysctl.vm.compaction_proactiveness=0: kcompactd otherwise wakes twice a
  // second in every idle guest to see whether memory is fragmented, a cost
  // each idle VM's QEMU pays on the host (a guest still compacts when an
  // allocation needs it).
  // cryptomgr.notests=1: the kernel skips the self-tests it runs on each
  // crypto algorithm it registers at boot; under TCG they cost ~0.2 s of
  // every cold boot (some of which the first use of an algorithm pays
  // later). A guest that does not trust its own kernel's crypto can run
  // its own tests; the sandbox's boundary is the VM, not this.
  // loglevel=5 rather than quiet: warnings and the register and stack dumps
  // that follow them (a soft lockup's) reach the console too, whose tail is
  // a failed boot's error; a normal boot prints two lines (no PCI), and
  // boots no slower.
  std::string cmdline = "console=ttyS0 root=/dev/vda rw loglevel=5 panic=-1 reboot=t "
                        "init_on_free=1 sysctl.vm.compaction_proactiveness=0 cryptomgr.notests=1";
  if (accel == Accel::tcg && tsc_khz) {
    // tsc=reliable: TCG's vCPUs all read the host's TSC, which the kernel's
    // warp check, slowed down by emulation, mistakes for unsynchronized TSCs
    // and falls back to a 4 ms jiffies clock.
    cmdline += " tsc_early_khz=" + std::to_string(*tsc_khz) + " tsc=reliable";
  }
  return cmdline;
}

std::vector<std::string> command_line(const VmConfig& config, const VmPaths& paths, Accel accel,
                                      std::optional<unsigned long> tsc_khz,
                                      const Snapshot* restore_from) {
  const std::string memory = std::to_string(config.memory_mib);
  // A booted VM's RAM is a shared file of its own: saving it is a rename.
  // A restored one maps the snapshot's file privately: pages it only reads
  // stay shared with every other VM restored from the same snapshot.
  // A full-RAM snapshot's pages all come from the migration stream, so its
  // VM gets a fresh file of its own, shared like a booted VM's.
  // Either way the file is a memfd hostd passes in (guest_memory.hpp), the
  // descriptor after the tap's: QEMU re-opens it as /proc/self/fd/<n>.
  const bool shared_from_snapshot = restore_from && !restore_from->full_ram;
  const std::string memory_backend =
      "memory-backend-file,id=mem,size=" + memory + "M,mem-path=/proc/self/fd/" +
      std::to_string(memory_fd(config)) + (shared_from_snapshot ? ",share=off" : ",share=on");
  // pit=off: the firmware leaves the legacy PIT counting at 18.2 Hz, and the
  // guest's kernel, which keeps time with the TSC and the local APIC, never
  // stops it; QEMU then woke ~36 times a second for it in every idle VM (most
  // of an idle VM's own CPU under TCG; BENCHMARKS.md). A VM restored from a
  // snapshot of a machine that had it gets it back, or its state does not load.
  const bool pit = restore_from && restore_from->pit;
  const bool sockets = restore_from ? restore_from->vcpu_sockets : vcpu_sockets_for(accel);
  std::vector<std::string> args = {
      config.qemu_binary,
      "-M",
      std::string("microvm,x-option-roms=off,rtc=on,") + (pit ? "" : "pit=off,") +
          "memory-backend=mem",
      "-nodefaults",
      "-no-user-config",
      "-nographic",
      // A guest reset (panic=-1 turns a panic into one) and a power-off both
      // stop the VM and raise QMP SHUTDOWN; the driver then reads the console
      // and quits QEMU.
      "-no-reboot",
      "-no-shutdown",
      // QEMU's own seccomp filter: no fork or exec, no setuid, no scheduler
      // or affinity changes, no obsolete syscalls. Migrations therefore go
      // through files hostd opens and passes in (getfd), never exec:.
      "-sandbox",
      std::string(kSandbox),
  };
  if (accel == Accel::kvm) {
    args.insert(args.end(), {"-accel", "kvm", "-cpu", "host"});
  } else {
    // Without -cpu max the default qemu64 model lacks what the guest kernel
    // needs to calibrate its clock, and it hangs early in boot. -erms: with
    // "enhanced rep movsb" the guest's kernel and glibc copy and clear
    // memory a byte per `rep` step, which TCG emulates one step at a time;
    // without it they use wider stores (a 64 MB copy in Python 5x faster,
    // zeroing RAM at boot ~1 s less per GiB; BENCHMARKS.md).
    args.insert(args.end(), {"-accel",
                             "tcg,tb-size=" + std::to_string(config.tcg_translation_cache_mib) +
                                 (config.tcg_single_thread ? ",thread=single" : ",thread=multi"),
                             "-cpu", "max,-erms"});
  }
  args.insert(args.end(),
              {
                  "-smp",
                  std::to_string(config.vcpus) +
                      (sockets ? ",sockets=" + std::to_string(config.vcpus) : ""),
                  "-m",
                  memory,
                  "-object",
                  memory_backend,
                  "-drive",
                  // cache.direct: the VM's disk writes bypass the host's page
                  // cache, which a cgroup v1 memory limit charges to QEMU and
                  // cannot write back fast enough: a guest filling its disk
                  // was OOM-killed at its limit with buffered writes.
                  // werror=enospc (QEMU's default, said here because hostd
                  // relies on it): a write that finds the host's filesystem
                  // full pauses the VM instead of failing in the guest, and
                  // hostd resumes it when there is room
                  // (resume_when_disk_has_room).
                  "id=root,file=" + paths.overlay.string() +
                      ",format=qcow2,if=none,discard=unmap,cache.direct=on,werror=enospc,"
                      "rerror=report",
                  "-device",
                  "virtio-blk-device,drive=root",
                  "-device",
                  "virtio-serial-device",
                  "-chardev",
                  "socket,id=agent,path=" + paths.agent_socket.string() + ",server=on,wait=off",
                  "-device",
                  "virtserialport,chardev=agent,name=agent",
                  // A ring buffer: a guest flooding its serial port costs a fixed 64 KiB.
                  "-chardev",
                  "ringbuf,id=console,size=" + std::to_string(kConsoleBytes),
                  "-serial",
                  "chardev:console",
                  "-qmp",
                  "unix:" + paths.qmp_socket.string() + ",server=on,wait=off",
                  "-name",
                  "vesicle-" + config.id + ",process=vesicle-" + config.id,
              });
  // Only a boot loads a kernel. QEMU keeps a copy of -kernel's file for
  // fw_cfg for the life of the VM (13.5 MiB of every restored VM's memory,
  // BENCHMARKS.md), and a restored VM never reads it: its RAM and devices
  // come from the snapshot, and a reboot ends it (-no-reboot).
  if (!restore_from) {
    args.insert(args.end(), {"-kernel", fs::absolute(config.images.kernel).string(), "-initrd",
                             fs::absolute(config.images.initrd).string(), "-append",
                             kernel_cmdline(accel, tsc_khz)});
  }
  if (config.network) {
    // The tap fd becomes fd 3 in QEMU (SpawnOptions::pass_fds).
    args.insert(args.end(), {"-netdev", "tap,id=net0,fd=3", "-device",
                             "virtio-net-device,netdev=net0,mac=" + config.network->mac});
  }
  if (restore_from) args.insert(args.end(), {"-incoming", "defer", "-S"});
  return args;
}

int memory_fd(const VmConfig& config) {
  return config.network ? 4 : 3;
}

std::optional<unsigned long> host_tsc_khz() {
#if defined(__x86_64__)
  static const std::optional<unsigned long> measured = []() -> std::optional<unsigned long> {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    bool constant = false, nonstop = false;
    while (std::getline(cpuinfo, line)) {
      if (line.rfind("flags", 0) == 0) {
        constant = line.find(" constant_tsc") != std::string::npos;
        nonstop = line.find(" nonstop_tsc") != std::string::npos;
        break;
      }
    }
    if (!constant || !nonstop) return std::nullopt;
    auto now_ns = [] {
      timespec ts{};
      ::clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
      return static_cast<long double>(ts.tv_sec) * 1e9L + ts.tv_nsec;
    };
    // Three 10 ms samples; the median shrugs off one preempted sample.
    std::vector<long double> khz;
    for (int i = 0; i < 3; ++i) {
      const auto t0 = now_ns();
      const auto c0 = __rdtsc();
      timespec pause{0, 10'000'000};
      ::nanosleep(&pause, nullptr);
      const auto c1 = __rdtsc();
      const auto t1 = now_ns();
      khz.push_back(static_cast<long double>(c1 - c0) / (t1 - t0) * 1e6L);
    }
    std::sort(khz.begin(), khz.end());
    if (khz[1] < 100'000) return std::nullopt; // below 100 MHz: not a usable TSC
    return static_cast<unsigned long>(khz[1] + 0.5L);
  }();
  return measured;
#else
  return std::nullopt;
#endif
}

std::string console_tail(std::string_view console, std::size_t max_bytes) {
  std::string text;
  text.reserve(console.size());
  for (const char c : console) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\r') continue;
    if (u < 0x20 && c != '\n' && c != '\t') continue;
    if (u == 0x7f) continue;
    text += c;
  }
  while (!text.empty() && text.back() == '\n')
    text.pop_back();
  if (text.size() > max_bytes) {
    std::size_t start = text.size() - max_bytes;
    const auto newline = text.find('\n', start);
    if (newline != std::string::npos) start = newline + 1;
    // Do not start in the middle of a UTF-8 sequence.
    while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xc0) == 0x80)
      ++start;
    text.erase(0, start);
  }
  return text;
}

namespace {
std::atomic<std::uint64_t> boot_retries_so_far{0};
} // namespace

std::uint64_t boot_retries() {
  return boot_retries_so_far.load(std::memory_order_relaxed);
}

std::string vcpu_summary(std::string_view info_registers) {
  // Each vCPU's dump opens with a line "CPU#<n>"; of its registers, the
  // instruction pointer (EIP= until the guest enters 64-bit mode),
  // privilege level and halt flag are kept.
  std::string summary;
  std::istringstream lines{std::string(info_registers)};
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("CPU#", 0) == 0) {
      if (!summary.empty()) summary += "; ";
      summary += line.substr(0, line.find_first_of(" \t\r"));
      continue;
    }
    if (summary.empty()) continue;
    std::istringstream words(line);
    std::string word;
    while (words >> word) {
      for (const char* kept : {"RIP=", "EIP=", "CPL=", "HLT="})
        if (word.rfind(kept, 0) == 0) summary += " " + word;
    }
  }
  return summary;
}

namespace {

using Socket = asio::local::stream_protocol::socket;

struct VmState;
asio::awaitable<void> resume_when_disk_has_room(std::shared_ptr<VmState> state);

// The MiB free on the filesystem holding `dir`, for messages.
std::string free_mib_text(const fs::path& dir) {
  auto bytes = available_bytes(dir);
  return bytes ? std::to_string(*bytes >> 20) : std::string("unknown");
}

// Why a VM whose overlay is in `dir` is paused on a full host disk.
std::string disk_full_reason(const fs::path& dir) {
  return "the host's disk is full (" + free_mib_text(dir) + " MiB free in " + dir.string() +
         "); hostd resumes it when there is room";
}

// Everything one VM owns. Shared with the coroutines that watch it, so none
// of them outlives what it touches; the Vm handle owns it and destroys it.
struct VmState : std::enable_shared_from_this<VmState> {
  VmState(asio::any_io_executor executor, VmConfig config)
      : executor(executor), config(std::move(config)), paths(VmPaths::of(this->config)),
        exited(executor) {}

  asio::any_io_executor executor;
  VmConfig config;
  VmPaths paths;
  // A confined VM's uid and cgroup leaf (VmConfig::confinement); given back
  // once QEMU has been reaped. Declared before `process` so that, should
  // the state go with QEMU still running, the process is killed (and
  // reaped) before its uid is free for another VM.
  std::optional<UidLease> uid_lease;
  std::optional<cgroup::Leaf> leaf;
  std::unique_ptr<detail::Process> process;
  std::shared_ptr<QmpClient> qmp;
  std::unique_ptr<AgentClient> agent;

  detail::Event exited;
  std::string exit_description;
  bool shutdown_requested = false;
  bool destroy_requested = false;
  bool finishing = false; // finish() ran; exited is set once its cleanup is done
  bool files_created = false;
  // Restored from a snapshot (RAM mapped share=off): cannot be saved fast.
  bool restored = false;
  // The RAM a booted (or fully restored) VM maps share=on, its own; null
  // once a save made it a snapshot's.
  std::shared_ptr<GuestMemory> own_memory;
  // The snapshot's sealed RAM a restored VM maps share=off, and its
  // /proc/self/fd path for hostd's own file calls (empty otherwise).
  std::shared_ptr<GuestMemory> source_memory;
  // A copy of source_memory made ahead for this VM's forks (a template's).
  std::shared_ptr<SpareCopy> source_spare;
  fs::path shared_source;
  // While restore_full is under way: where the overlay (a full snapshot's
  // disk, renamed) goes back to if the VM ends before the restore completes.
  fs::path return_disk_to;
  bool saving = false; // save_snapshot is under way
  bool saved = false;  // ended by save_snapshot: its files became a snapshot
  std::string kernel_cmdline;
  Accel accel = Accel::tcg;
  bool pit = false; // the machine has the legacy PIT (restored from a snapshot that had it)
  bool vcpu_sockets = false; // each vCPU is a socket of its own (vcpu_sockets_for)
  // Set when QMP reported the guest stopped on its own (reset, power-off).
  std::string guest_stop_reason;
  // Set while QEMU holds the guest paused because its disk found the
  // host's filesystem full (resume_when_disk_has_room runs): why, as calls
  // and the sandbox's status say it.
  std::optional<std::string> paused_why;
  // What Vm::label named the VM last (config.on_pause's `name`).
  std::string name = config.id;
  std::string console;

  // False from destroy() on, though the kernel may still be tearing QEMU
  // down: nothing may use the VM any more.
  bool running() const { return process && !process->exited() && !destroy_requested; }

  // Takes the VM's files away from it (sync, cheap steps) and returns the
  // directory left to remove, on the blocking pool (remove_all of a tree
  // with a multi-GiB overlay is no work for the event loop).
  std::optional<fs::path> take_files() {
    if (!files_created) return std::nullopt;
    if (!return_disk_to.empty()) {
      ::renameat2(AT_FDCWD, paths.overlay.c_str(), AT_FDCWD, return_disk_to.c_str(),
                  RENAME_NOREPLACE);
      return_disk_to.clear();
    }
    own_memory.reset(); // freed once QEMU's mapping is gone too
    paths.memory_file.clear();
    files_created = false;
    return paths.dir;
  }

  // Records how the VM ended (once), closes the monitor, and has its files
  // and cgroup leaf removed on the blocking pool (a leaf stays busy a while
  // after its last task exited: remove() retries for up to ~130 ms). Its
  // uid is free for another VM, and wait_exit() completes, once that is
  // done.
  void finish(const detail::ExitStatus& status) {
    if (finishing) return;
    finishing = true;
    std::string how;
    if (saved) {
      how = "saved to a snapshot and ended (QEMU " + status.describe() + ")";
    } else if (destroy_requested) {
      how = "destroyed by the host (QEMU " + status.describe() + ")";
    } else if (shutdown_requested &&
               (guest_stop_reason == "guest-shutdown" || guest_stop_reason.empty())) {
      how = "the guest powered off as asked";
    } else if (!guest_stop_reason.empty()) {
      how = guest_stop_reason == "guest-reset"
                ? "the guest kernel reset the machine (a kernel panic, or PID 1 exited)"
            : guest_stop_reason == "guest-shutdown" ? "the guest powered itself off"
            : guest_stop_reason == "guest-panic"    ? "the guest kernel panicked"
                                                 : "the guest stopped (" + guest_stop_reason + ")";
      if (!console.empty()) how += "; guest console (tail):\n" + console;
    } else {
      how = "QEMU " + status.describe() + " unexpectedly";
      const std::string log = detail::file_tail(paths.log, 2048);
      if (!log.empty()) how += "; QEMU log (tail):\n" + log;
    }
    // Killed by the kernel at its cgroup's memory limit: say so, with the
    // figure, rather than "killed by signal 9".
    if (leaf && !saved && !destroy_requested) {
      auto oom = leaf->oom_report();
      if (oom && *oom) how = **oom;
    }
    exit_description = std::move(how);
    if (qmp) qmp->close();
    release();
  }

  // Has the VM's files and cgroup leaf removed on the blocking pool; its uid
  // is free again, and wait_exit() completes, once that is done.
  void release() {
    auto cleanup = [leaf = std::exchange(leaf, std::nullopt), dir = take_files(),
                    id = config.id]() mutable {
      if (leaf) {
        if (auto removed = leaf->remove(); !removed)
          log::warn("a VM's cgroup leaf was not removed; the next start sweeps it",
                    {{"vm", id}, {"error", removed.error().message()}});
        leaf.reset();
      }
      if (dir) {
        std::error_code ignored;
        fs::remove_all(*dir, ignored);
      }
    };
    post_blocking(std::move(cleanup), executor, [self = shared_from_this()] {
      self->uid_lease.reset();
      self->exited.set();
    });
  }

  // Kills QEMU (SIGKILL) and returns at once: the watcher (a pidfd on the
  // event loop) reaps it and finish() cleans up; wait_exit() says when that
  // is done. Its cgroup leaf is renamed out of the way now, so the sandbox's
  // name can go to another VM's leaf at once (a merge's winner).
  void destroy() {
    if (!process) {
      // QEMU never started (its spawn failed, or a step before it did):
      // nothing will exit and finish(), so what was made for it goes now.
      if (!finishing && (files_created || leaf)) {
        finishing = true;
        exit_description = "QEMU was not started";
        release();
      }
      return;
    }
    if (process->exited()) {
      finish(*process->status());
      return;
    }
    if (destroy_requested) return;
    destroy_requested = true;
    if (leaf && leaf->name() != config.id + "-ended") {
      if (auto renamed = leaf->rename(config.id + "-ended"); !renamed)
        log::warn("a destroyed VM's cgroup leaf keeps its name until it is removed",
                  {{"vm", config.id}, {"error", renamed.error().message()}});
    }
    process->kill(SIGKILL);
    if (qmp) qmp->close();
  }

  asio::awaitable<void> watch_process() {
    auto self = shared_from_this();
    const detail::ExitStatus status = co_await process->wait();
    finish(status);
  }

  asio::awaitable<std::string> read_console() {
    if (!qmp || !qmp->connected()) co_return std::string{};
    json::Object arguments;
    arguments["device"] = json::Value(std::string("console"));
    arguments["size"] = json::Value(static_cast<std::int64_t>(kConsoleBytes));
    arguments["format"] = json::Value(std::string("base64"));
    auto read = co_await qmp->execute("ringbuf-read", std::move(arguments), milliseconds(3000));
    if (!read) co_return "(could not read the guest console: " + read.error().message() + ")";
    co_return console_tail(base64_decode(read->as_string()));
  }

  // The guest stopped and QEMU waits (-no-shutdown): keep its console if the
  // stop was not asked for, then let QEMU exit.
  asio::awaitable<void> on_guest_stopped(std::string reason) {
    auto self = shared_from_this();
    guest_stop_reason = reason;
    const bool expected = shutdown_requested && reason == "guest-shutdown";
    if (!expected) console = co_await read_console();
    if (qmp && qmp->connected()) {
      std::string quit = "quit";
      json::Object no_arguments;
      (void)co_await qmp->execute(std::move(quit), std::move(no_arguments), milliseconds(3000));
    }
    // A QEMU that does not quit when told is killed; the watcher reaps it.
    const bool gone = co_await exited.wait(Clock::now() + std::chrono::seconds(3));
    if (!gone && process && !process->exited()) process->kill(SIGKILL);
  }

  void watch_monitor() {
    std::weak_ptr<VmState> weak = shared_from_this();
    qmp->on_event([weak](const std::string& event, const json::Value& message) {
      auto self = weak.lock();
      if (!self) return;
      const auto& data = message["data"];
      if (event == "BLOCK_IO_ERROR") {
        // werror=enospc: QEMU stopped the guest and keeps the failed write
        // to retry on `cont`. Any other error was reported to the guest.
        if (!data["nospace"].as_bool() || data["action"].as_string() != "stop" || self->paused_why)
          return;
        self->paused_why = disk_full_reason(self->paths.overlay.parent_path());
        asio::co_spawn(self->executor, resume_when_disk_has_room(self), asio::detached);
        return;
      }
      if (event != "SHUTDOWN") return;
      // Host-initiated quits (our own "quit", a signal) end QEMU anyway.
      if (!data["guest"].as_bool()) return;
      asio::co_spawn(self->executor, self->on_guest_stopped(data["reason"].as_string()),
                     asio::detached);
    });
  }
};

// Runs `work` (blocking: hashing hundreds of MB) on a thread of its own and
// resumes on `executor` with its result, so the VMs sharing that executor
// keep being served meanwhile.
template <class F>
asio::awaitable<std::invoke_result_t<F>> run_blocking(asio::any_io_executor executor, F work) {
  using R = std::invoke_result_t<F>;
  auto done = std::make_shared<detail::Event>(executor);
  auto result = std::make_shared<std::optional<R>>();
  std::thread([work = std::move(work), result, done, executor]() mutable {
    result->emplace(work());
    asio::post(executor, [done] { done->set(); });
  }).detach();
  co_await done->wait();
  co_return std::move(**result);
}

asio::awaitable<void> sleep_for(asio::any_io_executor executor, milliseconds duration) {
  asio::steady_timer timer(executor, duration);
  boost::system::error_code ec;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

// `command` is a literal: no temporary std::string in the callers' co_await
// expressions (see QmpClient::execute).
asio::awaitable<Result<json::Value>> qmp_run(VmState& state, const char* command,
                                             json::Object arguments,
                                             milliseconds timeout = milliseconds(5000)) {
  if (!state.qmp || !state.qmp->connected()) {
    co_return make_error(std::string("QMP ") + command,
                         "the monitor connection is closed (QEMU is gone)", state.config.id);
  }
  std::string name = command;
  auto reply = co_await state.qmp->execute(std::move(name), std::move(arguments), timeout);
  co_return reply; // its Error already names the command
}

// A VM QEMU paused because a write to its disk overlay found the host's
// filesystem full (BLOCK_IO_ERROR, nospace): nothing is lost, the write
// waits in QEMU. Its agent is held meanwhile (AgentClient::hold: calls fail
// with a clear error instead of taking it for stuck), and once the
// filesystem has kDiskRoomToResume free again, `cont` retries the write. A
// write that fails again pauses the VM again (query-status says
// io-error), and the wait goes on.
asio::awaitable<void> resume_when_disk_has_room(std::shared_ptr<VmState> state) {
  const fs::path dir = state->paths.overlay.parent_path();
  const auto started = Clock::now();
  log::warn("a VM's disk found the host's filesystem full: the VM is paused until there is room",
            {{"vm", state->config.id}, {"dir", dir.string()}, {"free_mib", free_mib_text(dir)}});
  if (state->agent) state->agent->hold(state->paused_why);
  if (state->config.on_pause) state->config.on_pause(state->name, state->paused_why);
  std::uint64_t resumes = 0;
  while (state->running()) {
    co_await sleep_for(state->executor, kDiskRoomPoll);
    if (!state->running()) break;
    // A save under way stops and resumes the VM itself; a paused VM is
    // left paused by it, and found here again afterwards.
    if (state->saving) continue;
    auto room = available_bytes(dir);
    if (!room || *room < kDiskRoomToResume) continue;
    json::Object no_arguments;
    auto resumed = co_await qmp_run(*state, "cont", std::move(no_arguments));
    if (!resumed) continue; // QEMU going away ends the loop through running()
    ++resumes;
    json::Object none;
    auto status = co_await qmp_run(*state, "query-status", std::move(none));
    if (status && (*status)["status"].as_string() == "io-error") continue;
    break;
  }
  state->paused_why.reset();
  if (state->agent) state->agent->hold(std::nullopt);
  if (state->config.on_pause) state->config.on_pause(state->name, std::nullopt);
  if (!state->running()) co_return;
  log::info(
      "a VM paused on a full host disk runs again",
      {{"vm", state->config.id},
       {"paused_ms",
        std::to_string(std::chrono::duration_cast<milliseconds>(Clock::now() - started).count())},
       {"resumes", std::to_string(resumes)},
       {"free_mib", free_mib_text(dir)}});
}

// Both ends of a migration must agree on it: it changes the stream's format.
asio::awaitable<Result<void>> set_ignore_shared(VmState& state, bool on = true) {
  json::Object capability;
  capability["capability"] = json::Value("x-ignore-shared");
  capability["state"] = json::Value(on);
  json::Object arguments;
  arguments["capabilities"] = json::Value(json::Array{json::Value(std::move(capability))});
  auto set = co_await qmp_run(state, "migrate-set-capabilities", std::move(arguments));
  if (!set) co_return std::move(set).error();
  co_return Result<void>{};
}

// The name under which a migration's file is handed to QEMU (getfd). A VM
// runs one migration at a time.
constexpr const char* kMigrationFd = "migration";

// A state file for QEMU to write a migration into, opened by hostd (QEMU's
// seccomp filter forbids it a shell, and it may not be able to open the
// path itself): created or emptied, readable by its owner only.
Result<UniqueFd> create_state_file(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return sys_error("create state file", path.string());
  return fd;
}

Result<UniqueFd> open_state_file(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open state file", path.string());
  return fd;
}

// Starts `command` ("migrate" or "migrate-incoming") on `file`: QEMU gets
// its own copy over the monitor (getfd) and hostd's is closed here. QEMU
// takes the named fd out of the monitor when the migration starts and
// closes it when the migration ends; if it refuses the command, closefd
// drops its copy, so no start, failed or not, leaves an fd in QEMU.
asio::awaitable<Result<void>> start_migration(VmState& state, const char* command, UniqueFd file) {
  if (!state.qmp || !state.qmp->connected()) {
    co_return make_error(std::string("QMP ") + command,
                         "the monitor connection is closed (QEMU is gone)", state.config.id);
  }
  {
    json::Object arguments;
    arguments["fdname"] = json::Value(kMigrationFd);
    std::string getfd = "getfd"; // named: see qmp_run
    auto passed = co_await state.qmp->execute_with_fd(std::move(getfd), std::move(arguments),
                                                      file.get(), milliseconds(5000));
    file.reset();
    if (!passed) co_return std::move(passed).error();
  }
  json::Object arguments;
  arguments["uri"] = json::Value(std::string("fd:") + kMigrationFd);
  auto begun = co_await qmp_run(state, command, std::move(arguments));
  if (!begun) {
    json::Object close;
    close["fdname"] = json::Value(kMigrationFd);
    (void)co_await qmp_run(state, "closefd", std::move(close));
    co_return std::move(begun).error();
  }
  co_return Result<void>{};
}

// Polls query-migrate until the migration (either direction) completed or
// failed. Device state alone is a few KB: this takes tens of ms.
asio::awaitable<Result<void>> wait_migration(std::shared_ptr<VmState> state,
                                             Clock::time_point deadline) {
  for (;;) {
    if (!state->running()) {
      co_return make_error("migrate", "QEMU exited during the migration", state->config.id);
    }
    json::Object no_arguments;
    auto reply = co_await qmp_run(*state, "query-migrate", std::move(no_arguments));
    if (!reply) co_return std::move(reply).error();
    const std::string& status = (*reply)["status"].as_string();
    if (status == "completed") co_return Result<void>{};
    if (status == "failed" || status == "cancelled") {
      const std::string& why = (*reply)["error-desc"].as_string();
      co_return make_error("migrate",
                           "QEMU reports the migration " + status +
                               (why.empty() ? std::string() : ": " + why),
                           state->config.id);
    }
    if (Clock::now() >= deadline) {
      co_return make_error("migrate", "not finished in time (status " + status + ")",
                           state->config.id);
    }
    co_await sleep_for(state->executor, milliseconds(5));
  }
}

Result<void> rename_new(const fs::path& from, const fs::path& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) != 0) {
    Error error = sys_error("rename", from.string() + " -> " + to.string());
    if (errno == EXDEV) error.detail = "not on the same filesystem";
    if (errno == EEXIST) error.detail = "the target exists; a snapshot is never overwritten";
    return error;
  }
  return {};
}

// The manifest of a snapshot of this VM, without checksums: what it was
// booted from and how it is shaped.
snapshot::Manifest manifest_of(const VmState& state) {
  std::error_code ec;
  snapshot::Manifest manifest;
  manifest.vcpus = state.config.vcpus;
  manifest.memory_mib = state.config.memory_mib;
  manifest.accel = state.accel;
  manifest.network = state.config.network.has_value();
  manifest.kernel = fs::absolute(state.config.images.kernel, ec);
  manifest.initrd = fs::absolute(state.config.images.initrd, ec);
  manifest.base_disk = fs::absolute(state.config.images.base_disk, ec);
  manifest.cmdline = state.kernel_cmdline;
  manifest.pit = state.pit;
  manifest.vcpu_sockets = state.vcpu_sockets;
  return manifest;
}

// What save_snapshot does once QEMU is gone and the files are in place:
// checksums, manifest, read-only modes. Blocking; runs off the executor.
// A snapshot whose RAM stays in memory only (a fork's: it dies with its
// family, and with hostd) is never read back from disk, so it gets no
// checksums, fsyncs or manifest file: hashing the parent's RAM and disk
// was the largest part of a fork's save, on its critical path.
Result<snapshot::Manifest> seal_snapshot(const fs::path& staging, snapshot::Manifest manifest,
                                         const GuestMemory& memory) {
  const fs::path state = staging / snapshot::kStateName;
  const fs::path disk = staging / snapshot::kDiskName;
  // Kept on disk too when asked (a template, read back after a restart).
  const bool persisted = manifest.memory_file != memory.path();
  if (memory.bytes() != std::uint64_t{manifest.memory_mib} << 20) {
    return make_error("check memory file",
                      "its size " + std::to_string(memory.bytes()) + " is not the VM's memory size",
                      manifest.memory_file.string());
  }
  const fs::path manifest_path = staging / snapshot::kManifestName;
  if (persisted) {
    if (auto digested = snapshot::sync_and_digest(staging, manifest); !digested)
      return digested.error();
    if (auto written = memory.write_to(manifest.memory_file); !written) return written.error();
    auto memory_digest = snapshot::digest_sparse_file(memory.path());
    if (!memory_digest) return memory_digest.error();
    manifest.memory = *memory_digest;
    if (auto written = snapshot::write_file_atomically(manifest_path, format_manifest(manifest));
        !written)
      return written.error();
  }
  // Read-only: a restored VM maps the RAM file share=off and sees any later
  // write to a page it has not copied yet. (Root ignores the mode; it is a
  // guard against accidents, not a protection.)
  // (The memory file itself is sealed, and its copy on disk made 0400.)
  // Root's, too: the disk was the saved VM's (its uid may serve another VM
  // later), and a file's owner could make it writable again.
  for (const auto& path : {state, disk, manifest_path}) {
    if (!persisted && path == manifest_path) continue;
    if (::chown(path.c_str(), 0, 0) != 0) return sys_error("chown", path.string());
    if (::chmod(path.c_str(), 0444) != 0) return sys_error("make read-only", path.string());
  }
  if (persisted) {
    if (auto synced = snapshot::fsync_path(staging, true); !synced) return synced.error();
  }
  return manifest;
}

// Asks QEMU to quit (the VM is saved or its state written), kills it if it
// has not gone within 5 s, and waits a little more for it to be reaped.
asio::awaitable<void> quit_qemu(std::shared_ptr<VmState> state) {
  json::Object quit_arguments;
  (void)co_await qmp_run(*state, "quit", std::move(quit_arguments), milliseconds(3000));
  const bool gone = co_await state->exited.wait(Clock::now() + std::chrono::seconds(5));
  if (!gone && state->process && !state->process->exited()) {
    state->process->kill(SIGKILL);
    (void)co_await state->exited.wait(Clock::now() + std::chrono::seconds(5));
  }
}

// Pauses the VM and writes its device state (not its RAM) into `path`.
asio::awaitable<Result<void>> save_device_state(std::shared_ptr<VmState> state, fs::path path) {
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  auto file = create_state_file(path);
  if (!file) co_return std::move(file).error();
  json::Object no_arguments;
  auto stopped = co_await qmp_run(*state, "stop", std::move(no_arguments));
  if (!stopped) co_return std::move(stopped).error();
  auto set = co_await set_ignore_shared(*state);
  if (!set) co_return std::move(set).error();
  auto begun = co_await start_migration(*state, "migrate", std::move(file).value());
  if (!begun) co_return std::move(begun).error();
  co_return co_await wait_migration(state, deadline);
}

// Vm::save_snapshot's steps; see vmm.hpp for the contract.
asio::awaitable<Result<Snapshot>> save_steps(std::shared_ptr<VmState> state, fs::path dir,
                                             fs::path memory_file) {
  const std::string& id = state->config.id;
  if (state->restored) {
    co_return make_error(
        "save snapshot",
        "a VM restored share=off cannot be snapshotted fast: its RAM is a private copy-on-write "
        "mapping of another snapshot's file, with no file of its own to keep; save a booted VM",
        id);
  }
  if (!state->running() || !state->qmp || !state->qmp->connected())
    co_return make_error("save snapshot", "the VM is not running", id);
  if (state->saving) co_return make_error("save snapshot", "a save is already under way", id);

  std::error_code ec;
  dir = fs::absolute(dir, ec).lexically_normal();
  if (!dir.has_filename()) dir = dir.parent_path(); // "a/b/" names a/b
  if (!memory_file.empty()) memory_file = fs::absolute(memory_file, ec).lexically_normal();
  for (const auto& path : {dir, memory_file}) {
    if (!path.empty() && fs::symlink_status(path, ec).type() != fs::file_type::not_found) {
      co_return Error{EEXIST,
                      "save snapshot",
                      path.string(),
                      "it exists; a snapshot is never overwritten: choose a new path",
                      {}};
    }
  }
  // Everything is written into a hidden staging dir beside `dir` and renamed
  // to `dir` last, so `dir` is either absent or complete.
  const fs::path staging = dir.parent_path() / ("." + dir.filename().string() + ".partial");
  if (::mkdir(staging.c_str(), 0700) != 0) {
    Error error = sys_error("save snapshot: create directory", staging.string());
    if (errno == EEXIST) error.detail = "a save into this path is under way, or one crashed";
    co_return error;
  }
  state->saving = true;
  struct Saving {
    VmState& state;
    ~Saving() { state.saving = false; }
  } saving{*state};

  fs::path state_path = staging / snapshot::kStateName; // named: see qmp_run
  auto written = co_await save_device_state(state, std::move(state_path));
  if (!written) {
    // Before the device state is written the VM can go on: undo and resume.
    Error error = std::move(written).error();
    fs::remove_all(staging, ec);
    json::Object no_arguments;
    auto resumed = co_await qmp_run(*state, "cont", std::move(no_arguments));
    error.detail += resumed ? "; nothing was saved and the VM was resumed"
                            : "; nothing was saved, and resuming the VM failed too (" +
                                  resumed.error().message() + ")";
    co_return std::move(error).with_context("saving VM " + id + " to " + dir.string());
  }

  // The device state is out and QEMU has flushed the disk (a completed
  // migration inactivates the block devices). From here the VM ends: its
  // overlay and RAM file become the snapshot's, so its own cleanup must not
  // remove them.
  state->saved = true;
  state->files_created = false;
  const VmPaths paths = state->paths;
  bool memory_moved = false;
  // The RAM is the snapshot's now; QEMU's exit unmaps it.
  std::shared_ptr<GuestMemory> memory = std::move(state->own_memory);
  state->paths.memory_file.clear();
  auto fail = [&](Error error) -> Result<Snapshot> {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    if (memory_moved) fs::remove(memory_file, ignored);
    fs::remove_all(paths.dir, ignored);
    error.detail += "; the VM has ended and nothing of it was kept";
    return std::move(error).with_context("saving VM " + id + " to " + dir.string());
  };
  co_await quit_qemu(state);
  if (state->running()) co_return fail(make_error("quit QEMU", "it did not exit", id));
  if (auto moved = rename_new(paths.overlay, staging / snapshot::kDiskName); !moved)
    co_return fail(std::move(moved).error());
  if (!memory) co_return fail(make_error("save snapshot", "the VM has no memory file", id));
  if (!memory_file.empty()) memory_moved = true; // written by seal_snapshot
  fs::remove_all(paths.dir, ec);                 // sockets, log

  snapshot::Manifest manifest = manifest_of(*state);
  manifest.memory_file = memory_file.empty() ? memory->path() : memory_file;
  // Nothing maps the memory writable and shared any more: it is sealed
  // first (off the executor: GuestMemory::seal may wait).
  auto seal = [staging, manifest, memory]() -> Result<snapshot::Manifest> {
    // Pages the guest freed since boot are zeros (init_on_free=1): out
    // before the seal, so every restore and fork maps only what is used.
    (void)snapshot::punch_zero_pages(memory->path()); // best effort: same content
    if (auto sealed = memory->seal(); !sealed) return std::move(sealed).error();
    return seal_snapshot(staging, manifest, *memory);
  };
  auto sealed = co_await run_blocking(state->executor, std::move(seal));
  if (!sealed) co_return fail(std::move(sealed).error());
  if (auto moved = rename_new(staging, dir); !moved) co_return fail(std::move(moved).error());
  (void)snapshot::fsync_path(dir.parent_path(), true);

  Snapshot saved = snapshot::described(dir, *sealed);
  saved.memory = std::move(memory);
  co_return saved;
}

// Copies a file keeping its holes (data extents + copy_file_range): the
// fallback when a rename would cross filesystems. `in_place`: `to` exists
// and keeps its inode (a ForkLanding's disk, which QEMUs hold open); its
// bytes are replaced, and a failure leaves it half-written.
Result<void> sparse_copy(const fs::path& from, const fs::path& to, bool in_place = false) {
  UniqueFd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return sys_error("open", from.string());
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) return sys_error("stat", from.string());
  UniqueFd out(
      in_place ? ::open(to.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC)
               : ::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 0777));
  if (!out) return sys_error(in_place ? "open" : "create", to.string());
  auto fail = [&](const char* what, const fs::path& path) {
    Error error = sys_error(what, path.string());
    if (!in_place) ::unlink(to.c_str());
    return error;
  };
  if (::ftruncate(out.get(), st.st_size) != 0) return fail("resize", to);
  auto copied = for_each_data_extent(in.get(), static_cast<std::uint64_t>(st.st_size),
                                     from.string(), [&](off_t first, off_t last) -> Result<void> {
                                       loff_t src = first, dst = first;
                                       while (src < last) {
                                         const ssize_t n = ::copy_file_range(
                                             in.get(), &src, out.get(), &dst,
                                             static_cast<std::size_t>(last - src), 0);
                                         if (n < 0 && errno == EINTR) continue;
                                         if (n <= 0) return sys_error("copy", from.string());
                                       }
                                       return {};
                                     });
  if (!copied) {
    if (!in_place) ::unlink(to.c_str());
    return copied;
  }
  if (::fsync(out.get()) != 0) return fail("fsync", to);
  return {};
}

// How a file was moved: renamed, or copied (the original still there).
enum class Moved { no, renamed, copied };

Result<Moved> move_file(const fs::path& from, const fs::path& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0)
    return Moved::renamed;
  if (errno != EXDEV) return sys_error("rename", from.string() + " -> " + to.string());
  if (auto copied = sparse_copy(from, to); !copied)
    return std::move(copied).error().with_context("copying across filesystems");
  return Moved::copied;
}

// Undoes move_file: the file is back at `from`.
void move_back(Moved moved, const fs::path& from, const fs::path& to) {
  if (moved == Moved::renamed) {
    ::renameat2(AT_FDCWD, to.c_str(), AT_FDCWD, from.c_str(), RENAME_NOREPLACE);
  } else if (moved == Moved::copied) {
    ::unlink(to.c_str());
  }
}

asio::awaitable<Result<void>> raise_bandwidth(VmState& state) {
  // QEMU 7.2 caps a migration at 32 MiB/s by default (max-bandwidth, in
  // bytes per second); a stopped VM saved to a local file wants no cap.
  json::Object parameters;
  parameters["max-bandwidth"] = json::Value(static_cast<std::int64_t>(1) << 40);
  auto set = co_await qmp_run(state, "migrate-set-parameters", std::move(parameters));
  if (!set) co_return std::move(set).error();
  co_return Result<void>{};
}

// What save_full does once the state is written and the disk moved:
// fsync, checksums, manifest. Blocking; runs off the executor.
Result<void> seal_full(const fs::path& staging, snapshot::Manifest manifest) {
  // The disk was the saved VM's own (its uid's): the Space's is root's.
  const fs::path disk = staging / snapshot::kDiskName;
  if (::chown(disk.c_str(), 0, 0) != 0) return sys_error("chown", disk.string());
  if (auto digested = snapshot::sync_and_digest(staging, manifest); !digested)
    return digested.error();
  const fs::path manifest_path = staging / snapshot::kManifestName;
  if (auto written = snapshot::write_file_atomically(manifest_path, format_manifest(manifest));
      !written)
    return written.error();
  return snapshot::fsync_path(staging, true);
}

// Frees the RAM the migration's zero-page scan faulted in: for a restored
// VM, the template file's former holes (read as zeros, the file is never
// written); for a VM with a RAM file of its own, its zero pages (the VM is
// paused). Best effort: the content is the same either way.
Result<std::uint64_t> give_back_scanned_pages(const fs::path& own_file,
                                              const fs::path& shared_source,
                                              const snapshot::Ranges& source_holes) {
  if (!shared_source.empty()) {
    if (auto punched = snapshot::punch_ranges(shared_source, source_holes); !punched)
      return std::move(punched).error();
    std::uint64_t bytes = 0;
    for (const auto& [first, last] : source_holes)
      bytes += last - first;
    return bytes;
  }
  return snapshot::punch_zero_pages(own_file);
}

// A whole-VM save's target: `dir` made absolute and normal (refused if it
// exists: a snapshot is never overwritten), and the hidden staging dir
// beside it that the save is written into and renamed to `dir` from last.
Result<fs::path> make_save_staging(fs::path& dir) {
  std::error_code ec;
  dir = fs::absolute(dir, ec).lexically_normal();
  if (!dir.has_filename()) dir = dir.parent_path();
  if (fs::symlink_status(dir, ec).type() != fs::file_type::not_found)
    return Error{EEXIST,
                 "save VM",
                 dir.string(),
                 "it exists; a snapshot is never overwritten: choose a new path",
                 {}};
  fs::path staging = dir.parent_path() / ("." + dir.filename().string() + ".partial");
  if (::mkdir(staging.c_str(), 0700) != 0) {
    Error error = sys_error("save VM: create directory", staging.string());
    if (errno == EEXIST) error.detail = "a save into this path is under way, or one crashed";
    if (errno == ENOENT) error.detail = "the snapshot dir's parent must exist";
    return error;
  }
  return staging;
}

// save_fork_snapshot_into's staging dir: inside the landing's dir, whose
// disk placeholder the save fills in place.
Result<fs::path> make_landing_staging(const ForkLanding& landing) {
  if (landing.filled || !landing.snapshot.memory || landing.snapshot.memory->sealed())
    return make_error("save VM into a fork landing", "the landing was used already",
                      landing.snapshot.dir.string());
  fs::path staging = landing.snapshot.dir / ".partial";
  if (::mkdir(staging.c_str(), 0700) != 0) return sys_error("create directory", staging.string());
  return staging;
}

// Vm::save_full's steps; see vmm.hpp for the contract.
asio::awaitable<Result<Snapshot>> save_full_steps(std::shared_ptr<VmState> state, fs::path dir) {
  const std::string& id = state->config.id;
  const std::string what = "saving VM " + id + " in full to " + dir.string();
  if (!state->running() || !state->qmp || !state->qmp->connected())
    co_return make_error("save VM", "the VM is not running", id).with_context(what);
  if (state->saving)
    co_return make_error("save VM", "a save is already under way", id).with_context(what);

  std::error_code ec;
  auto made = make_save_staging(dir);
  if (!made) co_return std::move(made).error().with_context(what);
  const fs::path staging = std::move(made).value();
  auto state_file = create_state_file(staging / snapshot::kStateName);
  if (!state_file) {
    fs::remove_all(staging, ec);
    co_return std::move(state_file).error().with_context(what);
  }

  state->saving = true;
  struct Saving {
    VmState& state;
    ~Saving() { state.saving = false; }
  } saving{*state};

  // Which pages of the template the scan will fault in: its holes now.
  snapshot::Ranges source_holes;
  if (!state->shared_source.empty()) {
    const fs::path source = state->shared_source;
    auto scan = [source]() { return snapshot::hole_ranges(source); };
    auto holes = co_await run_blocking(state->executor, std::move(scan));
    if (holes) source_holes = std::move(holes).value(); // else: nothing given back later
  }

  bool was_running = true;
  {
    json::Object no_arguments;
    auto status = co_await qmp_run(*state, "query-status", std::move(no_arguments));
    if (!status) {
      fs::remove_all(staging, ec);
      co_return std::move(status).error().with_context(what);
    }
    was_running = (*status)["running"].as_bool();
  }
  const VmPaths paths = state->paths;
  const fs::path disk = staging / snapshot::kDiskName;
  Moved disk_moved = Moved::no;
  bool scanned = false;
  // Puts everything back and resumes the VM: the failure path of every step
  // before the snapshot is committed.
  auto undo = [&](Error error) -> asio::awaitable<Result<Snapshot>> {
    move_back(disk_moved, paths.overlay, disk);
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    if (scanned) {
      const fs::path own = paths.memory_file, source = state->shared_source;
      const snapshot::Ranges holes = source_holes;
      auto give_back = [own, source, holes]() {
        return give_back_scanned_pages(own, source, holes);
      };
      (void)co_await run_blocking(state->executor, std::move(give_back));
    }
    std::string resumed_how = "the VM was left paused, as it was";
    if (was_running && state->running()) {
      json::Object no_arguments;
      auto resumed = co_await qmp_run(*state, "cont", std::move(no_arguments));
      resumed_how = resumed ? "the VM was resumed"
                            : "resuming the VM failed too (" + resumed.error().message() + ")";
    }
    error.detail += "; nothing was saved and " + resumed_how;
    co_return std::move(error).with_context(what);
  };

  const auto deadline = Clock::now() + std::chrono::minutes(5);
  {
    json::Object no_arguments;
    auto stopped = co_await qmp_run(*state, "stop", std::move(no_arguments));
    if (!stopped) co_return co_await undo(std::move(stopped).error());
  }
  if (auto set = co_await set_ignore_shared(*state, false); !set)
    co_return co_await undo(std::move(set).error());
  if (auto raised = co_await raise_bandwidth(*state); !raised)
    co_return co_await undo(std::move(raised).error());
  {
    auto begun = co_await start_migration(*state, "migrate", std::move(state_file).value());
    if (!begun) co_return co_await undo(std::move(begun).error());
    scanned = true;
    auto written = co_await wait_migration(state, deadline);
    if (!written) {
      // QEMU may say more in its log than in the migration's error.
      Error error = std::move(written).error();
      const std::string log = detail::file_tail(paths.log, 512);
      if (!log.empty()) error.detail += "; QEMU log (tail): " + log;
      co_return co_await undo(std::move(error));
    }
  }
  // The migration completed: QEMU flushed and let go of the disk (a resumed
  // VM takes it back), and the VM is paused (postmigrate).
  auto moved = move_file(paths.overlay, disk);
  if (!moved) co_return co_await undo(std::move(moved).error());
  disk_moved = *moved;

  snapshot::Manifest manifest = manifest_of(*state);
  manifest.full_ram = true;
  {
    auto seal = [staging, manifest]() { return seal_full(staging, manifest); };
    auto sealed = co_await run_blocking(state->executor, std::move(seal));
    if (!sealed) co_return co_await undo(std::move(sealed).error());
  }
  if (auto committed = rename_new(staging, dir); !committed)
    co_return co_await undo(std::move(committed).error());
  (void)snapshot::fsync_path(dir.parent_path(), true);

  // Committed: the VM ends. Its own cleanup removes what is left (sockets,
  // log, a copied-from overlay, its RAM file).
  state->saved = true;
  if (!state->shared_source.empty()) {
    const fs::path source = state->shared_source;
    const snapshot::Ranges holes = source_holes;
    auto give_back = [source, holes]() { return give_back_scanned_pages({}, source, holes); };
    (void)co_await run_blocking(state->executor, std::move(give_back));
  }
  co_await quit_qemu(state);

  co_return snapshot::described(dir, manifest);
}

// Hands `file` to QEMU in an fd set (add-fd) and returns the set's id:
// QEMU opens "/dev/fdset/<id>" as a dup of it, for the QMP commands that
// take a file name and which the jail would not let QEMU open by path.
asio::awaitable<Result<std::int64_t>> add_fd_set(VmState& state, UniqueFd file) {
  if (!state.qmp || !state.qmp->connected())
    co_return make_error("QMP add-fd", "the monitor connection is closed (QEMU is gone)",
                         state.config.id);
  json::Object no_arguments;
  std::string add = "add-fd"; // named: see qmp_run
  auto added = co_await state.qmp->execute_with_fd(std::move(add), std::move(no_arguments),
                                                   file.get(), milliseconds(5000));
  if (!added) co_return std::move(added).error();
  co_return (*added)["fdset-id"].as_int();
}

asio::awaitable<void> remove_fd_set(VmState& state, std::int64_t id) {
  json::Object arguments;
  arguments["fdset-id"] = json::Value(id);
  (void)co_await qmp_run(state, "remove-fd", std::move(arguments));
}

// Writes the paused VM's device state, without RAM, into `path` (QMP
// xen-save-devices-state, see device_state.hpp); raw: not yet loadable.
// Returns the fd set it used, already removed: QEMU 7.2 closes a removed
// set's descriptor only while the VM runs (monitor_fdset_cleanup), so the
// caller removes it once more after `cont`, or QEMU keeps hostd's file open.
asio::awaitable<Result<std::int64_t>> save_devices_only(VmState& state, const fs::path& path) {
  auto file = create_state_file(path);
  if (!file) co_return std::move(file).error();
  auto set = co_await add_fd_set(state, std::move(file).value());
  if (!set) co_return std::move(set).error();
  json::Object arguments;
  arguments["filename"] = json::Value("/dev/fdset/" + std::to_string(*set));
  arguments["live"] = json::Value(false);
  auto saved = co_await qmp_run(state, "xen-save-devices-state", std::move(arguments));
  co_await remove_fd_set(state, *set);
  if (!saved) co_return std::move(saved).error();
  co_return *set;
}

// The paused VM's disk, copied into `staging`, and its private RAM pages
// laid over `copy` (its memory source's data, copied before the pause; or
// copied here, named `name`, when `copy` is null).
// Blocking; runs off the executor.
struct CopiedFiles {
  std::shared_ptr<GuestMemory> memory; // made here when none was given
  RamCopyStats ram;
  std::chrono::microseconds disk_time{0}, memory_time{0};
};
Result<CopiedFiles> copy_disk_and_ram(const fs::path& overlay, const fs::path& disk, bool in_place,
                                      pid_t pid, std::shared_ptr<GuestMemory> source,
                                      std::shared_ptr<GuestMemory> copy, const std::string& name) {
  CopiedFiles copied;
  const auto started = Clock::now();
  if (auto done = sparse_copy(overlay, disk, in_place); !done)
    return std::move(done).error().with_context("copying the disk overlay");
  const auto disk_done = Clock::now();
  if (!copy) { // a booted VM's own RAM file: copied now, while it is paused
    auto made = copy_memory_data(*source, name);
    if (!made) return std::move(made).error().with_context("copying the guest's RAM");
    copied.memory = std::move(made).value();
    copy = copied.memory;
  }
  auto address = find_mapping(pid, *source, source->bytes());
  if (!address) return std::move(address).error();
  if (auto laid = overlay_private_pages(pid, *address, *copy, &copied.ram); !laid)
    return std::move(laid).error().with_context("copying the guest's RAM");
  copied.disk_time = std::chrono::duration_cast<std::chrono::microseconds>(disk_done - started);
  copied.memory_time =
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - disk_done);
  return copied;
}

// What save_fork_snapshot does once the VM runs again: the loadable state
// file, the sealed RAM, checksums of state and disk, the manifest, modes.
// Blocking; runs off the executor.
Result<snapshot::Manifest> seal_fork_snapshot(const fs::path& staging, const fs::path& disk,
                                              snapshot::Manifest manifest, GuestMemory& memory,
                                              std::uint64_t memory_bytes) {
  const fs::path raw = staging / "state.raw";
  const fs::path state = staging / snapshot::kStateName;
  {
    std::ifstream in(raw, std::ios::binary);
    if (!in) return sys_error("open", raw.string());
    std::string saved((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto stream = loadable_device_state(saved);
    if (!stream) return std::move(stream).error().with_context(raw.string());
    auto file = create_state_file(state);
    if (!file) return std::move(file).error();
    const std::string& bytes = *stream;
    for (std::size_t done = 0; done < bytes.size();) {
      const ssize_t w = ::write(file->get(), bytes.data() + done, bytes.size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return sys_error("write", state.string());
      done += static_cast<std::size_t>(w);
    }
  }
  ::unlink(raw.c_str());
  if (auto sealed = memory.seal(); !sealed) return std::move(sealed).error();
  manifest.memory_file = memory.path();
  manifest.memory.size = memory.bytes();
  manifest.memory.data_bytes = memory_bytes;
  // Like save_snapshot's in-memory snapshots (see seal_snapshot): never
  // reopened from disk, so nothing is hashed or synced and no manifest file
  // is written. Root's and read-only, as save_snapshot's.
  for (const auto& path : {state, disk}) {
    if (::chown(path.c_str(), 0, 0) != 0) return sys_error("chown", path.string());
    if (::chmod(path.c_str(), 0444) != 0) return sys_error("make read-only", path.string());
  }
  return manifest;
}

// Gives a ForkLanding's children disks of the size of `overlay` (its
// parent's), larger than the landing's when the parent's disk was grown:
// their overlays are rewritten, empty as they were, at that size. Disks
// never shrink, so a smaller parent is refused.
Result<void> fit_landing_disks(const fs::path& overlay, ForkLanding& landing) {
  auto size = image_virtual_size(overlay, "qcow2");
  if (!size) return std::move(size).error();
  if (*size == landing.disk_bytes) return {};
  if (*size < landing.disk_bytes)
    return make_error("fit the landing's disks",
                      "the VM's disk is smaller than the landing's (" + std::to_string(*size) +
                          " < " + std::to_string(landing.disk_bytes) + " bytes)",
                      overlay.string());
  const std::string backing = landing.snapshot.disk.string();
  for (const auto& child : landing.child_overlays) {
    if (auto written = write_qcow2_overlay(child, backing, "qcow2", *size, true); !written)
      return std::move(written).error().with_context("resizing a landing child's disk");
  }
  landing.disk_bytes = *size;
  return {};
}

// Whether a ForkLanding's waiting QEMUs still show exactly what is in its
// memory file: none has written a page of it (the fork's pages would not
// reach a page it had copied). Each must still run.
bool landing_untouched(const ForkLanding& landing) {
  const auto& memory = *landing.snapshot.memory;
  for (const auto& child : landing.children) {
    const pid_t pid = child->qemu_pid();
    if (pid <= 0) return false;
    auto address = find_mapping(pid, memory, memory.bytes());
    if (!address) return false;
    auto written = count_private_pages(pid, *address, memory.bytes());
    if (!written || *written != 0) return false;
  }
  return true;
}

// Vm::save_fork_snapshot's steps; see vmm.hpp for the contract.
// `landing`: save into it (save_fork_snapshot_into); `copy`: the source's
// data copied ahead (save_fork_snapshot_over).
asio::awaitable<Result<Snapshot>> fork_save_steps(std::shared_ptr<VmState> state, fs::path dir,
                                                  ForkSaveStats* stats, AfterForkSave after,
                                                  ForkLanding* landing = nullptr,
                                                  std::shared_ptr<GuestMemory> copy = nullptr) {
  const std::string& id = state->config.id;
  const std::string what = "saving VM " + id + " for a fork to " + dir.string();
  if (!state->running() || !state->qmp || !state->qmp->connected())
    co_return make_error("save VM", "the VM is not running", id).with_context(what);
  if (state->saving)
    co_return make_error("save VM", "a save is already under way", id).with_context(what);
  // A restored VM's RAM is the snapshot's file plus its private pages; a
  // booted VM's is its own file.
  std::shared_ptr<GuestMemory> source = state->restored ? state->source_memory : state->own_memory;
  if (!source) co_return make_error("save VM", "the VM has no memory file", id).with_context(what);
  if (stats) stats->stayed_paused = false; // until a save that leaves it paused succeeds

  std::error_code ec;
  // Into a landing: its dir exists (the disk placeholder its QEMUs hold
  // open is there); the device state is staged inside it.
  auto made = landing ? make_landing_staging(*landing) : make_save_staging(dir);
  if (!made) co_return std::move(made).error().with_context(what);
  const fs::path staging = std::move(made).value();
  state->saving = true;
  struct Saving {
    VmState& state;
    ~Saving() { state.saving = false; }
  } saving{*state};

  bool was_running = true;
  {
    json::Object no_arguments;
    auto status = co_await qmp_run(*state, "query-status", std::move(no_arguments));
    if (!status) {
      fs::remove_all(staging, ec);
      co_return std::move(status).error().with_context(what);
    }
    was_running = (*status)["running"].as_bool();
  }
  if (landing) {
    auto fitted = fit_landing_disks(state->paths.overlay, *landing);
    if (!fitted) {
      fs::remove_all(staging, ec);
      co_return std::move(fitted).error().with_context(what + "; nothing was saved");
    }
  }
  // A snapshot's RAM file never changes: copy it before the pause (or
  // take the copy made ahead for a template's). A booted VM's own file
  // changes while it runs: copy it paused.
  const auto copy_started = Clock::now();
  std::shared_ptr<GuestMemory> memory;
  if (landing)
    memory = landing->snapshot.memory; // copied when the landing was made
  else if (state->restored && copy)
    memory = std::move(copy);
  else if (state->restored && state->source_spare)
    memory = state->source_spare->take();
  if (stats) stats->spare_copy = memory != nullptr;
  if (state->restored && !memory) {
    std::string name = "vesicle-fork-" + dir.filename().string();
    auto copy = [source, name]() { return copy_memory_data(*source, name); };
    auto copied = co_await run_blocking(state->executor, std::move(copy));
    if (!copied) {
      fs::remove_all(staging, ec);
      co_return std::move(copied).error().with_context(what + "; nothing was saved");
    }
    memory = std::move(copied).value();
  }
  const auto started = Clock::now();
  std::optional<std::int64_t> state_fd_set; // see save_devices_only
  auto resume = [&]() -> asio::awaitable<Result<void>> {
    if (!was_running || !state->running()) co_return Result<void>{};
    json::Object no_arguments;
    auto resumed = co_await qmp_run(*state, "cont", std::move(no_arguments));
    if (!resumed) co_return std::move(resumed).error();
    if (state_fd_set) co_await remove_fd_set(*state, *state_fd_set);
    co_return Result<void>{};
  };
  auto undo = [&](Error error) -> asio::awaitable<Result<Snapshot>> {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    auto resumed = co_await resume();
    error.detail += resumed ? "; nothing was saved and the VM runs on as it was"
                            : "; nothing was saved, and resuming the VM failed (" +
                                  resumed.error().message() + ")";
    co_return std::move(error).with_context(what);
  };

  {
    json::Object no_arguments;
    auto stopped = co_await qmp_run(*state, "stop", std::move(no_arguments));
    if (!stopped) co_return co_await undo(std::move(stopped).error());
  }
  // `stop` drained and flushed the disk: its overlay is consistent on disk.
  {
    const fs::path raw = staging / "state.raw";
    auto saved = co_await save_devices_only(*state, raw);
    if (!saved) co_return co_await undo(std::move(saved).error());
    state_fd_set = *saved;
  }
  const auto devices_saved = Clock::now();
  Result<CopiedFiles> copied = make_error("copy", "not tried");
  {
    const fs::path overlay = state->paths.overlay;
    const fs::path disk = landing ? landing->snapshot.disk : staging / snapshot::kDiskName;
    const bool in_place = landing != nullptr;
    const pid_t pid = state->process->pid();
    std::string name = "vesicle-fork-" + dir.filename().string();
    auto copy = [overlay, disk, in_place, pid, source, memory, name]() {
      return copy_disk_and_ram(overlay, disk, in_place, pid, source, memory, name);
    };
    copied = co_await run_blocking(state->executor, std::move(copy));
  }
  if (!copied) co_return co_await undo(std::move(copied).error());
  if (!memory) memory = copied->memory;
  // Pages are 4 KiB in pagemap's count.
  const bool stay_paused = after.stay_paused_from && state->restored &&
                           copied->ram.private_pages * 4096 >= *after.stay_paused_from;
  if (!stay_paused) {
    if (auto resumed = co_await resume(); !resumed)
      co_return co_await undo(std::move(resumed).error());
  }
  const auto resumed_at = Clock::now();
  // A step below that fails leaves nothing saved: a VM kept paused for its
  // caller to restart goes on instead, as after any failed save.
  auto failed = [&](Error error) -> asio::awaitable<Result<Snapshot>> {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    if (!stay_paused) co_return std::move(error).with_context(what + " (the VM runs on)");
    co_return co_await undo(std::move(error));
  };
  if (stats) {
    using std::chrono::duration_cast;
    using std::chrono::microseconds;
    stats->paused = duration_cast<microseconds>(resumed_at - started);
    stats->device_state = duration_cast<microseconds>(devices_saved - started);
    stats->disk = copied->disk_time;
    stats->memory = copied->memory_time;
    stats->data_copy = duration_cast<microseconds>(started - copy_started);
    stats->private_pages = copied->ram.private_pages;
  }

  snapshot::Manifest manifest = manifest_of(*state);
  {
    struct stat st {};
    const std::uint64_t memory_bytes =
        ::fstat(memory->fd(), &st) == 0 ? static_cast<std::uint64_t>(st.st_blocks) * 512 : 0;
    if (stats) stats->memory_bytes = memory_bytes;
    const fs::path disk = landing ? landing->snapshot.disk : staging / snapshot::kDiskName;
    auto seal = [staging, disk, manifest, memory, memory_bytes]() {
      return seal_fork_snapshot(staging, disk, manifest, *memory, memory_bytes);
    };
    auto sealed = co_await run_blocking(state->executor, std::move(seal));
    if (!sealed) co_return co_await failed(std::move(sealed).error());
    manifest = std::move(sealed).value();
  }
  if (landing) {
    // The landing's dir already holds the disk; the device state joins it.
    const fs::path from = staging / snapshot::kStateName, to = dir / snapshot::kStateName;
    if (::rename(from.c_str(), to.c_str()) != 0)
      co_return co_await failed(sys_error("rename", from.string() + " -> " + to.string()));
    fs::remove_all(staging, ec);
    landing->filled = true;
  } else if (auto moved = rename_new(staging, dir); !moved) {
    co_return co_await failed(std::move(moved).error());
  }
  (void)snapshot::fsync_path(dir.parent_path(), true);
  Snapshot saved = snapshot::described(dir, manifest);
  saved.memory = std::move(memory);
  if (stats) stats->stayed_paused = stay_paused;
  co_return saved;
}

// QemuVm::grow_disk: the overlay's size from QEMU, then block_resize.
asio::awaitable<Result<bool>> grow_disk_steps(std::shared_ptr<VmState> state, std::uint64_t bytes) {
  json::Object no_arguments;
  auto blocks = co_await qmp_run(*state, "query-block", std::move(no_arguments));
  if (!blocks) co_return std::move(blocks).error();
  auto current = disk_bytes_in(*blocks, "root");
  if (!current) co_return std::move(current).error();
  if (*current == bytes) co_return false;
  if (*current > bytes)
    co_return make_error("grow the disk",
                         "the VM's disk is " + std::to_string(*current >> 20) +
                             " MiB, larger than the " + std::to_string(bytes >> 20) +
                             " MiB asked for, and a disk is never shrunk",
                         state->config.id);
  json::Object resize;
  resize["device"] = json::Value("root");
  resize["size"] = json::Value(bytes);
  auto resized = co_await qmp_run(*state, "block_resize", std::move(resize));
  if (!resized) co_return std::move(resized).error();
  co_return true;
}

class QemuVm final : public Vm {
public:
  explicit QemuVm(std::shared_ptr<VmState> state) : state_(std::move(state)) {}
  ~QemuVm() override { state_->destroy(); }

  const std::string& id() const override { return state_->config.id; }
  int qemu_pid() const override { return state_->process->pid(); }
  void label(const std::string& sandbox_id) override {
    // Named anew while paused (a waiting pool VM handed out): the pause
    // moves to the new name.
    if (state_->paused_why && state_->name != sandbox_id && state_->config.on_pause) {
      state_->config.on_pause(state_->name, std::nullopt);
      state_->config.on_pause(sandbox_id, state_->paused_why);
    }
    state_->name = sandbox_id;
    if (!state_->leaf || state_->leaf->name() == sandbox_id) return;
    if (auto renamed = state_->leaf->rename(sandbox_id); !renamed)
      log::warn("a VM's cgroup leaf keeps its old name", {{"vm", state_->config.id},
                                                          {"sandbox", sandbox_id},
                                                          {"error", renamed.error().message()}});
  }
  AgentClient& agent() override { return *state_->agent; }
  bool running() const override { return state_->running(); }
  bool maps_memory_shared() const override { return !state_->restored; }

  asio::awaitable<std::string> wait_exit() override {
    auto state = state_;
    co_await state->exited.wait();
    co_return state->exit_description;
  }

  asio::awaitable<void> shutdown(milliseconds grace) override {
    auto state = state_;
    // With the agent channel gone nobody can ask the guest; kill it now.
    if (state->running() && state->agent && state->agent->connected()) {
      state->shutdown_requested = true;
      const auto deadline = Clock::now() + grace;
      // The agent acknowledges, then powers the guest off; QMP reports the
      // stop and the monitor handler lets QEMU exit. A guest that does not
      // get there in time is killed.
      asio::co_spawn(
          state->executor,
          [state]() -> asio::awaitable<void> {
            auto acknowledged = co_await state->agent->shutdown();
            // No acknowledgement (the channel broke): stop waiting for one.
            if (!acknowledged && state->running() && state->guest_stop_reason.empty())
              state->destroy();
          },
          asio::detached);
      co_await state->exited.wait(deadline);
    }
    state->destroy();
  }

  void destroy() override { state_->destroy(); }

  asio::awaitable<Result<bool>> grow_disk(std::uint64_t bytes) override {
    auto state = state_;
    co_return co_await grow_disk_steps(state, bytes);
  }

  asio::awaitable<Result<Snapshot>> save_snapshot(fs::path dir, fs::path memory_file) override {
    auto state = state_;
    co_return co_await save_steps(state, std::move(dir), std::move(memory_file));
  }

  asio::awaitable<Result<Snapshot>> save_fork_snapshot(fs::path dir, ForkSaveStats* stats,
                                                       AfterForkSave after) override {
    auto state = state_;
    co_return co_await fork_save_steps(state, std::move(dir), stats, after);
  }

  bool fits_landing(const ForkLanding& landing) const override {
    const VmState& state = *state_;
    if (!state.running() || !state.restored || !landing.source_memory ||
        state.source_memory != landing.source_memory || landing.filled)
      return false;
    if (state.config.network.has_value() != landing.snapshot.network) return false;
    if (landing.child_overlays.size() != landing.children.size()) return false;
    return landing_untouched(landing);
  }

  asio::awaitable<Result<Snapshot>> save_fork_snapshot_over(fs::path dir,
                                                            std::shared_ptr<GuestMemory> copy,
                                                            ForkSaveStats* stats) override {
    auto state = state_;
    if (copy &&
        (copy->sealed() || !state->source_memory || copy->bytes() != state->source_memory->bytes()))
      co_return make_error("save VM", "the copy given is not an unsealed copy of its RAM's size",
                           dir.string());
    co_return co_await fork_save_steps(state, std::move(dir), stats, AfterForkSave{}, nullptr,
                                       std::move(copy));
  }

  asio::awaitable<Result<Snapshot>> save_fork_snapshot_into(ForkLanding& landing,
                                                            ForkSaveStats* stats,
                                                            AfterForkSave after) override {
    auto state = state_;
    if (!fits_landing(landing))
      co_return make_error("save VM into a fork landing",
                           "the VM does not fit the landing (Vm::fits_landing)",
                           landing.snapshot.dir.string());
    co_return co_await fork_save_steps(state, landing.snapshot.dir, stats, after, &landing);
  }

  asio::awaitable<Result<Snapshot>> save_full(fs::path dir) override {
    auto state = state_;
    co_return co_await save_full_steps(state, std::move(dir));
  }

private:
  std::shared_ptr<VmState> state_;
};

// A VM whose QEMU waits for a snapshot's device state.
class PreparedQemu final : public PreparedRestore {
public:
  PreparedQemu(std::shared_ptr<VmState> state, Snapshot snapshot, RestoreTimes times)
      : state_(std::move(state)), snapshot_(std::move(snapshot)), times_(times) {}
  ~PreparedQemu() override {
    if (state_) state_->destroy();
  }

  asio::awaitable<Result<std::unique_ptr<Vm>>> finish() override;
  const RestoreTimes& times() const override { return times_; }
  int qemu_pid() const override { return state_ && state_->running() ? state_->process->pid() : 0; }
  asio::awaitable<void> discard() override {
    auto state = std::exchange(state_, nullptr);
    if (!state) co_return;
    state->destroy();
    co_await state->exited.wait();
  }

private:
  std::shared_ptr<VmState> state_;
  Snapshot snapshot_;
  RestoreTimes times_;
};

// Destroys a VM being made (its QEMU and files) when the step that makes it
// returns early; disarmed once the VM is handed out.
struct DestroyGuard {
  explicit DestroyGuard(std::shared_ptr<VmState> made) : state(std::move(made)) {}
  DestroyGuard(const DestroyGuard&) = delete;
  DestroyGuard& operator=(const DestroyGuard&) = delete;
  ~DestroyGuard() {
    if (armed) state->destroy();
  }

  std::shared_ptr<VmState> state;
  bool armed = true;
};

class QemuDriver final : public Driver {
public:
  explicit QemuDriver(asio::any_io_executor executor)
      : executor_(std::move(executor)), accel_(detect_accel()) {}

  Accel accel() const override { return accel_; }
  bool boots_as(const Snapshot& snapshot) const override {
    return !snapshot.pit && snapshot.vcpu_sockets == vcpu_sockets_for(accel_) &&
           same_boot_parameters(snapshot.kernel_cmdline, kernel_cmdline(accel_, std::nullopt));
  }

  asio::awaitable<Result<std::unique_ptr<Vm>>> boot(VmConfig config) override {
    const std::string what = "booting VM " + config.id;
    auto booted = co_await boot_steps(executor_, accel_, std::move(config));
    if (!booted) co_return std::move(booted).error().with_context(what);
    co_return std::move(booted);
  }

  asio::awaitable<Result<std::unique_ptr<PreparedRestore>>>
  prepare_restore(const Snapshot& snapshot, VmConfig config) override {
    const std::string what = "restoring VM " + config.id + " from " + snapshot.dir.string();
    auto prepared = co_await prepare_steps(executor_, accel_, snapshot, std::move(config));
    if (!prepared) co_return std::move(prepared).error().with_context(what);
    co_return std::move(prepared);
  }

  asio::awaitable<Result<std::unique_ptr<Vm>>> restore(const Snapshot& snapshot,
                                                       VmConfig config) override {
    const std::string what = "restoring VM " + config.id + " from " + snapshot.dir.string();
    auto prepared = co_await prepare_steps(executor_, accel_, snapshot, std::move(config));
    if (!prepared) co_return std::move(prepared).error().with_context(what);
    co_return co_await prepared.value()->finish();
  }

  asio::awaitable<Result<std::unique_ptr<Vm>>> restore_full(const Snapshot& snapshot,
                                                            VmConfig config) override {
    const std::string what = "resuming VM " + config.id + " from " + snapshot.dir.string();
    auto restored = co_await restore_full_steps(executor_, accel_, snapshot, std::move(config));
    if (!restored) co_return std::move(restored).error().with_context(what);
    co_return std::move(restored);
  }

  asio::awaitable<Result<ForkLanding>>
  prepare_fork_landing(const Snapshot& source, std::shared_ptr<GuestMemory> memory, fs::path dir,
                       std::vector<VmConfig> children) override {
    const std::string what = "preparing a fork landing in " + dir.string();
    auto landing = co_await landing_steps(executor_, accel_, source, std::move(memory),
                                          std::move(dir), std::move(children));
    if (!landing) co_return std::move(landing).error().with_context(what);
    co_return std::move(landing);
  }

private:
  // prepare_fork_landing's steps; see vmm.hpp.
  static asio::awaitable<Result<ForkLanding>>
  landing_steps(asio::any_io_executor executor, Accel accel, Snapshot source,
                std::shared_ptr<GuestMemory> memory, fs::path dir, std::vector<VmConfig> children) {
    if (source.full_ram || !source.memory || !source.memory->sealed())
      co_return make_error("check the source snapshot",
                           "a landing is made for a loaded snapshot with a RAM file",
                           source.dir.string());
    if (!memory || memory->sealed() || memory->bytes() != source.memory->bytes())
      co_return make_error("check the landing's memory",
                           "it must be an unsealed copy of the source snapshot's RAM",
                           source.dir.string());
    std::error_code ec;
    dir = fs::absolute(dir, ec).lexically_normal();
    if (::mkdir(dir.c_str(), 0700) != 0) {
      Error error = sys_error("create directory", dir.string());
      if (errno == EEXIST) error.detail = "it exists; a landing's dir is a new fork snapshot's";
      co_return error;
    }
    ForkLanding landing; // from here on, removes dir unless filled
    landing.snapshot = source;
    landing.snapshot.dir = dir;
    landing.snapshot.disk = dir / snapshot::kDiskName;
    landing.snapshot.memory = memory;
    landing.snapshot.memory_file = memory->path();
    landing.snapshot.spare = nullptr;
    landing.source_memory = source.memory;
    // Backed by the source's disk, as the overlay of every VM restored from
    // it, whose bytes replace these.
    if (auto made = write_qcow2_overlay(landing.snapshot.disk, fs::absolute(source.disk).string(),
                                        "qcow2", 0);
        !made)
      co_return std::move(made).error().with_context("creating the disk placeholder");
    // Root's and read-only to the VMs, like every snapshot's disk.
    if (::chmod(landing.snapshot.disk.c_str(), 0444) != 0)
      co_return sys_error("make read-only", landing.snapshot.disk.string());
    auto size = image_virtual_size(landing.snapshot.disk, "qcow2");
    if (!size) co_return std::move(size).error();
    landing.disk_bytes = *size;
    if (auto opened = memory->open_to_vms(); !opened) co_return std::move(opened).error();
    for (auto& config : children) {
      const fs::path overlay = VmPaths::of(config).overlay;
      auto prepared =
          co_await prepare_steps(executor, accel, landing.snapshot, std::move(config), true);
      if (!prepared) co_return std::move(prepared).error();
      landing.children.push_back(std::move(prepared.value()));
      landing.child_overlays.push_back(overlay);
    }
    co_return std::move(landing);
  }

  static asio::awaitable<Result<std::unique_ptr<Vm>>>
  restore_full_steps(asio::any_io_executor executor, Accel accel, Snapshot snapshot,
                     VmConfig config) {
    const auto started = Clock::now();
    const auto deadline = started + std::max(config.boot_timeout, kQmpTimeout);
    auto made_state = restored_state(executor, accel, snapshot, config, true);
    if (!made_state) co_return std::move(made_state).error();
    auto state = std::move(made_state.value());
    const VmPaths& paths = state->paths;
    if (auto made = make_vm_dir(config, paths); !made) co_return std::move(made).error();
    state->files_created = true;
    if (auto made = give_own_memory(*state); !made) co_return std::move(made).error();
    // The snapshot's disk becomes this VM's own; a failure puts it back
    // (before QEMU is killed and the VM's files go).
    // (VmState::remove_files does it, so also when QEMU exits on its own.)
    DestroyGuard guard{state};
    auto moved = move_file(snapshot.disk, paths.overlay);
    if (!moved) co_return std::move(moved).error().with_context("taking the snapshot's disk");
    // A copy is removed with the VM's files; the original stays.
    if (*moved == Moved::renamed) state->return_disk_to = snapshot.disk;

    // Named: g++ 12 miscompiles temporaries inside co_await.
    std::vector<std::string> argv = command_line(config, paths, accel, std::nullopt, &snapshot);
    auto started_qemu = co_await start_qemu(executor, state, std::move(argv), deadline);
    if (!started_qemu) co_return std::move(started_qemu).error();

    std::string loading = "load saved state";
    auto loaded = co_await load_incoming(state, snapshot, false, std::move(loading), deadline);
    if (!loaded) co_return std::move(loaded).error();
    // Loading checks every zero page of the stream against RAM, which
    // faults in the whole fresh file; punch those pages out again while the
    // VM is paused, so it costs only the memory it uses.
    {
      const fs::path memory = paths.memory_file;
      auto sparsify = [memory]() { return snapshot::punch_zero_pages(memory); };
      (void)co_await run_blocking(executor, std::move(sparsify));
    }
    std::string which = "resumed"; // named: g++ 12 miscompiles temporaries in co_await
    auto ready = co_await continue_to_agent(state, deadline, std::move(which));
    if (!ready) co_return std::move(ready).error();
    // Committed: a copied-in disk's original is spent like a renamed one.
    if (*moved == Moved::copied) ::unlink(snapshot.disk.c_str());
    state->return_disk_to.clear();
    guard.armed = false;
    co_return std::unique_ptr<Vm>(std::make_unique<QemuVm>(std::move(state)));
  }

  // Cheap checks that the snapshot fits this driver and this config, and its
  // files are there (open_snapshot checked their contents).
  static Result<void> check_restorable(const Snapshot& snapshot, Accel accel,
                                       const VmConfig& config) {
    if (auto fits = check_machine(snapshot, accel, config); !fits) return fits;
    if (snapshot.full_ram) {
      for (const auto& file : {snapshot.device_state(), snapshot.disk}) {
        if (::access(file.c_str(), R_OK) != 0)
          return sys_error("check snapshot file", file.string());
      }
      return snapshot.images.check();
    }
    if (!snapshot.memory || !snapshot.memory->sealed())
      return make_error("check snapshot memory",
                        "the snapshot's RAM is not loaded (open it with open_snapshot)",
                        snapshot.dir.string());
    if (snapshot.memory->bytes() != std::uint64_t{snapshot.memory_mib} << 20) {
      return make_error("check snapshot memory file",
                        "its size is not the snapshot's memory size; rebuild the snapshot",
                        snapshot.memory_file.string());
    }
    for (const auto& file : {snapshot.device_state(), snapshot.disk}) {
      if (::access(file.c_str(), R_OK) != 0) return sys_error("check snapshot file", file.string());
    }
    return snapshot.images.check();
  }

  // The part of check_restorable that a ForkLanding, whose files are not
  // filled in yet, can pass: the machine it describes fits this host and
  // this config.
  static Result<void> check_machine(const Snapshot& snapshot, Accel accel, const VmConfig& config) {
    if (snapshot.accel != accel) {
      return make_error("check snapshot",
                        std::string("it was saved under ") + to_string(snapshot.accel) +
                            " and this host runs " + to_string(accel) +
                            "; device state does not carry over between accelerators",
                        snapshot.dir.string());
    }
    if (snapshot.network != config.network.has_value()) {
      return make_error("check snapshot",
                        snapshot.network
                            ? "the snapshot's VM had a network device: attach a network"
                            : "the snapshot's VM had no network device: restore without one",
                        snapshot.dir.string());
    }
    return {};
  }

  static asio::awaitable<Result<std::unique_ptr<PreparedRestore>>>
  prepare_steps(asio::any_io_executor executor, Accel accel, Snapshot snapshot, VmConfig config,
                bool landing = false) {
    const auto started = Clock::now();
    const auto deadline = started + std::max(config.boot_timeout, kQmpTimeout);
    auto made_state = restored_state(executor, accel, snapshot, config, false, landing);
    if (!made_state) co_return std::move(made_state).error();
    auto state = std::move(made_state.value());
    state->restored = true;
    state->source_memory = snapshot.memory;
    state->source_spare = snapshot.spare;
    state->shared_source = snapshot.memory->path();
    const VmPaths& paths = state->paths;
    DestroyGuard guard{state};
    if (auto made = make_vm_dir(config, paths); !made) co_return std::move(made).error();
    state->files_created = true;

    // The snapshot's disk is a read-only backing file; this VM writes to its
    // own overlay. The device state does not name the image file, so the
    // overlay's path may differ from the saved VM's.
    auto backing = fs::absolute(snapshot.disk).string();
    auto overlay = create_overlay(backing, "qcow2", paths);
    if (!overlay) co_return std::move(overlay).error().with_context("creating the disk overlay");

    // Named: g++ 12 miscompiles temporaries inside co_await.
    std::vector<std::string> argv = command_line(config, paths, accel, std::nullopt, &snapshot);
    auto started_qemu = co_await start_qemu(executor, state, std::move(argv), deadline);
    if (!started_qemu) co_return std::move(started_qemu).error();

    RestoreTimes times;
    times.qemu_start =
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started);
    guard.armed = false;
    co_return std::unique_ptr<PreparedRestore>(
        std::make_unique<PreparedQemu>(std::move(state), std::move(snapshot), times));
  }

public:
  // PreparedQemu::finish's steps.
  static asio::awaitable<Result<std::unique_ptr<Vm>>>
  finish_steps(std::shared_ptr<VmState> state, Snapshot snapshot, RestoreTimes& times) {
    DestroyGuard guard{state};
    const auto started = Clock::now();
    const auto deadline = started + state->config.boot_timeout;
    std::string loading = "load device state";
    auto loaded = co_await load_incoming(state, snapshot, true, std::move(loading), deadline);
    if (!loaded) co_return std::move(loaded).error();
    const auto loaded_at = Clock::now();
    times.incoming = std::chrono::duration_cast<std::chrono::microseconds>(loaded_at - started);

    std::string which = "restored"; // named: g++ 12 miscompiles temporaries in co_await
    auto ready = co_await continue_to_agent(state, deadline, std::move(which));
    if (!ready) co_return std::move(ready).error();
    times.resume = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - loaded_at);
    guard.armed = false;
    co_return std::unique_ptr<Vm>(std::make_unique<QemuVm>(std::move(state)));
  }

private:
  // A boot: the checks, then an attempt and, if that one stalls, a second
  // from nothing with the rest of the boot timeout. A stall is a guest whose
  // agent has not started within boot_stall_timeout while QEMU runs: about
  // one cold boot in 125-300 under TCG livelocks in the kernel's patching
  // of its own code, on a translation QEMU 7.2 kept stale (RELIABILITY.md),
  // and booting it again costs seconds where waiting costs the whole
  // timeout and the sandbox.
  static asio::awaitable<Result<std::unique_ptr<Vm>>> boot_steps(asio::any_io_executor executor,
                                                                 Accel accel, VmConfig config) {
    const auto started = Clock::now();
    const auto deadline = started + config.boot_timeout;
    if (auto valid = check_id(config.id); !valid) co_return std::move(valid).error();
    if (auto images = config.images.check(); !images) {
      co_return std::move(images).error().with_context("checking guest images");
    }
    // A second attempt is made only with at least as long to run as the
    // first; without one, the first waits until the deadline and cannot stall.
    const bool may_retry = config.boot_stall_timeout > milliseconds(0) &&
                           started + 2 * config.boot_stall_timeout <= deadline;
    const auto stall_at = may_retry ? started + config.boot_stall_timeout : deadline;
    auto first = co_await boot_attempt(executor, accel, config, stall_at, deadline);
    if (!first.stall) co_return std::move(first.vm);
    boot_retries_so_far.fetch_add(1, std::memory_order_relaxed);
    log::warn("a guest's boot stalled (its agent did not start); booting it again",
              {{"vm", config.id},
               {"after_ms", config.boot_stall_timeout.count()},
               {"vcpus", first.stall->vcpus},
               {"console", first.stall->console}});
    auto second = co_await boot_attempt(executor, accel, config, deadline, deadline);
    if (!second.vm) {
      Error error = std::move(second.vm).error();
      error.detail += "; this was the second attempt: the first stalled after " +
                      std::to_string(config.boot_stall_timeout.count()) +
                      " ms (vCPUs: " + first.stall->vcpus + ")";
      co_return error;
    }
    log::info("a guest booted at the second attempt", {{"vm", config.id}});
    co_return std::move(second.vm);
  }

  // How a stalled boot attempt left its guest.
  struct Stall {
    std::string vcpus;   // vcpu_summary
    std::string console; // its tail
  };
  struct BootAttempt {
    Result<std::unique_ptr<Vm>> vm;
    // Set when the guest's agent had not started by the attempt's stall
    // deadline while QEMU ran; its QEMU and files are gone by then.
    std::optional<Stall> stall;
  };

  // One boot, one step after another. Any failure returns early; the
  // VmState's destroy() (run by the guard) leaves nothing behind. The agent
  // is waited for until `stall_at`; if that is before `deadline` and the
  // guest has not answered, the attempt ends as a stall.
  static asio::awaitable<BootAttempt> boot_attempt(asio::any_io_executor executor, Accel accel,
                                                   VmConfig config, Clock::time_point stall_at,
                                                   Clock::time_point deadline) {
    auto state = std::make_shared<VmState>(executor, config);
    const VmPaths& paths = state->paths;
    DestroyGuard guard{state};

    if (auto made = make_vm_dir(config, paths); !made) co_return failed(std::move(made).error());
    state->files_created = true;
    if (auto made = give_own_memory(*state); !made) co_return failed(std::move(made).error());

    // The base image is never written; every write lands in the overlay.
    auto backing = fs::absolute(config.images.base_disk).string();
    auto overlay = create_overlay(backing, "raw", paths, config.disk_mib);
    if (!overlay) {
      co_return failed(std::move(overlay).error().with_context("creating the disk overlay"));
    }

    const auto tsc_khz = accel == Accel::tcg ? host_tsc_khz() : std::nullopt;
    state->accel = accel;
    state->kernel_cmdline = kernel_cmdline(accel, tsc_khz); // its snapshots' manifests record it
    state->vcpu_sockets = vcpu_sockets_for(accel);
    // Named: g++ 12 miscompiles temporaries inside co_await.
    std::vector<std::string> argv = command_line(config, paths, accel, tsc_khz);
    auto started_qemu = co_await start_qemu(executor, state, std::move(argv), deadline);
    if (!started_qemu) co_return failed(std::move(started_qemu).error());

    std::string late = "the guest did not start its agent within the boot timeout of " +
                       std::to_string(config.boot_timeout.count()) + " ms";
    auto ready = co_await wait_for_agent(state, stall_at, std::move(late));
    if (!ready && stall_at < deadline && state->running()) {
      // Named: g++ 12 miscompiles temporaries inside co_await.
      Stall stall = co_await end_stalled(state);
      co_return BootAttempt{std::move(ready).error(), std::move(stall)};
    }
    if (!ready) co_return failed(std::move(ready).error());
    auto given_back = co_await give_back_boot_zeros(state);
    if (!given_back) co_return failed(std::move(given_back).error());
    guard.armed = false;
    co_return BootAttempt{std::unique_ptr<Vm>(std::make_unique<QemuVm>(std::move(state))), {}};
  }

  static BootAttempt failed(Error error) { return BootAttempt{std::move(error), {}}; }

  // Notes where a stalled guest's vCPUs are and what its console said, then
  // ends its QEMU and waits until its files and cgroup leaf are gone, so the
  // next attempt can make them again under the same name.
  static asio::awaitable<Stall> end_stalled(std::shared_ptr<VmState> state) {
    Stall stall;
    json::Object arguments;
    arguments["command-line"] = json::Value(std::string("info registers -a"));
    auto registers = co_await qmp_run(*state, "human-monitor-command", std::move(arguments));
    stall.vcpus = registers ? vcpu_summary(registers->as_string())
                            : "(not read: " + registers.error().message() + ")";
    std::string console = co_await state->read_console();
    stall.console = std::move(console);
    state->destroy();
    if (!co_await state->exited.wait(Clock::now() + std::chrono::seconds(10))) {
      log::warn("a stalled guest's QEMU had not exited 10 s after SIGKILL",
                {{"vm", state->config.id}});
    }
    co_return stall;
  }

  // The kernel zeroed all of its RAM at boot (init_on_free=1), so the
  // memory file holds every page; with the VM paused, the all-zero ones are
  // punched out again and it costs what the guest uses. Only a failure to
  // pause or resume fails the boot: the punch itself is best effort, the
  // content is the same either way.
  static asio::awaitable<Result<void>> give_back_boot_zeros(std::shared_ptr<VmState> state) {
    {
      json::Object no_arguments;
      auto stopped = co_await qmp_run(*state, "stop", std::move(no_arguments));
      if (!stopped) co_return std::move(stopped).error().with_context("pausing the booted VM");
    }
    const fs::path memory = state->paths.memory_file;
    auto punch = [memory]() { return snapshot::punch_zero_pages(memory); };
    auto punched = co_await run_blocking(state->executor, std::move(punch));
    if (!punched) {
      log::warn("a booted VM's zeroed RAM was not given back",
                {{"vm", state->config.id}, {"error", punched.error().message()}});
    }
    json::Object no_arguments;
    auto resumed = co_await qmp_run(*state, "cont", std::move(no_arguments));
    if (!resumed) co_return std::move(resumed).error().with_context("resuming the booted VM");
    co_return Result<void>{};
  }

  // A connection to QEMU broke: if QEMU is exiting, give the watcher a
  // moment to reap it, so the error can say how it went.
  // Loads `snapshot`'s state file into a QEMU started with -incoming defer
  // (x-ignore-shared as given) and waits until it is loaded. A failed load
  // makes QEMU exit; its account (with the log's tail, where QEMU says what
  // did not load) then becomes the error, named `operation`.
  static asio::awaitable<Result<void>> load_incoming(std::shared_ptr<VmState> state,
                                                     const Snapshot& snapshot, bool ignore_shared,
                                                     std::string operation,
                                                     Clock::time_point deadline) {
    auto file = open_state_file(snapshot.device_state());
    if (!file) co_return std::move(file).error();
    auto set = co_await set_ignore_shared(*state, ignore_shared);
    if (!set) co_return std::move(set).error();
    auto begun = co_await start_migration(*state, "migrate-incoming", std::move(file).value());
    if (!begun) co_return std::move(begun).error();
    auto loaded = co_await wait_migration(state, deadline);
    if (!loaded) {
      co_await settle(state);
      Error error = std::move(loaded).error();
      if (state->exited.is_set()) {
        error = make_error(operation, "QEMU refused it: " + state->exit_description,
                           snapshot.device_state().string());
      }
      co_return error;
    }
    co_return Result<void>{};
  }

  // Waits until the guest's agent answers, at the latest by `deadline`. If
  // the channel closed, QEMU is going down: the watcher's account of it
  // (waited for briefly) is the error. Otherwise the error says `late` and
  // carries the guest console's tail.
  static asio::awaitable<Result<void>>
  wait_for_agent(std::shared_ptr<VmState> state, Clock::time_point deadline, std::string late) {
    const auto remaining = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    auto ready =
        co_await state->agent->wait_ready(std::max(remaining, milliseconds(0)), kPingInterval);
    if (ready) co_return Result<void>{};
    if (is_channel_closed(ready.error())) {
      co_await state->exited.wait(Clock::now() + std::chrono::seconds(10));
      co_return died_or(*state, std::move(ready).error());
    }
    const std::string console = co_await state->read_console();
    Error error = std::move(ready).error();
    error.detail += "; " + late;
    if (!console.empty()) error.detail += "; guest console (tail):\n" + console;
    co_return error;
  }

  // Lets a guest whose state is loaded run (`cont`) and waits for its agent
  // by `deadline`; `which` ("resumed", "restored") names the guest in the
  // timeout's message.
  static asio::awaitable<Result<void>>
  continue_to_agent(std::shared_ptr<VmState> state, Clock::time_point deadline, std::string which) {
    json::Object no_arguments;
    auto resumed = co_await qmp_run(*state, "cont", std::move(no_arguments));
    if (!resumed) co_return std::move(resumed).error();
    std::string late = "the " + which + " guest's agent did not answer within " +
                       std::to_string(state->config.boot_timeout.count()) + " ms";
    co_return co_await wait_for_agent(state, deadline, std::move(late));
  }

  // Spawns QEMU with `argv` and connects its monitor and, before any device
  // state loads, the agent's socket (a restored guest's virtio-serial port
  // then finds its host connected as at the save and sees no hang-up).
  static asio::awaitable<Result<void>> start_qemu(asio::any_io_executor executor,
                                                  std::shared_ptr<VmState> state,
                                                  std::vector<std::string> argv,
                                                  Clock::time_point deadline) {
    const VmPaths& paths = state->paths;
    detail::SpawnOptions qemu_options;
    qemu_options.argv = std::move(argv);
    qemu_options.output = paths.log;
    if (state->config.network) qemu_options.pass_fds.push_back(state->config.network->tap_fd);
    const auto& memory = state->own_memory ? state->own_memory : state->source_memory;
    if (!memory) co_return make_error("start QEMU", "the VM has no memory file", state->config.id);
    qemu_options.pass_fds.push_back(memory->fd());
    qemu_options.working_dir = paths.dir;
    qemu_options.oom_score_adj = kQemuOomScoreAdj;
    // Held open until spawn returns: the child joins the cgroup through them.
    std::vector<UniqueFd> cgroup_procs;
    if (state->config.confinement) {
      auto confined = confine(*state, cgroup_procs);
      if (!confined) co_return std::move(confined).error().with_context("confining QEMU");
      qemu_options.jail = std::move(confined.value());
    }
    auto process = co_await detail::Process::spawn_async(executor, qemu_options);
    if (!process) co_return std::move(process).error().with_context("starting QEMU");
    state->process = std::move(process.value());
    asio::co_spawn(executor, state->watch_process(), asio::detached);

    // Named, not built in the call: see kNoStream in agent_client.cpp.
    std::function<bool()> qemu_gone = [state] { return !state->running(); };
    auto qmp = co_await QmpClient::connect(executor, paths.qmp_socket,
                                           std::min(deadline, Clock::now() + kQmpTimeout),
                                           std::move(qemu_gone));
    if (!qmp) co_await settle(state);
    if (!qmp)
      co_return died_or(*state,
                        std::move(qmp).error().with_context("connecting to QEMU's monitor"));
    state->qmp = std::move(qmp.value());
    state->watch_monitor();

    auto socket = co_await connect_agent(executor, paths.agent_socket);
    if (!socket) co_await settle(state);
    if (!socket) co_return died_or(*state, std::move(socket).error());
    state->agent = make_agent_client(std::move(socket.value()), state->config.agent_deadlines);
    co_return Result<void>{};
  }

  static asio::awaitable<void> settle(std::shared_ptr<VmState> state) {
    if (state->process) (void)co_await state->exited.wait(Clock::now() + std::chrono::seconds(2));
  }

  // When QEMU is gone, how it went says more than the error that noticed.
  static Error died_or(VmState& state, Error error) {
    if (!state.exited.is_set()) return error;
    return make_error("boot VM",
                      "the VM stopped before its agent answered: " + state.exit_description);
  }

  // The state of a VM to be restored from `snapshot`, after checking that
  // the snapshot is of the kind asked for (full RAM or not) and fits this
  // host; `config` takes the snapshot's images, size and vCPUs.
  // `landing`: a ForkLanding's snapshot, whose files the fork fills later.
  static Result<std::shared_ptr<VmState>> restored_state(asio::any_io_executor executor,
                                                         Accel accel, const Snapshot& snapshot,
                                                         VmConfig& config, bool full_ram,
                                                         bool landing = false) {
    if (auto valid = check_id(config.id); !valid) return std::move(valid).error();
    if (snapshot.full_ram != full_ram) {
      return make_error("check snapshot",
                        full_ram ? "it is not a full-RAM snapshot: start it with restore"
                                 : "it is a full-RAM snapshot (Vm::save_full): resume it with "
                                   "restore_full",
                        snapshot.dir.string());
    }
    auto fits = landing ? check_machine(snapshot, accel, config)
                        : check_restorable(snapshot, accel, config);
    if (!fits) return std::move(fits).error();
    config.images = snapshot.images;
    config.vcpus = snapshot.vcpus;
    config.memory_mib = snapshot.memory_mib;
    auto state = std::make_shared<VmState>(executor, config);
    state->accel = accel;
    state->kernel_cmdline = snapshot.kernel_cmdline;
    state->pit = snapshot.pit;
    state->vcpu_sockets = snapshot.vcpu_sockets;
    return state;
  }

  // Takes a uid and a cgroup leaf for the VM, hands it its own files and
  // returns the jail QEMU starts in (VmConfig::confinement).
  static Result<Jail> confine(VmState& state, std::vector<UniqueFd>& cgroup_procs) {
    const VmConfinement& confinement = *state.config.confinement;
    auto lease = confinement.uids->acquire();
    if (!lease) return std::move(lease).error();
    state.uid_lease = std::move(lease.value());
    const uid_t uid = state.uid_lease->uid();
    const gid_t gid = state.uid_lease->gid();
    if (confinement.cgroups) {
      const unsigned tb = state.accel == Accel::tcg ? state.config.tcg_translation_cache_mib : 0;
      auto limits = cgroup::Limits::for_qemu(state.config.memory_mib, state.config.vcpus, tb);
      // (See Limits::shared_fault_bytes: a guest filling its RAM was
      // OOM-killed at RAM + overhead.)
      if (state.source_memory) limits.shared_fault_bytes = limits.guest_ram_bytes;
      auto leaf = confinement.cgroups->create(state.config.id, limits);
      if (!leaf) return std::move(leaf).error();
      state.leaf = std::move(leaf.value());
      auto procs = state.leaf->open_procs();
      if (!procs) return std::move(procs).error();
      cgroup_procs = std::move(procs.value());
    }
    // Its own files become its uid's: the directory (sockets), the
    // disk overlay, and its own RAM. Everything else it sees is read-only.
    for (const auto& path : {state.paths.dir, state.paths.overlay}) {
      if (::chown(path.c_str(), uid, gid) != 0) return sys_error("chown", path.string());
    }
    if (::chmod(state.paths.overlay.c_str(), 0600) != 0)
      return sys_error("chmod", state.paths.overlay.string());
    if (state.own_memory) {
      if (auto given = state.own_memory->give_to(uid, gid); !given) return given.error();
    }
    VmJailInputs inputs;
    inputs.uid = uid;
    inputs.gid = gid;
    inputs.vm_dir = state.paths.dir;
    inputs.overlay = state.paths.overlay;
    inputs.images = state.config.images;
    inputs.accel = state.accel;
    for (const auto& fd : cgroup_procs)
      inputs.cgroup_procs_fds.push_back(fd.get());
    return vm_jail(inputs);
  }

  // A memory file of the VM's own, mapped share=on (a booted VM, or one
  // resumed from a full-RAM snapshot): what a fast save seals into a
  // snapshot.
  static Result<void> give_own_memory(VmState& state) {
    auto memory = GuestMemory::create("vesicle-" + state.config.id,
                                      std::uint64_t{state.config.memory_mib} << 20);
    if (!memory) return std::move(memory).error().with_context("creating the VM's memory");
    state.own_memory = std::move(memory.value());
    state.paths.memory_file = state.own_memory->path();
    return {};
  }

  // Creates the VM's own directory, after checking that its sockets' paths
  // fit a Unix socket address.
  static Result<void> make_vm_dir(const VmConfig& config, const VmPaths& paths) {
    if (paths.agent_socket.string().size() >= sizeof(sockaddr_un::sun_path)) {
      return make_error("check runtime dir",
                        "socket paths under it exceed the Unix socket limit of " +
                            std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                            " bytes; use a shorter runtime_dir",
                        paths.agent_socket.string());
    }
    std::error_code ec;
    fs::create_directories(config.runtime_dir, ec);
    if (ec) return Error{ec.value(), "create directory", config.runtime_dir.string(), {}, {}};
    if (::mkdir(paths.dir.c_str(), 0700) != 0) {
      Error error = sys_error("create directory", paths.dir.string());
      if (errno == EEXIST) {
        error.detail = "a VM with this id is running, or a crashed one left it behind; remove it "
                       "or choose another id";
      }
      return error;
    }
    return {};
  }

  // A qcow2 overlay of `backing` (of `format`) that this VM writes to, its
  // virtual size `disk_mib` (0: the backing file's); the backing file is
  // never written. Written in place (four clusters, microseconds), not by
  // spawning qemu-img: that was tens of ms of a core on every restore.
  static Result<void> create_overlay(const std::string& backing, const std::string& format,
                                     const VmPaths& paths, std::uint32_t disk_mib = 0) {
    return write_qcow2_overlay(paths.overlay, backing, format, std::uint64_t{disk_mib} << 20);
  }

  // QEMU created the socket before it served QMP; a few retries cover a
  // slow start anyway.
  static asio::awaitable<Result<Socket>> connect_agent(asio::any_io_executor executor,
                                                       fs::path path) {
    boost::system::error_code ec;
    for (int attempt = 0; attempt < 50; ++attempt) {
      Socket socket(executor);
      co_await socket.async_connect(asio::local::stream_protocol::endpoint(path.string()),
                                    asio::redirect_error(asio::use_awaitable, ec));
      if (!ec) co_return std::move(socket);
      asio::steady_timer pause(executor, milliseconds(20));
      co_await pause.async_wait(asio::use_awaitable);
    }
    co_return Error{ec.value(), "connect", path.string(), "the agent channel's socket", {}};
  }

  asio::any_io_executor executor_;
  Accel accel_;
};

asio::awaitable<Result<std::unique_ptr<Vm>>> PreparedQemu::finish() {
  auto state = std::exchange(state_, nullptr);
  if (!state) co_return make_error("restore VM", "this prepared restore was already finished");
  const std::string what = "restoring VM " + state->config.id + " from " + snapshot_.dir.string();
  auto kept = state;
  auto restored = co_await QemuDriver::finish_steps(std::move(state), snapshot_, times_);
  if (!restored) {
    // Gone (its files too) before the caller lets go of its network slot.
    co_await kept->exited.wait();
    co_return std::move(restored).error().with_context(what);
  }
  co_return std::move(restored);
}

} // namespace

} // namespace qemu

std::unique_ptr<Driver> make_qemu_driver(asio::any_io_executor executor) {
  return std::make_unique<qemu::QemuDriver>(std::move(executor));
}

} // namespace vesicle::vmm
