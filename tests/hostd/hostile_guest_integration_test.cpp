// A hostile guest on a real VM (issue 14): root in the guest freezes the
// agent (PID 1) with the cgroup v2 freezer, so it stops answering. hostd's
// next exec must end in a timeout that says the sandbox is ended, not hang;
// the sandbox must be recorded dead with the reason's kind; hostd's memory
// must stay flat. The real hostd binary, one small VM, HTTP over loopback;
// the test's configuration shortens hostd's agent deadlines (seconds, not
// the default half-minutes). A second guest floods its agent channel: it
// is disconnected as a protocol violation and hostd's memory stays flat.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "messages/api.pb.h"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/hostd_test_support.hpp"
#include "tests/hostd/hostile_guest_programs.hpp"
#include "tests/hostd/http_client.hpp"
#include "tests/integration/qemu_proc.hpp"

using namespace vesicle;
using namespace vesicle::testing;

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::size_t rss_kib(pid_t pid) {
  const auto status = vesicle::test::proc_status(pid);
  auto found = status.find("VmRSS");
  return found == status.end() ? 0 : std::stoul(found->second);
}

// Moves the agent into a cgroup of its own and freezes it; from a helper
// started in the background so this exec's own answer goes out first.
constexpr const char* kFreezeTheAgent =
    R"j({"language": "bash", "timeout_s": 10, "code": )j"
    R"j("mkdir -p /sys/fs/cgroup/stuck && )j"
    R"j((sleep 1; echo 1 > /sys/fs/cgroup/stuck/cgroup.procs && )j"
    R"j(echo 1 > /sys/fs/cgroup/stuck/cgroup.freeze) >/tmp/freeze.log 2>&1 </dev/null & )j"
    R"j(echo armed"})j";

class HostileGuest : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    skip_reason = missing_images_reason();
    if (!skip_reason.empty()) return;
    HostdOptions options;
    options.binary = HOSTD_BINARY;
    options.images_dir = images_dir();
    options.max_sandboxes = 2;
    options.memory_mib = 512;
    options.extra_config =
        R"("disable_pools": true, )"
        R"("agent_deadlines": {"exec_grace_s": 2, "call_timeout_s": 3, "liveness_s": 3})";
    hostd = new HostdProcess(options);
  }
  static void TearDownTestSuite() {
    delete hostd;
    hostd = nullptr;
  }
  void SetUp() override {
    if (!skip_reason.empty()) GTEST_SKIP() << skip_reason;
    ASSERT_NE(hostd, nullptr);
  }
  void TearDown() override {
    if (HasFailure() && hostd) std::fprintf(stderr, "hostd's log:\n%s\n", hostd->log().c_str());
  }
  HttpClient client() { return HttpClient("127.0.0.1", hostd->port(), hostd->key()); }

  static inline HostdProcess* hostd = nullptr;
  static inline std::string skip_reason;
};

