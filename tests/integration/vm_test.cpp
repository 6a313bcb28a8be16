// Integration tests of the QEMU driver and the agent client: real microVMs
// booted from the images in VESICLE_IMAGES_DIR, assertions made from inside
// the guest. Booting costs seconds under TCG, so each suite shares one VM
// where its tests do not interfere.
//
// Every VM id starts with "it<pid>-", so the leak check after each suite can
// tell this run's QEMU processes and files from anyone else's.
#include <signal.h>
#include <sys/stat.h>

#include <fstream>

#include <gtest/gtest.h>

#include "tests/vmm/test_support.hpp"
#include "tests/vmm/vm_world.hpp"
#include "vmm/qemu.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::test {
namespace {

using namespace std::chrono_literals;
using vmm::AgentClient;
using vmm::Vm;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// QEMU processes whose command line names a VM of this run.
// One suite's world (tests/vmm/vm_world.hpp), VMs named it<pid>-*.
struct World : VmWorld {
  World() : VmWorld("it") {}

  Result<std::unique_ptr<Vm>> boot(vmm::VmConfig c) { return io.run(driver->boot(std::move(c))); }
};

std::string images_hint() {
  return "guest images in " + images_dir().string() +
         " (build them with images/build.sh, or set VESICLE_IMAGES_DIR)";
}

bool images_present() {
  return vmm::GuestImages::in(images_dir()).check().ok();
}

// ---------------------------------------------------------------------------
// One VM shared by the tests that only use the REPL, bash and files.

class VmSession : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    if (!images_present()) return;
    world_ = new World;
    boot_shared_vm(*world_, world_->config("session"), vm_, boot_error_);
  }

  static void TearDownTestSuite() {
    end_shared_vm(world_, vm_, boot_error_, "after the session suite");
  }

  void SetUp() override {
    if (!world_) GTEST_SKIP() << "no " << images_hint();
    ASSERT_TRUE(vm_) << "boot failed: " << *boot_error_;
    ASSERT_TRUE(vm_->running()) << "the shared VM died: " << world_->io.run(vm_->wait_exit());
  }

  static AgentClient& agent() { return vm_->agent(); }
  static IoThread& io() { return world_->io; }

  static World* world_;
  static Vm* vm_;
  static std::string* boot_error_;
};

World* VmSession::world_ = nullptr;
Vm* VmSession::vm_ = nullptr;
std::string* VmSession::boot_error_ = nullptr;

TEST_F(VmSession, PythonGlobalsPersistAcrossCells) {
  auto set = io().run(python(agent(), "x = 42"));
  ASSERT_TRUE(set.exit) << set.exit.error().message();
  EXPECT_EQ(set.exit->exit_code(), 0);
  auto print = io().run(python(agent(), "print(x)"));
  ASSERT_TRUE(print.exit) << print.exit.error().message();
  EXPECT_EQ(print.output.out, "42\n");
  EXPECT_TRUE(print.output.results.empty());
}

TEST_F(VmSession, TrailingExpressionReturnsItsRepr) {
  auto r = io().run(python(agent(), "import json\nvalue = {'ok': True}\n'a' * 3"));
  ASSERT_TRUE(r.exit) << r.exit.error().message();
  EXPECT_EQ(r.output.results, std::vector<std::string>{"'aaa'"});
  EXPECT_EQ(r.output.out, "");
}

TEST_F(VmSession, ExceptionReturnsTracebackAndTheReplLivesOn) {
  auto r = io().run(python(agent(), "def f():\n    return 1 / 0\nf()"));
  ASSERT_TRUE(r.exit) << r.exit.error().message();
  EXPECT_EQ(r.exit->exit_code(), 1);
  EXPECT_FALSE(r.exit->repl_restarted());
  ASSERT_EQ(r.output.errors.size(), 1u);
  EXPECT_EQ(r.output.errors[0].name(), "ZeroDivisionError");
  EXPECT_NE(r.output.errors[0].traceback().find("return 1 / 0"), std::string::npos)
      << r.output.errors[0].traceback();
  auto next = io().run(python(agent(), "print('still here', f.__name__)"));
  ASSERT_TRUE(next.exit) << next.exit.error().message();
  EXPECT_EQ(next.output.out, "still here f\n");
}

