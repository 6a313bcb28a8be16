// The identity refresh in a real microVM, booted through the QEMU driver
// from the images in VESICLE_IMAGES_DIR (default: the build's images/, made
// by images/build.sh from this tree's agent and repl.py). One VM for the
// whole suite; the agent there is PID 1, so every kernel step is applied
// and checked from inside the guest.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include <gtest/gtest.h>

#include "tests/vmm/test_support.hpp"
#include "tests/vmm/vm_world.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::test {
namespace {

using namespace std::chrono_literals;
using vmm::AgentClient;
using vmm::IdentityRefresh;
using vmm::Vm;
using Clock = std::chrono::steady_clock;
using SystemClock = std::chrono::system_clock;
namespace fs = std::filesystem;

double unix_seconds(SystemClock::time_point time) {
  return std::chrono::duration<double>(time.time_since_epoch()).count();
}

class IdentityVm : public ::testing::Test {
protected:
  // VMs named idt<pid>-*, dirs vesicle-idt-XXXXXX (tests/vmm/vm_world.hpp).
  struct World : VmWorld {
    World() : VmWorld("idt") {}
  };

  static void SetUpTestSuite() {
    if (!vmm::GuestImages::in(images_dir()).check().ok()) return;
    world_ = new World;
    vmm::VmConfig config = world_->config("vm");
    config.vcpus = 1;
    config.boot_timeout = 120s;
    boot_shared_vm(*world_, std::move(config), vm_, boot_error_);
  }

  static void TearDownTestSuite() {
    end_shared_vm(world_, vm_, boot_error_, "after the identity suite");
  }

  void SetUp() override {
    if (!world_) {
      GTEST_SKIP() << "no guest images in " << images_dir()
                   << " (build them with images/build.sh, or set VESICLE_IMAGES_DIR)";
    }
    ASSERT_TRUE(vm_) << "boot failed: " << *boot_error_;
    ASSERT_TRUE(vm_->running()) << "the VM died: " << world_->io.run(vm_->wait_exit());
  }

  static AgentClient& agent() { return vm_->agent(); }
  static IoThread& io() { return world_->io; }

  static IdentityRefresh fresh(const std::string& hostname) {
    auto identity = IdentityRefresh::generate(hostname);
    if (!identity) throw std::runtime_error(identity.error().message());
    return std::move(identity.value());
  }

  static ExecReply run_bash(const std::string& command) { return io().run(bash(agent(), command)); }
  static ExecReply run_python(const std::string& code) { return io().run(python(agent(), code)); }

  // The guest's time.time() against the host's clock read around the call.
  struct ClockReading {
    double guest = 0;
    double host_before = 0;
    double host_after = 0;
  };
  static ClockReading read_guest_clock() {
    ClockReading reading;
    reading.host_before = unix_seconds(SystemClock::now());
    auto reply = run_python("import time\nrepr(time.time())");
    reading.host_after = unix_seconds(SystemClock::now());
    if (!reply.exit || reply.output.results.size() != 1) {
      ADD_FAILURE() << "time.time() in the guest failed: " << reply.output.err;
      return reading;
    }
    reading.guest =
        std::stod(reply.output.results[0].substr(1, reply.output.results[0].size() - 2));
    return reading;
  }
  // Within 1 s of the host's clock (+ `offset`) at some moment of the call.
  static void expect_clock(const ClockReading& reading, double offset) {
    EXPECT_GE(reading.guest, reading.host_before + offset - 1.0)
        << "guest " << std::fixed << reading.guest << ", host " << reading.host_before;
    EXPECT_LE(reading.guest, reading.host_after + offset + 1.0)
        << "guest " << std::fixed << reading.guest << ", host " << reading.host_after;
  }

