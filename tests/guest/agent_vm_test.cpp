// The agent as PID 1 of a real microVM (QEMU, TCG here): boots the images
// named by VESICLE_IMAGES (default: <build>/images, see images/build.sh),
// then checks from inside the guest what only PID 1 can get right. One VM
// for the suite: under TCG a boot takes seconds.
#include <cstdlib>
#include <memory>
#include <thread>

#include <gtest/gtest.h>

#include "tests/guest/agent_harness.hpp"

namespace vesicle::test {
namespace {

std::string images_dir() {
  if (const char* dir = std::getenv("VESICLE_IMAGES"); dir != nullptr && *dir != '\0') return dir;
  return VESICLE_DEFAULT_IMAGES;
}

class AgentVm : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    vm_ = std::make_unique<VmAgent>(images_dir());
    const auto start = std::chrono::steady_clock::now();
    ASSERT_TRUE(vm_->connect()) << "cannot connect to the agent socket; console:\n"
                                << vm_->console_log();
    ready_ = vm_->wait_ready(120s);
    const auto took = std::chrono::steady_clock::now() - start;
    std::printf("agent answered %lld ms after QEMU started\n",
                static_cast<long long>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
    std::fflush(stdout);
  }
  static void TearDownTestSuite() { vm_.reset(); }

  void SetUp() override {
    ASSERT_TRUE(vm_);
    ASSERT_TRUE(ready_) << "the agent never answered a ping; console:\n" << vm_->console_log();
  }