TEST_F(VmSession, BashExitCodeStdoutAndStderr) {
  auto r = io().run(bash(agent(), "echo out; echo err >&2; exit 3"));
  ASSERT_TRUE(r.exit) << r.exit.error().message();
  EXPECT_EQ(r.exit->exit_code(), 3);
  EXPECT_EQ(r.exit->signal(), 0);
  EXPECT_EQ(r.output.out, "out\n");
  EXPECT_EQ(r.output.err, "err\n");
  auto killed = io().run(bash(agent(), "kill -TERM $$"));
  ASSERT_TRUE(killed.exit) << killed.exit.error().message();
  EXPECT_EQ(killed.exit->signal(), SIGTERM);
}

TEST_F(VmSession, TenMiBFileRoundTripsByteForByte) {
  const std::string data = random_bytes(10u << 20, 42);
  const std::string expected = sha256_hex(data);
  auto uploaded = io().run(upload(agent(), "/data/in/blob.bin", data));
  ASSERT_TRUE(uploaded) << uploaded.error().message();
  EXPECT_EQ(uploaded->size(), data.size());
  // The guest's own view of the bytes.
  auto summed = io().run(bash(agent(), "sha256sum /data/in/blob.bin | cut -d' ' -f1"));
  ASSERT_TRUE(summed.exit) << summed.exit.error().message();
  EXPECT_EQ(summed.output.out, expected + "\n");
  auto back = io().run(download(agent(), "/data/in/blob.bin"));
  ASSERT_TRUE(back.done) << back.done.error().message();
  EXPECT_EQ(back.done->size(), data.size());
  EXPECT_EQ(back.sha256, expected);
  EXPECT_TRUE(back.data == data);
}

TEST_F(VmSession, PathWithSpacesAndUnicode) {
  const std::string path = "/tmp/with space/naïve ☃ файл.txt";
  auto uploaded = io().run(upload(agent(), path, "hello, unicode\n"));
  ASSERT_TRUE(uploaded) << uploaded.error().message();
  auto listed = io().run(bash(agent(), "cat '/tmp/with space/naïve ☃ файл.txt'"));
  ASSERT_TRUE(listed.exit) << listed.exit.error().message();
  EXPECT_EQ(listed.output.out, "hello, unicode\n");
  auto back = io().run(download(agent(), path));
  ASSERT_TRUE(back.done) << back.done.error().message();
  EXPECT_EQ(back.data, "hello, unicode\n");
}

TEST_F(VmSession, InfiniteLoopTimesOutAndTheReplAnswersAfterwards) {
  auto before = io().run(python(agent(), "survivor = 'kept'"));
  ASSERT_TRUE(before.exit) << before.exit.error().message();
  const auto started = Clock::now();
  auto r = io().run(python(agent(), "while True: pass", 2000));
  const auto took = Clock::now() - started;
  ASSERT_TRUE(r.exit) << r.exit.error().message();
  EXPECT_TRUE(r.exit->timed_out());
  EXPECT_GE(took, 2s);
  EXPECT_LT(took, 20s);
  auto after = io().run(python(agent(), "print('after')"));
  ASSERT_TRUE(after.exit) << after.exit.error().message();
  EXPECT_EQ(after.output.out, "after\n");
  // An interrupted cell keeps the REPL's state; a restarted REPL says so.
  auto state = io().run(python(agent(), "print(globals().get('survivor'))"));
  ASSERT_TRUE(state.exit);
  EXPECT_EQ(state.output.out, r.exit->repl_restarted() ? "None\n" : "kept\n");
}

TEST_F(VmSession, OutputFloodIsTruncatedAndHostMemoryStaysFlat) {
  ExecReply r;
  r.output.keep_bytes = 0; // count, keep nothing: measure the client
  reset_peak_rss();
  const auto rss_before = rss_kib();
  guest::ExecPython request;
  request.set_code("import sys\nsys.stdout.write('x' * 50_000_000)\nsys.stdout.flush()");
  request.set_max_output_bytes(1u << 20);
  r.exit = io().run(agent().exec_python(request, r.output.sink()));
  const auto peak = peak_rss_kib();
  ASSERT_TRUE(r.exit) << r.exit.error().message();
  EXPECT_TRUE(r.exit->truncated());
  EXPECT_LE(r.output.out_bytes, std::size_t(1) << 20);
  EXPECT_GT(r.output.out_bytes, 0u);
  // Bound: 16 MiB over the baseline while 50 MB went through the guest.
  EXPECT_LT(peak - std::min(peak, rss_before), 16u << 10) << "KiB of peak RSS growth";
  RecordProperty("flood_peak_rss_growth_kib", static_cast<int>(peak - std::min(peak, rss_before)));
  auto after = io().run(python(agent(), "print('quiet')"));
  ASSERT_TRUE(after.exit);
  EXPECT_EQ(after.output.out, "quiet\n");
}

