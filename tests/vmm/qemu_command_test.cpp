#include "vmm/qemu.hpp"

#include <algorithm>

#include <gtest/gtest.h>

namespace vesicle::vmm::qemu {
namespace {

bool has_pair(const std::vector<std::string>& args, const std::string& flag,
              const std::string& value) {
  for (std::size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == flag && args[i + 1] == value) return true;
  }
  return false;
}

VmConfig config() {
  VmConfig c;
  c.id = "vm-1";
  c.images = GuestImages::in("/images");
  c.runtime_dir = "/run/v";
  c.shm_dir = "/dev/shm";
  c.vcpus = 3;
  c.memory_mib = 768;
  c.tcg_translation_cache_mib = 32;
  return c;
}

TEST(QemuCommand, RestoreMapsTheSnapshotsRamPrivatelyAndWaitsForItsState) {
  Snapshot snapshot;
  snapshot.dir = "/snap/t";
  snapshot.memory_file = "/var/lib/vesicle/templates/t.mem"; // the copy on disk: not mapped
  snapshot.kernel_cmdline = "console=ttyS0 saved-line";
  auto c = config();
  c.id = "clone-1";
  const auto args = command_line(c, VmPaths::of(c), Accel::tcg, 2096000, &snapshot);
  // The snapshot's sealed memfd, passed as fd 3 (no network device).
  EXPECT_TRUE(has_pair(args, "-object",
                       "memory-backend-file,id=mem,size=768M,mem-path=/proc/self/fd/3,share=off"));
  // No kernel: a restored VM never boots, and QEMU would keep a 14 MiB
  // copy of it for fw_cfg in every VM.
  for (const char* boot_only : {"-kernel", "-initrd", "-append"})
    EXPECT_EQ(std::find(args.begin(), args.end(), boot_only), args.end()) << boot_only;
  EXPECT_TRUE(has_pair(args, "-incoming", "defer"));
  EXPECT_NE(std::find(args.begin(), args.end(), "-S"), args.end());
  EXPECT_TRUE(has_pair(args, "-drive",
                       "id=root,file=/run/v/clone-1/"
                       "overlay.qcow2,format=qcow2,if=none,discard=unmap,cache.direct=on,werror="
                       "enospc,rerror=report"));
  EXPECT_TRUE(has_pair(args, "-M", "microvm,x-option-roms=off,rtc=on,pit=off,memory-backend=mem"));
}

// A snapshot whose RAM is a memfd in /dev/shm, as a template's or a fork's.
Snapshot in_memory_snapshot() {
  Snapshot snapshot;
  snapshot.dir = "/snap/t";
  snapshot.memory_file = "/dev/shm/t.mem";
  return snapshot;
}

// The command line of a VM restored from `snapshot`.
std::vector<std::string> restored_from(const Snapshot& snapshot, Accel accel) {
  const auto c = config();
  return command_line(c, VmPaths::of(c), accel, std::nullopt, &snapshot);
}

// A snapshot of a machine that had the legacy PIT (an older hostd's) loads
// only into a machine that has one.
TEST(QemuCommand, ASnapshotWithThePitIsRestoredWithIt) {
  Snapshot snapshot = in_memory_snapshot();
  snapshot.pit = true;
  const std::string machine = "microvm,x-option-roms=off,rtc=on,memory-backend=mem";
  EXPECT_TRUE(has_pair(restored_from(snapshot, Accel::tcg), "-M", machine));
  snapshot.full_ram = true;
  EXPECT_TRUE(has_pair(restored_from(snapshot, Accel::kvm), "-M", machine));
}

// A VM restored from a snapshot gets the vCPU topology the snapshot's
// machine booted with, whatever a boot would use now: an older snapshot's
// vCPUs were cores of one socket.
TEST(QemuCommand, ARestoreKeepsTheSnapshotsVcpuTopology) {
  Snapshot cores = in_memory_snapshot();
  EXPECT_TRUE(has_pair(restored_from(cores, Accel::tcg), "-smp", "3"));
  Snapshot sockets = in_memory_snapshot();
  sockets.vcpu_sockets = true;
  EXPECT_TRUE(has_pair(restored_from(sockets, Accel::tcg), "-smp", "3,sockets=3"));
  sockets.full_ram = true; // a Space's
  EXPECT_TRUE(has_pair(restored_from(sockets, Accel::kvm), "-smp", "3,sockets=3"));
}

// QEMU's seccomp filter forbids spawning, so no argument may ask for a
// process (exec: migrations); saves and restores pass files instead.
TEST(QemuCommand, EveryVmRunsUnderQemusSeccompFilterAndSpawnsNothing) {
  Snapshot snapshot = in_memory_snapshot();
  auto c = config();
  const auto booted = command_line(c, VmPaths::of(c), Accel::tcg, 2096000);
  const auto restored = command_line(c, VmPaths::of(c), Accel::tcg, 2096000, &snapshot);
  snapshot.full_ram = true;
  const auto resumed = command_line(c, VmPaths::of(c), Accel::kvm, std::nullopt, &snapshot);
  for (const auto* args : {&booted, &restored, &resumed}) {
    EXPECT_TRUE(
        has_pair(*args, "-sandbox",
                 "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"));
    EXPECT_EQ(std::count(args->begin(), args->end(), "-sandbox"), 1);
    for (const auto& arg : *args)
      EXPECT_EQ(arg.find("exec:"), std::string::npos) << arg;
  }
  EXPECT_TRUE(has_pair(restored, "-incoming", "defer"));
}

TEST(QemuCommand, TcgCommandLine) {
  const auto c = config();
  const auto paths = VmPaths::of(c);
  const auto args = command_line(c, paths, Accel::tcg, 2096000);
  EXPECT_EQ(args.front(), "qemu-system-x86_64");
  // No legacy PIT: nothing in the guest uses it, and QEMU woke 36 times a
  // second for it in every idle VM.
  EXPECT_TRUE(has_pair(args, "-M", "microvm,x-option-roms=off,rtc=on,pit=off,memory-backend=mem"));
  // Every vCPU on one host thread (VmConfig::tcg_single_thread).
  EXPECT_TRUE(has_pair(args, "-accel", "tcg,tb-size=32,thread=single"));
  EXPECT_TRUE(has_pair(args, "-cpu", "max,-erms"));
  // Each vCPU a socket of its own under TCG (vcpu_sockets_for).
  EXPECT_TRUE(has_pair(args, "-smp", "3,sockets=3"));
  EXPECT_TRUE(has_pair(args, "-m", "768"));
  EXPECT_TRUE(has_pair(args, "-object",
                       "memory-backend-file,id=mem,size=768M,mem-path=/proc/self/fd/3,share=on"));
  EXPECT_TRUE(has_pair(args, "-kernel", "/images/vmlinuz"));
  EXPECT_TRUE(
      has_pair(args, "-append",
               "console=ttyS0 root=/dev/vda rw loglevel=5 panic=-1 reboot=t init_on_free=1 "
               "sysctl.vm.compaction_proactiveness=0 cryptomgr.notests=1 tsc_early_khz=2096000 "
               "tsc=reliable"));
  EXPECT_TRUE(has_pair(args, "-drive",
                       "id=root,file=/run/v/vm-1/"
                       "overlay.qcow2,format=qcow2,if=none,discard=unmap,cache.direct=on,werror="
                       "enospc,rerror=report"));
  EXPECT_TRUE(
      has_pair(args, "-chardev", "socket,id=agent,path=/run/v/vm-1/agent.sock,server=on,wait=off"));
  EXPECT_TRUE(has_pair(args, "-device", "virtserialport,chardev=agent,name=agent"));
  EXPECT_TRUE(has_pair(args, "-chardev", "ringbuf,id=console,size=65536"));
  EXPECT_TRUE(has_pair(args, "-serial", "chardev:console"));
  EXPECT_TRUE(has_pair(args, "-qmp", "unix:/run/v/vm-1/qmp.sock,server=on,wait=off"));
  EXPECT_TRUE(has_pair(args, "-name", "vesicle-vm-1,process=vesicle-vm-1"));
  for (const char* flag :
       {"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-no-shutdown"}) {
    EXPECT_NE(std::find(args.begin(), args.end(), flag), args.end()) << flag;
  }
}

TEST(QemuCommand, TcgWithAThreadPerVcpuWhenAsked) {
  auto c = config();
  c.tcg_single_thread = false;
  const auto args = command_line(c, VmPaths::of(c), Accel::tcg, 2096000);
  EXPECT_TRUE(has_pair(args, "-accel", "tcg,tb-size=32,thread=multi"));
  // KVM has no such choice: a vCPU is a host thread there.
  const auto kvm = command_line(c, VmPaths::of(c), Accel::kvm, 2096000);
  EXPECT_TRUE(has_pair(kvm, "-accel", "kvm"));
}

TEST(QemuCommand, KvmUsesHostCpuAndNoTscPinning) {
  const auto c = config();
  const auto args = command_line(c, VmPaths::of(c), Accel::kvm, 2096000);
  EXPECT_TRUE(has_pair(args, "-accel", "kvm"));
  EXPECT_TRUE(has_pair(args, "-cpu", "host"));
  EXPECT_TRUE(has_pair(args, "-smp", "3"));
  EXPECT_TRUE(has_pair(args, "-append",
                       "console=ttyS0 root=/dev/vda rw loglevel=5 panic=-1 reboot=t init_on_free=1 "
                       "sysctl.vm.compaction_proactiveness=0 cryptomgr.notests=1"));
}

// A template's recorded command line against the one a boot would use now:
// only the TSC pinning, which follows the host, may differ.
TEST(QemuCommand, SameBootParametersLeavesOutTheTscPinningOnly) {
  const std::string now = kernel_cmdline(Accel::tcg, std::nullopt);
  EXPECT_TRUE(same_boot_parameters(now, kernel_cmdline(Accel::tcg, 2096000)));
  EXPECT_TRUE(same_boot_parameters(now + " tsc_early_khz=1800000 tsc=reliable", now));
  EXPECT_TRUE(same_boot_parameters(now, kernel_cmdline(Accel::kvm, std::nullopt)));
  // A template an older hostd booted without init_on_free.
  EXPECT_FALSE(same_boot_parameters(
      "console=ttyS0 root=/dev/vda rw quiet panic=-1 reboot=t tsc_early_khz=2096000 tsc=reliable",
      now));
  EXPECT_FALSE(same_boot_parameters(now + " mitigations=off", now));
  EXPECT_FALSE(same_boot_parameters("", now));
  EXPECT_TRUE(same_boot_parameters("a  b", "a b")) << "spacing is not a parameter";
}

TEST(QemuCommand, NetworkDeviceOnlyWithAnAttachment) {
  auto c = config();
  auto args = command_line(c, VmPaths::of(c), Accel::tcg, std::nullopt);
  EXPECT_EQ(std::find(args.begin(), args.end(), "-netdev"), args.end());
  c.network = NetworkAttachment{.tap_fd = 17, .mac = "02:76:73:00:00:02"};
  args = command_line(c, VmPaths::of(c), Accel::tcg, std::nullopt);
  EXPECT_TRUE(has_pair(args, "-netdev", "tap,id=net0,fd=3"));
  EXPECT_TRUE(has_pair(args, "-device", "virtio-net-device,netdev=net0,mac=02:76:73:00:00:02"));
  // The memory file's descriptor comes after the tap's.
  EXPECT_EQ(memory_fd(c), 4);
  EXPECT_TRUE(has_pair(args, "-object",
                       "memory-backend-file,id=mem,size=768M,mem-path=/proc/self/fd/4,share=on"));
}

TEST(QemuCommand, IdsAreChecked) {
  EXPECT_TRUE(check_id("sb-0123-abc"));
  for (const char* bad : {"", "UPPER", "a/b", "a b", "../x", "a_b"})
    EXPECT_FALSE(check_id(bad)) << bad;
  EXPECT_FALSE(check_id(std::string(49, 'a')));
}

TEST(QemuCommand, HostTscFrequencyIsPlausible) {
  const auto khz = host_tsc_khz();
  if (!khz) GTEST_SKIP() << "no invariant TSC on this host";
  EXPECT_GT(*khz, 500'000u);
  EXPECT_LT(*khz, 10'000'000u);
  EXPECT_EQ(host_tsc_khz(), khz) << "measured once";
}

TEST(QemuConsole, TailKeepsWholeLinesAndDropsControlCharacters) {
  EXPECT_EQ(console_tail("a\r\nb\x1b[0mc\n\n"), "a\nb[0mc");
  std::string long_text;
  for (int i = 0; i < 1000; ++i)
    long_text += "line " + std::to_string(i) + "\n";
  const auto tail = console_tail(long_text, 100);
  EXPECT_LE(tail.size(), 100u);
  EXPECT_EQ(tail.substr(0, 5), "line ");
  EXPECT_EQ(tail.substr(tail.size() - 8), "line 999");
}

TEST(QemuConsole, VcpuSummaryKeepsEachVcpusPlaceAndHaltFlag) {
  // As QEMU 7.2's `info registers -a` prints it (a stalled boot's, cut short).
  const std::string registers =
      "\r\nCPU#0\r\n"
      "RAX=00000000fffedb08 RBX=0000000000000000 RCX=c0000000ffffefff RDX=00000000fffedb08\r\n"
      "RIP=ffffffff84c02f9f RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\n"
      "CR0=80050033 CR2=ff21a0ae32400000 CR3=0000000031610000 CR4=000110b0\r\n"
      "\r\nCPU#1\r\n"
      "RIP=ffffffff84c0301e RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\n";
  EXPECT_EQ(vcpu_summary(registers), "CPU#0 RIP=ffffffff84c02f9f CPL=0 HLT=0; "
                                     "CPU#1 RIP=ffffffff84c0301e CPL=0 HLT=1");
  EXPECT_EQ(
      vcpu_summary("CPU#0\r\nEIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\n"),
      "CPU#0 EIP=0000fff0 CPL=0 HLT=0");
  EXPECT_EQ(vcpu_summary(""), "");
  EXPECT_EQ(vcpu_summary("RIP=1 before any CPU# line is not a vCPU's"), "");
}

TEST(QemuConsole, Base64Decodes) {
  EXPECT_EQ(base64_decode("aGVsbG8gd29ybGQ="), "hello world");
  EXPECT_EQ(base64_decode("AP8A"), std::string("\x00\xff\x00", 3));
  EXPECT_EQ(base64_decode(""), "");
}

TEST(GuestImagesCheck, NamesTheMissingFile) {
  auto images = GuestImages::in("/nonexistent-vesicle-images");
  auto checked = images.check();
  ASSERT_FALSE(checked);
  EXPECT_NE(checked.error().message().find("/nonexistent-vesicle-images/vmlinuz"),
            std::string::npos);
  EXPECT_EQ(checked.error().errno_value, ENOENT);
}

} // namespace
} // namespace vesicle::vmm::qemu