  static std::unique_ptr<VmAgent> vm_;
  static bool ready_;
};

std::unique_ptr<VmAgent> AgentVm::vm_;
bool AgentVm::ready_ = false;

TEST_F(AgentVm, InfoDescribesTheMachine) {
  guest::Request info;
  info.set_id(vm_->next_id());
  info.mutable_info();
  vm_->send(info);
  auto events = vm_->collect(info.id(), 30s);
  ASSERT_FALSE(events.empty());
  ASSERT_TRUE(events.back().has_info());
  const auto& i = events.back().info();
  EXPECT_EQ(i.hostname(), "vesicle");
  EXPECT_FALSE(i.kernel().empty());
  EXPECT_GT(i.mem_total_bytes(), 256u << 20);
  EXPECT_LE(i.mem_total_bytes(), 512u << 20);
  // The root filesystem fills the image (sized to its files, ~700 MiB) or
  // the disk it was grown to.
  EXPECT_GT(i.disk_total_bytes(), 500u << 20);
  EXPECT_GT(i.repl_pid(), 1u);
}

TEST_F(AgentVm, AgentIsPidOneAndSetUpTheMachine) {
  auto outcome = vm_->bash(
      "cat /proc/1/cmdline | tr '\\0' ' '; echo; cat /proc/1/oom_score_adj; "
      "for m in /proc /sys /dev /dev/pts /dev/shm /tmp /run; do "
      "  awk -v m=$m '$2==m {print m, $3}' /proc/mounts | head -1; done; "
      "cat /sys/class/net/lo/flags; hostname; echo $HOME $LANG; ls -l /dev/fd | cut -c1; "
      "cat /proc/self/oom_score_adj; cat /proc/1/cgroup /proc/self/cgroup; "
      "cat /proc/$(cat /sys/fs/cgroup/workload/repl/cgroup.procs)/cmdline | tr '\\0' ' '; echo; "
      "test $(cat /sys/fs/cgroup/workload/pids.max) -ge 512 && "
      "test $(cat /sys/fs/cgroup/workload/memory.max) -lt $(( $(awk '/MemTotal/ {print $2}' "
      "/proc/meminfo) * 1024 )) && echo limits-ok",
      {}, "", 0, 0, 60s);
  ASSERT_TRUE(outcome.exit) << outcome.err;
  EXPECT_EQ(outcome.exit->exit_code(), 0) << outcome.err;
  EXPECT_EQ(outcome.out, "/usr/lib/vesicle/agent \n"
                         "-1000\n"
                         "/proc proc\n"
                         "/sys sysfs\n"
                         "/dev devtmpfs\n"
                         "/dev/pts devpts\n"
                         "/dev/shm tmpfs\n"
                         "/tmp tmpfs\n"
                         "/run tmpfs\n"
                         "0x9\n"
                         "vesicle\n"
                         "/root C.UTF-8\n"
                         "l\n"
                         "500\n"
                         "0::/\n"
                         "0::/workload/commands\n"
                         "/usr/bin/python3 -u /usr/lib/vesicle/repl.py \n"
                         "limits-ok\n");
}

TEST_F(AgentVm, PythonReplWithTheImagePackages) {
  ASSERT_TRUE(vm_->python("x = 42", 0, 0, 60s).exit);
  auto printed = vm_->python("print(x)", 0, 0, 60s);
  EXPECT_EQ(printed.out, "42\n");
  auto numpy = vm_->python("import numpy, pandas\nint(numpy.arange(4).sum())", 0, 0, 120s);
  ASSERT_TRUE(numpy.result) << (numpy.error ? numpy.error->traceback() : numpy.err);
  EXPECT_EQ(*numpy.result, "6");
  auto spin = vm_->python("while True: pass", 2000, 0, 60s);
  ASSERT_TRUE(spin.exit);
  EXPECT_TRUE(spin.exit->timed_out());
  EXPECT_FALSE(spin.exit->repl_restarted());
  EXPECT_EQ(vm_->python("x", 0, 0, 60s).result.value_or(""), "42");
}

TEST_F(AgentVm, MatplotlibFiguresAndDataFramesAreDisplays) {
  // The REPL imports matplotlib only when a cell does, and draws with Agg.
  auto lazy = vm_->python("import sys, os\n('matplotlib' in sys.modules, os.environ['MPLBACKEND'])",
                          0, 0, 60s);
  EXPECT_EQ(lazy.result.value_or(""), "(False, 'Agg')");
  auto chart =
      vm_->python("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()", 0, 0, 180s);
  ASSERT_TRUE(chart.exit);
  ASSERT_FALSE(chart.error) << chart.error->traceback();
  EXPECT_EQ(chart.err, "");
  ASSERT_EQ(chart.displays.size(), 1u);
  const auto& png = chart.displays[0].data().at("image/png");
  ASSERT_GT(png.size(), 24u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  EXPECT_NE(png.substr(16, 4), std::string(4, '\0')); // width
  EXPECT_NE(png.substr(20, 4), std::string(4, '\0')); // height
  EXPECT_FALSE(chart.displays[0].main_result());

  auto table = vm_->python("import pandas as pd\npd.DataFrame({'a': [1, 2]})", 0, 0, 120s);
  ASSERT_EQ(table.displays.size(), 1u) << table.err;
  EXPECT_TRUE(table.displays[0].main_result());
  EXPECT_NE(table.displays[0].data().at("text/html").find("<table"), std::string::npos);
  EXPECT_EQ(table.displays[0].data().at("text/plain"), table.result.value_or("?"));
}

TEST_F(AgentVm, LoopbackNetworkingWorks) {
  auto outcome = vm_->python("import socket\n"
                             "server = socket.socket()\n"
                             "server.bind(('127.0.0.1', 0))\n"
                             "server.listen()\n"
                             "client = socket.create_connection(server.getsockname())\n"
                             "peer, _ = server.accept()\n"
                             "client.sendall(b'ping')\n"
                             "peer.recv(4)",
                             0, 0, 60s);
  ASSERT_TRUE(outcome.result) << (outcome.error ? outcome.error->traceback() : outcome.err);
  EXPECT_EQ(*outcome.result, "b'ping'");
}

TEST_F(AgentVm, OrphansAreReapedAndDaemonsDoNotHang) {
  const auto start = std::chrono::steady_clock::now();
  auto daemon =
      vm_->bash("sleep 300 & nohup sleep 300 >/dev/null 2>&1 & echo started", {}, "", 0, 0, 60s);
  ASSERT_TRUE(daemon.exit);
  EXPECT_EQ(daemon.out, "started\n");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
  // Grandchildren whose parent is gone become PID 1's; it must reap them.
  auto zombies = vm_->bash("for i in 1 2 3 4 5; do (sleep 0.1 &); done; sleep 2; "
                           "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l",
                           {}, "", 0, 0, 60s);
  ASSERT_TRUE(zombies.exit);
  EXPECT_EQ(zombies.out, "0\n");
}

TEST_F(AgentVm, FilesRoundTripThroughTheVirtioPort) {
  std::string data(3u << 20, '\0');
  for (std::size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<char>((i * 7919) >> 3);
  auto written = vm_->write_file("/root/uploads/blob.bin", data, 0640, true);
  ASSERT_TRUE(written.has_done()) << written.failure().message();
  EXPECT_EQ(written.done().size(), data.size());
  std::string back;
  auto read = vm_->read_file("/root/uploads/blob.bin", back);
  ASSERT_TRUE(read.has_done()) << read.failure().message();
  EXPECT_EQ(read.done().mode(), 0640u);
  EXPECT_TRUE(back == data);
  std::string none;
  auto device = vm_->read_file("/dev/zero", none);
  ASSERT_TRUE(device.has_failure());
  EXPECT_EQ(device.failure().code(), guest::Failure::NOT_A_FILE);
}

TEST_F(AgentVm, HostReconnectKeepsTheMachineAndItsRepl) {
  ASSERT_TRUE(vm_->python("kept = 'across reconnects'", 0, 0, 60s).exit);
  vm_->close_channel();
  std::this_thread::sleep_for(500ms);
  ASSERT_TRUE(vm_->connect());
  ASSERT_TRUE(vm_->wait_ready(30s)) << vm_->console_log();
  EXPECT_EQ(vm_->python("kept", 0, 0, 60s).result.value_or(""), "'across reconnects'");
}

TEST_F(AgentVm, OversizedFrameMakesTheAgentReopenThePort) {
  vm_->send_raw(std::string("\xff\xff\xff\x7f", 4));
  std::this_thread::sleep_for(500ms);
  // The stream cannot be resynchronised; a new connection starts clean.
  vm_->close_channel();
  ASSERT_TRUE(vm_->connect());
  ASSERT_TRUE(vm_->wait_ready(30s)) << vm_->console_log();
  EXPECT_NE(vm_->console_log().find("reopening the port"), std::string::npos);
  EXPECT_EQ(vm_->python("kept", 0, 0, 60s).result.value_or(""), "'across reconnects'");
}

TEST_F(AgentVm, FullDiskIsNoSpaceAndLeavesNothingBehind) {
  auto mounted = vm_->bash("mkdir -p /mnt/tiny && mount -t tmpfs -o size=1m tmpfs /mnt/tiny && "
                           "echo old > /mnt/tiny/kept",
                           {}, "", 0, 0, 60s);
  ASSERT_EQ(mounted.exit->exit_code(), 0) << mounted.err;
  auto written = vm_->write_file("/mnt/tiny/kept", std::string(2u << 20, 'z'));
  ASSERT_TRUE(written.has_failure());
  EXPECT_EQ(written.failure().code(), guest::Failure::NO_SPACE) << written.failure().message();
  auto left = vm_->bash("ls -A /mnt/tiny; cat /mnt/tiny/kept; umount /mnt/tiny", {}, "", 0, 0, 60s);
  EXPECT_EQ(left.out, "kept\nold\n");
}

TEST_F(AgentVm, MemoryBombTakesTheReplNotTheAgent) {
  ASSERT_TRUE(vm_->python("before = 1", 0, 0, 60s).exit);
  auto bomb =
      vm_->python("hog = []\nwhile True:\n    hog.append(b'x' * (32 << 20))", 120000, 0, 180s);
  ASSERT_TRUE(bomb.exit) << "the cell never ended";
  ASSERT_TRUE(bomb.error);
  // Either Python saw the allocation fail or the OOM killer took the REPL;
  // both must end the cell, and the agent answers on.
  if (bomb.exit->repl_restarted()) {
    EXPECT_EQ(bomb.error->name(), "ReplRestarted");
  } else {
    EXPECT_EQ(bomb.error->name(), "MemoryError");
    ASSERT_TRUE(vm_->python("del hog", 0, 0, 60s).exit);
  }
  ASSERT_TRUE(vm_->wait_ready(30s));
  EXPECT_EQ(vm_->python("6 * 7", 0, 0, 60s).result.value_or(""), "42");
  EXPECT_EQ(vm_->bash("cat /proc/1/oom_score_adj", {}, "", 0, 0, 60s).out, "-1000\n");
}

TEST_F(AgentVm, AgentAnswersThroughAForkBomb) {
  using Clock = std::chrono::steady_clock;
  const auto ms_since = [](Clock::time_point t) {
    return static_cast<long long>(
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
  };
  // The bomb backgrounds itself, so bash exits at once and the bomb lives on
  // like any daemon would; the workload cgroup bounds it.
  auto bomb = vm_->bash("echo $$; bomb() { bomb | bomb & }; bomb", {}, "", 0, 0, 60s);
  ASSERT_TRUE(bomb.exit);
  const int group = std::stoi(bomb.out);
  std::this_thread::sleep_for(5s);

  auto t = Clock::now();
  ASSERT_TRUE(vm_->wait_ready(20s)) << vm_->console_log();
  const long long ping_ms = ms_since(t);
  EXPECT_LT(ping_ms, 5000);
  t = Clock::now();
  EXPECT_EQ(vm_->python("6 * 7", 0, 0, 60s).result.value_or(""), "42");
  const long long python_ms = ms_since(t);
  // Bash commands share their cgroup with the bomb and may not even start;
  // their timeout still ends them.
  t = Clock::now();
  auto slow = vm_->bash("echo hi", {}, "", 10000, 0, 60s);
  const long long bash_ms = ms_since(t);
  ASSERT_TRUE(slow.exit) << "a command with a timeout never ended";
  std::printf("during the bomb: ping %lld ms, python cell %lld ms, bash %lld ms (%s)\n", ping_ms,
              python_ms, bash_ms, slow.exit->timed_out() ? "timed out" : "ran");

  // The REPL, in its own cgroup, can clean up.
  t = Clock::now();
  auto killed = vm_->python(
      "import os, signal\nos.killpg(" + std::to_string(group) + ", signal.SIGKILL)", 0, 0, 60s);
  ASSERT_TRUE(killed.exit);
  EXPECT_FALSE(killed.error) << killed.error->traceback();
  auto count =
      vm_->bash("sleep 3; grep -l '^Name:.*bash' /proc/[0-9]*/status | wc -l", {}, "", 0, 0, 120s);
  ASSERT_TRUE(count.exit) << count.err << "\nconsole:\n" << vm_->console_log();
  std::printf("after the kill, bash ran again %lld ms later\n", ms_since(t));
  // The counting bash itself and its pipeline's subshell.
  EXPECT_LE(std::stoi(count.out), 3) << count.out;
}

// Last: it powers the VM off.
TEST_F(AgentVm, ShutdownPowersOff) {
  guest::Request shutdown;
  shutdown.set_id(vm_->next_id());
  shutdown.mutable_shutdown();
  vm_->send(shutdown);
  auto done = vm_->collect(shutdown.id(), 30s);
  ASSERT_FALSE(done.empty());
  EXPECT_TRUE(done.back().has_done());
  auto status = vm_->wait_exit(60s);
  ASSERT_TRUE(status) << "QEMU still runs after the shutdown; console:\n" << vm_->console_log();
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  const std::string console = vm_->console_log();
  EXPECT_EQ(console.find("Kernel panic"), std::string::npos) << console;
  EXPECT_EQ(console.find("failed"), std::string::npos) << console;
}

} // namespace
} // namespace vesicle::test