TEST_F(VmSession, BinaryOutputIsDeliveredExactly) {
  auto r = io().run(
      python(agent(), "import os, sys\nsys.stdout.flush()\nos.write(1, bytes(range(256)))"));
  ASSERT_TRUE(r.exit) << r.exit.error().message();
  std::string expected(256, '\0');
  for (int i = 0; i < 256; ++i)
    expected[i] = static_cast<char>(i);
  EXPECT_EQ(r.output.out, expected);
}

TEST_F(VmSession, FifoAndDeviceDownloadsFailFast) {
  auto made = io().run(bash(agent(), "rm -f /tmp/fifo && mkfifo /tmp/fifo"));
  ASSERT_TRUE(made.exit);
  ASSERT_EQ(made.exit->exit_code(), 0) << made.output.err;
  for (const char* path : {"/tmp/fifo", "/dev/zero", "/tmp"}) {
    const auto started = Clock::now();
    auto r = io().run(download(agent(), path));
    EXPECT_LT(Clock::now() - started, 5s) << path;
    ASSERT_FALSE(r.done) << path;
    EXPECT_FALSE(vmm::is_channel_closed(r.done.error())) << r.done.error().message();
    EXPECT_EQ(r.bytes, 0u) << path;
  }
  auto missing = io().run(download(agent(), "/no/such/file"));
  ASSERT_FALSE(missing.done);
  EXPECT_EQ(missing.done.error().errno_value, ENOENT) << missing.done.error().message();
}

TEST_F(VmSession, KillNineOfPidOneFromInsideIsIgnored) {
  // The kernel drops SIGKILL sent to a namespace's init from inside it.
  auto r = io().run(bash(agent(), "kill -9 1; echo sent $?"));
  ASSERT_TRUE(r.exit) << r.exit.error().message();
  EXPECT_EQ(r.output.out, "sent 0\n");
  auto pong = io().run(agent().ping(5s));
  ASSERT_TRUE(pong) << pong.error().message();
  auto cell = io().run(python(agent(), "print(x)"));
  ASSERT_TRUE(cell.exit) << cell.exit.error().message();
  EXPECT_TRUE(vm_->running());
}

// ---------------------------------------------------------------------------
// A VM whose guest kernel crashes under pending calls.

TEST(VmCrash, KernelCrashIsSeenAsADeadVm) {
  if (!images_present()) GTEST_SKIP() << "no " << images_hint();
  {
    World world;
    auto booted = world.boot(world.config("crash"));
    ASSERT_TRUE(booted) << booted.error().message();
    Vm* vm = booted.value().get();
    AgentClient& agent = vm->agent();

    struct Outcome {
      ExecReply sleeper;
      ExecReply trigger;
      Result<guest::Pong> later = make_error("ping", "not run");
      Clock::duration later_took{};
      std::string how;
      bool running_after = true;
    };
    auto outcome = world.io.run([](Vm& vm, AgentClient& agent) -> asio::awaitable<Outcome> {
      Outcome outcome;
      auto executor = co_await asio::this_coro::executor;
      int outstanding = 2;
      asio::steady_timer done(executor, Clock::time_point::max());
      asio::co_spawn(
          executor,
          [&]() -> asio::awaitable<void> {
            outcome.sleeper = co_await python(agent, "import time\ntime.sleep(600)");
            if (--outstanding == 0) done.cancel();
          },
          asio::detached);
      asio::steady_timer pause(executor, 500ms);
      co_await pause.async_wait(asio::use_awaitable);
      asio::co_spawn(
          executor,
          [&]() -> asio::awaitable<void> {
            outcome.trigger = co_await bash(agent, "echo c > /proc/sysrq-trigger");
            if (--outstanding == 0) done.cancel();
          },
          asio::detached);
      boost::system::error_code ec;
      co_await done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      outcome.how = co_await vm.wait_exit();
      outcome.running_after = vm.running();
      const auto started = Clock::now();
      outcome.later = co_await agent.ping(10s);
      outcome.later_took = Clock::now() - started;
      co_return outcome;
    }(*vm, agent));

    ASSERT_FALSE(outcome.sleeper.exit);
    EXPECT_TRUE(vmm::is_channel_closed(outcome.sleeper.exit.error()))
        << outcome.sleeper.exit.error().message();
    ASSERT_FALSE(outcome.trigger.exit);
    EXPECT_TRUE(vmm::is_channel_closed(outcome.trigger.exit.error()))
        << outcome.trigger.exit.error().message();
    EXPECT_FALSE(outcome.running_after);
    EXPECT_NE(outcome.how.find("reset the machine"), std::string::npos) << outcome.how;
    EXPECT_NE(outcome.how.find("Kernel panic"), std::string::npos) << outcome.how;
    ASSERT_FALSE(outcome.later);
    EXPECT_TRUE(vmm::is_channel_closed(outcome.later.error()));
    EXPECT_LT(outcome.later_took, 100ms);
    world.io.call_void([&] {
      vm->destroy();
      vm->destroy(); // idempotent
      booted.value().reset();
    });
    world.expect_clean("after the crash");
  }
}