TEST_F(HostileGuest, AFrozenAgentCostsTheExecATimeoutAndEndsTheSandbox) {
  auto http = client();
  auto created = http.request("POST", "/v1/sandboxes", "{}");
  ASSERT_EQ(created.status, 201u) << created.body;
  const std::string id = parse<api::Sandbox>(created.body).id();
  const std::string exec_path = "/v1/sandboxes/" + id + "/exec";

  // Warm: the first exec starts the REPL and pages hostd in.
  auto warm = http.request("POST", exec_path, R"({"language": "bash", "code": "echo ok"})");
  ASSERT_EQ(warm.status, 200u) << warm.body;
  ASSERT_NE(warm.body.find("ok"), std::string::npos) << warm.body;
  const std::size_t rss_before = rss_kib(hostd->pid());

  auto armed = http.request("POST", exec_path, kFreezeTheAgent);
  ASSERT_EQ(armed.status, 200u) << armed.body;
  ASSERT_NE(armed.body.find("armed"), std::string::npos) << armed.body;
  std::this_thread::sleep_for(2s);

  // The agent is frozen: the guest enforces no timeout now. hostd's own
  // deadline (1 s + 2 s grace, a cancel, 2 s more) must end the call.
  const auto started = Clock::now();
  auto stuck = http.request("POST", exec_path,
                            R"({"language": "bash", "timeout_s": 1, "code": "echo never"})");
  const auto took = Clock::now() - started;
  EXPECT_LT(took, 30s) << "hostd waited on a frozen agent";
  EXPECT_NE(stuck.body.find("\"timeout\""), std::string::npos) << stuck.body;
  EXPECT_NE(stuck.body.find("the sandbox is ended"), std::string::npos) << stuck.body;

  auto info = parse<api::Sandbox>(http.request("GET", "/v1/sandboxes/" + id).body);
  EXPECT_EQ(info.state(), "dead");
  EXPECT_EQ(info.dead_reason().rfind("timeout:", 0), 0u) << info.dead_reason();
  EXPECT_NE(info.dead_reason().find("stopped answering"), std::string::npos) << info.dead_reason();

  // Later calls are refused at once with the death, not sent to the guest.
  auto later = http.request("POST", exec_path, R"({"language": "bash", "code": "echo later"})");
  EXPECT_EQ(later.status, 410u) << later.body;

  const std::size_t rss_after = rss_kib(hostd->pid());
  std::printf(
      "frozen agent: the exec ended after %lld ms; hostd RSS %zu KiB -> %zu KiB\n",
      static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()),
      rss_before, rss_after);
  EXPECT_LT(rss_after, rss_before + (32u << 10))
      << "hostd's RSS grew from " << rss_before << " KiB to " << rss_after << " KiB";

  // Its QEMU is gone (the registry reclaimed the dead sandbox's VM).
  for (int i = 0; i < 100 && !hostd->qemu_pids().empty(); ++i)
    std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(hostd->qemu_pids().empty());
  auto deleted = http.request("DELETE", "/v1/sandboxes/" + id);
  EXPECT_LT(deleted.status, 300u) << deleted.body;
}

// Root in the guest takes PID 1's end of the agent channel and writes
// empty frames into it as fast as the port takes them (events for a request
// hostd never sent). hostd disconnects it as a protocol violation, records
// the sandbox dead with that kind, answers later calls 410, reaps the VM,
// and its RSS stays flat while the guest floods.
TEST_F(HostileGuest, AGuestThatFloodsItsChannelIsDisconnected) {
  auto http = client();
  auto created = http.request("POST", "/v1/sandboxes", "{}");
  ASSERT_EQ(created.status, 201u) << created.body;
  const std::string id = parse<api::Sandbox>(created.body).id();
  const std::string exec_path = "/v1/sandboxes/" + id + "/exec";
  auto warm = http.request("POST", exec_path, R"({"language": "bash", "code": "echo ok"})");
  ASSERT_EQ(warm.status, 200u) << warm.body;
  const std::size_t rss_before = rss_kib(hostd->pid());

  auto armed = http.request("POST", exec_path, exec_body("bash", kChannelFlood, 20));
  ASSERT_EQ(armed.status, 200u) << armed.body;
  ASSERT_NE(armed.body.find("armed"), std::string::npos) << armed.body;

  api::Sandbox info;
  std::size_t rss_peak = rss_before;
  const auto started = Clock::now();
  while (Clock::now() - started < 60s) {
    rss_peak = std::max(rss_peak, rss_kib(hostd->pid()));
    info = parse<api::Sandbox>(http.request("GET", "/v1/sandboxes/" + id).body);
    if (info.state() == "dead") break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_EQ(info.state(), "dead")
      << "the flooding guest is still connected: "
      << http.request("POST", exec_path, R"({"language": "bash", "code": "cat /tmp/flood.log"})")
             .body;
  EXPECT_EQ(info.dead_reason().rfind("guest_protocol_violation", 0), 0u) << info.dead_reason();
  auto later = http.request("POST", exec_path, R"({"language": "bash", "code": "echo later"})");
  EXPECT_EQ(later.status, 410u) << later.body;
  EXPECT_NE(later.body.find("guest_protocol_violation"), std::string::npos) << later.body;

  for (int i = 0; i < 100 && !hostd->qemu_pids().empty(); ++i)
    std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(hostd->qemu_pids().empty());
  const std::size_t rss_after = rss_kib(hostd->pid());
  std::printf(
      "channel flood: disconnected after %lld ms; hostd RSS %zu KiB, peak %zu, after %zu\n",
      static_cast<long long>(
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count()),
      rss_before, rss_peak, rss_after);
  EXPECT_LT(rss_peak, rss_before + (32u << 10))
      << "hostd's RSS grew from " << rss_before << " KiB to " << rss_peak << " KiB";
  EXPECT_LT(http.request("DELETE", "/v1/sandboxes/" + id).status, 300u);
}

} // namespace