  static World* world_;
  static Vm* vm_;
  static std::string* boot_error_;
};

IdentityVm::World* IdentityVm::world_ = nullptr;
Vm* IdentityVm::vm_ = nullptr;
std::string* IdentityVm::boot_error_ = nullptr;

TEST_F(IdentityVm, HostnameMachineIdAndClockFollowTheRefresh) {
  auto ahead = fresh("vesicle-clone-" + std::to_string(::getpid()));
  ahead.time = SystemClock::now() + 1h;
  auto applied = io().run(agent().refresh_identity(ahead));
  ASSERT_TRUE(applied) << applied.error().message();

  auto seen = run_bash("hostname; cat /etc/machine-id; stat -c %a /etc/machine-id; "
                       "ls /etc | grep -c vesicle-new || true");
  ASSERT_TRUE(seen.exit) << seen.exit.error().message();
  EXPECT_EQ(seen.output.out, ahead.hostname + "\n" + ahead.machine_id + "\n444\n0\n");
  auto python_name = run_python("import socket\nsocket.gethostname()");
  ASSERT_EQ(python_name.output.results.size(), 1u);
  EXPECT_EQ(python_name.output.results[0], "'" + ahead.hostname + "'");
  auto info = io().run(agent().info());
  ASSERT_TRUE(info) << info.error().message();
  EXPECT_EQ(info->hostname(), ahead.hostname);
  expect_clock(read_guest_clock(), 3600.0);

  // Set back: the host's clock as it is sent.
  auto back = fresh("vesicle-clone-back");
  auto reset = io().run(agent().refresh_identity(back));
  ASSERT_TRUE(reset) << reset.error().message();
  expect_clock(read_guest_clock(), 0.0);
  auto again = run_bash("hostname; cat /etc/machine-id");
  ASSERT_TRUE(again.exit);
  EXPECT_EQ(again.output.out, back.hostname + "\n" + back.machine_id + "\n");
}

// The snapshot state of a clone is simulated by seeding: without the
// refresh, every clone would draw `base`.
TEST_F(IdentityVm, UrandomRandomAndNumpyDivergeAfterARefresh) {
  auto setup = run_python("import os, random, numpy\n"
                          "u_before = os.urandom(16)\n"
                          "def draw():\n"
                          "    return ([random.random() for _ in range(4)],\n"
                          "            numpy.random.random(4).tolist())\n"
                          "def snapshot_state():\n"
                          "    random.seed(7)\n"
                          "    numpy.random.seed(7)\n"
                          "snapshot_state()\n"
                          "base = draw()\n"
                          "snapshot_state()");
  ASSERT_TRUE(setup.exit) << setup.exit.error().message();
  ASSERT_EQ(setup.exit->exit_code(), 0)
      << setup.output.err
      << (setup.output.errors.empty() ? "" : setup.output.errors[0].traceback());
  auto first = io().run(agent().refresh_identity(fresh("vesicle-a")));
  ASSERT_TRUE(first) << first.error().message();
  ASSERT_TRUE(run_python("a = draw()\nsnapshot_state()").exit);
  auto second = io().run(agent().refresh_identity(fresh("vesicle-b")));
  ASSERT_TRUE(second) << second.error().message();
  auto compared = run_python("b = draw()\n"
                             "u_after = os.urandom(16)\n"
                             "(a[0] != base[0], b[0] != base[0], a[0] != b[0],\n"
                             " a[1] != base[1], b[1] != base[1], a[1] != b[1],\n"
                             " u_before != u_after)");
  ASSERT_EQ(compared.output.results.size(), 1u) << compared.output.err;
  EXPECT_EQ(compared.output.results[0], "(True, True, True, True, True, True, True)");
}

// hostd sends the refresh and goes on without waiting: the next exec sees
// it, and nothing is reported as failed.
TEST_F(IdentityVm, RefreshSentWithoutWaitingIsSeenByTheNextExec) {
  auto identity = fresh("vesicle-next");
  auto failures = std::make_shared<std::vector<std::string>>();
  struct Seen {
    Result<void> sent;
    ExecReply reply;
    Clock::duration send_took{};
  };
  auto seen =
      io().run([](AgentClient& agent, IdentityRefresh identity,
                  std::shared_ptr<std::vector<std::string>> failures) -> asio::awaitable<Seen> {
        Seen seen;
        vmm::RefreshFailureHandler record = [failures](const Error& error) {
          failures->push_back(error.message());
        };
        const auto start = Clock::now();
        seen.sent = co_await agent.send_refresh_identity(identity, record);
        seen.send_took = Clock::now() - start;
        seen.reply = co_await bash(agent, "hostname; cat /etc/machine-id");
        co_return seen;
      }(agent(), identity, failures));
  ASSERT_TRUE(seen.sent) << seen.sent.error().message();
  ASSERT_TRUE(seen.reply.exit) << seen.reply.exit.error().message();
  EXPECT_EQ(seen.reply.output.out, identity.hostname + "\n" + identity.machine_id + "\n");
  std::printf("send_refresh_identity returned in %.0f us\n",
              std::chrono::duration<double, std::micro>(seen.send_took).count());
  std::this_thread::sleep_for(200ms);
  EXPECT_TRUE(io().call([&] { return failures->empty(); }))
      << io().call([&] { return failures->front(); });
}

TEST_F(IdentityVm, BadRefreshChangesNothingInTheGuest) {
  auto before = run_bash("hostname; cat /etc/machine-id");
  ASSERT_TRUE(before.exit);
  auto bad = fresh("bad_name");
  auto refused = io().run(agent().refresh_identity(bad));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().errno_value, EINVAL) << refused.error().message();
  auto after = run_bash("hostname; cat /etc/machine-id");
  ASSERT_TRUE(after.exit);
  EXPECT_EQ(after.output.out, before.output.out);
}

// On the sandbox-create path: the round trip in the guest under TCG, where
// the agent does the ioctls, clock_settime, sethostname and the rename.
TEST_F(IdentityVm, RefreshRoundTripInTheGuest) {
  std::vector<double> refresh_ms;
  std::vector<double> ping_ms;
  for (int i = 0; i < 20; ++i) {
    auto identity = fresh("vesicle-timed-" + std::to_string(i));
    auto start = Clock::now();
    auto applied = io().run(agent().refresh_identity(identity));
    refresh_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    ASSERT_TRUE(applied) << applied.error().message();
    start = Clock::now();
    auto pong = io().run(agent().ping(5s));
    ping_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    ASSERT_TRUE(pong) << pong.error().message();
  }
  std::sort(refresh_ms.begin(), refresh_ms.end());
  std::sort(ping_ms.begin(), ping_ms.end());
  std::printf("in the VM (%s): refresh round trip p50 %.2f ms, max %.2f ms; "
              "ping p50 %.2f ms, max %.2f ms\n",
              vmm::to_string(world_->driver->accel()), refresh_ms[10], refresh_ms.back(),
              ping_ms[10], ping_ms.back());
  EXPECT_LT(refresh_ms[10], 200.0);
}

} // namespace
} // namespace vesicle::test