// ---------------------------------------------------------------------------
// Lifecycle: shutdown and destroy free everything.

TEST(VmLifecycle, DestroyKillsAtOnceAndIsIdempotent) {
  if (!images_present()) GTEST_SKIP() << "no " << images_hint();
  World world;
  auto booted = world.boot(world.config("destroy"));
  ASSERT_TRUE(booted) << booted.error().message();
  auto& vm = *booted.value();
  const pid_t pid = vm.qemu_pid();
  EXPECT_EQ(world.leftover_qemu(), std::vector<pid_t>{pid});
  // Its RAM is a memfd hostd passed in, not a file anyone could open.
  EXPECT_TRUE(dir_entries(world.shm.path()).empty());
  bool maps_memfd = false;
  for (const auto& fd : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
    maps_memfd |=
        std::filesystem::read_symlink(fd.path()).string().rfind("/memfd:vesicle-", 0) == 0;
  EXPECT_TRUE(maps_memfd) << "QEMU holds no memfd:vesicle-* descriptor";
  const auto started = Clock::now();
  world.io.call_void([&] { vm.destroy(); });
  EXPECT_LT(Clock::now() - started, 2s);
  world.io.call_void([&] { vm.destroy(); });
  EXPECT_FALSE(world.io.call([&] { return vm.running(); }));
  const std::string how = world.io.run(vm.wait_exit());
  EXPECT_NE(how.find("destroyed by the host"), std::string::npos) << how;
  world.expect_clean("after destroy");
  world.io.call_void([&] { booted.value().reset(); });
}

TEST(VmLifecycle, DroppingTheVmHandleDestroysIt) {
  if (!images_present()) GTEST_SKIP() << "no " << images_hint();
  World world;
  auto booted = world.boot(world.config("dropped"));
  ASSERT_TRUE(booted) << booted.error().message();
  world.io.call_void([&] { booted.value().reset(); });
  world.expect_clean("after dropping the handle");
}

// ---------------------------------------------------------------------------
// The disk: its size (the overlay's virtual size) is the host's bound, and
// the guest's filesystem fills it, at boot and after it grew.

TEST(VmDisk, TheFilesystemFillsItsDiskAtBootAndAfterTheDiskGrows) {
  if (!images_present()) GTEST_SKIP() << "no " << images_hint();
  World world;
  const auto image_mib = static_cast<unsigned>(
      (fs::file_size(vmm::GuestImages::in(images_dir()).base_disk) + (1u << 20) - 1) >> 20);
  auto config = world.config("disk");
  config.disk_mib = image_mib + 128;
  auto booted = world.boot(config);
  ASSERT_TRUE(booted) << booted.error().message();
  auto& vm = *booted.value();
  auto fs_mib = [&] {
    auto df = world.io.run(bash(vm.agent(), "df -B1M --output=size / | tail -1"));
    return df.exit ? std::strtoull(df.output.out.c_str(), nullptr, 10) : 0;
  };
  // ext4's journal and tables take a few % of the disk.
  const auto at_boot = fs_mib();
  EXPECT_GT(at_boot, (image_mib + 128) * 9ull / 10);
  EXPECT_LE(at_boot, image_mib + 128ull);

  const std::uint64_t booted_bytes = std::uint64_t{image_mib + 128} << 20;
  auto same = world.io.run(vm.grow_disk(booted_bytes));
  ASSERT_TRUE(same) << same.error().message();
  EXPECT_FALSE(*same) << "the disk has that size already";
  auto smaller = world.io.run(vm.grow_disk(std::uint64_t{image_mib} << 20));
  ASSERT_FALSE(smaller);
  EXPECT_NE(smaller.error().message().find("never shrunk"), std::string::npos)
      << smaller.error().message();

  const std::uint64_t grown_bytes = std::uint64_t{image_mib + 512} << 20;
  auto grown = world.io.run(vm.grow_disk(grown_bytes));
  ASSERT_TRUE(grown) << grown.error().message();
  EXPECT_TRUE(*grown);
  std::string failure;
  auto sent = world.io.run(vm.agent().send_grow_root_fs(
      grown_bytes, [&failure](const Error& error) { failure = error.message(); }));
  ASSERT_TRUE(sent) << sent.error().message();
  // Sent after the request: the agent grew the filesystem before reading it.
  const auto resize_started = Clock::now();
  const auto after = fs_mib();
  const auto resize_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - resize_started);
  EXPECT_EQ(failure, "");
  std::fprintf(stderr,
               "disk %u MiB: filesystem %llu MiB; grown to %u MiB: %llu MiB (grow + df: %lld ms)\n",
               image_mib + 128, static_cast<unsigned long long>(at_boot), image_mib + 512,
               static_cast<unsigned long long>(after), static_cast<long long>(resize_ms.count()));
  EXPECT_GT(after, (image_mib + 512) * 9ull / 10);
  EXPECT_LE(after, image_mib + 512ull);
  world.io.call_void([&] { booted.value().reset(); });
  world.expect_clean("after the disk test");
}

// ---------------------------------------------------------------------------
// Boots that fail leave nothing behind and say why.

class BootFailure : public ::testing::Test {
protected:
  void SetUp() override {
    if (!images_present()) GTEST_SKIP() << "no " << images_hint();
  }
  // An images dir with the real files except where `replace` says.
  fs::path images_with(const std::map<std::string, std::string>& replace) {
    const fs::path dir = scratch_.path() / "images";
    fs::create_directories(dir);
    for (const char* name : {"vmlinuz", "initrd.img", "rootfs.ext4"}) {
      auto it = replace.find(name);
      if (it == replace.end()) {
        fs::create_symlink(fs::absolute(images_dir() / name), dir / name);
      } else if (it->second != "<missing>") {
        std::ofstream(dir / name, std::ios::binary) << it->second;
      }
    }
    return dir;
  }
  World world_;
  TempDir scratch_;
};

TEST_F(BootFailure, MissingKernelIsNamedAndNothingIsLeft) {
  auto config = world_.config("nokernel");
  config.images = vmm::GuestImages::in(images_with({{"vmlinuz", "<missing>"}}));
  auto booted = world_.boot(config);
  ASSERT_FALSE(booted);
  const std::string message = booted.error().message();
  EXPECT_NE(message.find((scratch_.path() / "images" / "vmlinuz").string()), std::string::npos)
      << message;
  EXPECT_NE(message.find("images/build.sh"), std::string::npos) << message;
  world_.expect_clean("after a boot without a kernel");
}

TEST_F(BootFailure, PanickingKernelGivesTheConsoleTailAndNothingIsLeft) {
  // No usable initramfs: the kernel cannot load virtio_blk, finds no root
  // device and panics.
  auto config = world_.config("panic");
  config.images = vmm::GuestImages::in(images_with({{"initrd.img", std::string(4096, 'j')}}));
  const auto started = Clock::now();
  auto booted = world_.boot(config);
  ASSERT_FALSE(booted);
  EXPECT_LT(Clock::now() - started, 60s);
  const std::string message = booted.error().message();
  EXPECT_NE(message.find("Kernel panic"), std::string::npos) << message;
  EXPECT_NE(message.find("guest console"), std::string::npos) << message;
  world_.expect_clean("after a kernel panic at boot");
}

// A QEMU that starts paused the first `paused_runs` times it is run (the
// guest never runs: the stall a hung kernel makes, on any machine), and as
// asked afterwards; `runs` counts its starts.
fs::path qemu_paused_at_first(const fs::path& dir, const std::string& qemu, int paused_runs) {
  const auto script_path = dir / "qemu-paused-at-first";
  std::ofstream script(script_path);
  script << "#!/bin/sh\nruns=$(cat '" << (dir / "runs").string() << "' 2>/dev/null || echo 0)\n"
         << "echo $((runs + 1)) > '" << (dir / "runs").string() << "'\n"
         << "if [ \"$runs\" -lt " << paused_runs << " ]; then exec " << qemu
         << " \"$@\" -S; fi\nexec " << qemu << " \"$@\"\n";
  script.close();
  fs::permissions(script_path, fs::perms::owner_all);
  return script_path;
}

int runs_of(const fs::path& dir) {
  std::ifstream in(dir / "runs");
  int runs = 0;
  in >> runs;
  return runs;
}

TEST_F(BootFailure, AgentSilentPastTheBootTimeoutIsAnErrorAndNothingIsLeft) {
  auto config = world_.config("slow");
  // QEMU starts paused (-S) and nothing resumes it: QEMU is up and its
  // monitor answers, but the guest never runs, so its agent stays silent
  // however fast this machine boots. (2.5 s leaves no room for a second
  // attempt after a stall: the one boot waits until its timeout.)
  config.qemu_binary = qemu_paused_at_first(scratch_.path(), config.qemu_binary, 1).string();
  config.boot_timeout = 2500ms;
  auto booted = world_.boot(config);
  ASSERT_FALSE(booted);
  const std::string message = booted.error().message();
  EXPECT_NE(message.find("boot timeout of 2500 ms"), std::string::npos) << message;
  world_.expect_clean("after a boot timeout");
}

TEST_F(BootFailure, AStalledBootIsEndedAndBootedAgainUnderTheSameName) {
  auto config = world_.config("stalled");
  config.qemu_binary = qemu_paused_at_first(scratch_.path(), config.qemu_binary, 1).string();
  config.boot_stall_timeout = 3s;
  const auto retries_before = vmm::qemu::boot_retries();
  const auto started = Clock::now();
  auto booted = world_.boot(config);
  ASSERT_TRUE(booted) << booted.error().message();
  EXPECT_GE(Clock::now() - started, 3s) << "the first, paused QEMU was waited for";
  EXPECT_EQ(runs_of(scratch_.path()), 2) << "one stalled attempt, then one that booted";
  EXPECT_EQ(vmm::qemu::boot_retries(), retries_before + 1);
  auto& vm = *booted.value();
  auto answered = world_.io.run(bash(vm.agent(), "echo second; cat /proc/cmdline"));
  ASSERT_TRUE(answered.exit) << answered.exit.error().message();
  EXPECT_EQ(answered.output.out.substr(0, 7), "second\n");
  world_.io.call_void([&] { booted.value().reset(); });
  world_.expect_clean("after a boot that stalled once");
}

TEST_F(BootFailure, ABootThatStallsTwiceFailsSayingSoAndNothingIsLeft) {
  auto config = world_.config("stalls");
  config.qemu_binary = qemu_paused_at_first(scratch_.path(), config.qemu_binary, 2).string();
  config.boot_stall_timeout = 1500ms;
  config.boot_timeout = 4000ms;
  const auto retries_before = vmm::qemu::boot_retries();
  auto booted = world_.boot(config);
  ASSERT_FALSE(booted);
  EXPECT_EQ(runs_of(scratch_.path()), 2) << "a second attempt, and no third";
  EXPECT_EQ(vmm::qemu::boot_retries(), retries_before + 1);
  const std::string message = booted.error().message();
  EXPECT_NE(message.find("boot timeout of 4000 ms"), std::string::npos) << message;
  // Paused from the start, each vCPU is still at the reset vector.
  EXPECT_NE(message.find("the first stalled after 1500 ms (vCPUs: CPU#0 EIP=0000fff0 CPL=0"),
            std::string::npos)
      << message;
  world_.expect_clean("after a boot that stalled twice");
}

TEST_F(BootFailure, AQemuBinaryThatIsNotThereIsNamedAndNothingIsLeft) {
  auto config = world_.config("noqemu");
  config.qemu_binary = (scratch_.path() / "no-such-qemu").string();
  auto booted = world_.boot(config);
  ASSERT_FALSE(booted);
  const std::string message = booted.error().message();
  EXPECT_NE(message.find("starting QEMU"), std::string::npos) << message;
  EXPECT_NE(message.find(config.qemu_binary), std::string::npos) << message;
  // Its directory (made before the spawn, with the disk overlay) went too.
  world_.expect_clean("after QEMU's binary was not found");
}

TEST_F(BootFailure, QemuThatCannotStartReportsItsOwnError) {
  auto config = world_.config("badmem");
  config.memory_mib = 1u << 30; // 1 PiB: QEMU refuses it
  auto booted = world_.boot(config);
  ASSERT_FALSE(booted);
  const std::string message = booted.error().message();
  EXPECT_NE(message.find("QEMU log"), std::string::npos) << message;
  world_.expect_clean("after QEMU refused to start");
}

} // namespace
} // namespace vesicle::test
