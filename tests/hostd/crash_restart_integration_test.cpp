// hostd killed with SIGKILL in the middle of a freeze, a fork and a create
// (issue 14), then started again on the same state: the host converges to
// clean (no QEMU, no VM directory or memory file, no cgroup leaf, no
// network namespace, link, nft rule or route beyond what a fresh hostd
// holds) and every Space on disk still resumes, with its files. A Space
// directory cut short (its `space` file half written) is neither listed
// nor in the way of the others. The real hostd binary, real VMs, one home
// directory the four hostds share.
#include <gtest/gtest.h>

#include <unistd.h>

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include "messages/api.pb.h"
#include "net/bridge.hpp"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/hostd_test_support.hpp"
#include "tests/hostd/hostile_guest_programs.hpp"
#include "tests/hostd/http_client.hpp"
#include "tests/hostd/soak_network.hpp"

using namespace vesicle;
using namespace vesicle::testing;

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// The home the hostds share, and everything named after it, removed when
// the test ends however it ends.
struct Home {
  fs::path dir;
  Home() {
    char pattern[] = "/tmp/hostd-it-XXXXXX";
    if (!::mkdtemp(pattern)) throw std::runtime_error("mkdtemp failed");
    dir = pattern;
  }
  ~Home() {
    for (const char* controller : {"memory", "pids", "cpu"}) {
      const auto root = fs::path("/sys/fs/cgroup") / controller / dir.filename();
      for (int attempt = 0; attempt < 50 && fs::exists(root); ++attempt) {
        std::error_code ec;
        for (const auto& leaf : fs::directory_iterator(root, ec))
          if (leaf.is_directory()) ::rmdir(leaf.path().c_str());
        if (::rmdir(root.c_str()) == 0) break;
        std::this_thread::sleep_for(100ms);
      }
    }
    std::error_code ignored;
    fs::remove_all(dir, ignored);
    fs::remove_all(fs::path("/dev/shm") / dir.filename(), ignored);
    (void)net::BridgeManager::reclaim_leftovers(bridge_config());
  }
  std::size_t cgroup_leaves() const {
    std::size_t count = 0;
    for (const char* controller : {"memory", "pids", "cpu"}) {
      std::error_code ec;
      for (const auto& leaf :
           fs::directory_iterator(fs::path("/sys/fs/cgroup") / controller / dir.filename(), ec))
        if (leaf.is_directory()) ++count;
    }
    return count;
  }
  fs::path spaces() const { return dir / "state" / "spaces"; }
};

struct NetState {
  std::size_t netns = 0, links = 0, tables = 0;
  int rules = 0, routes = 0;
  bool operator==(const NetState&) const = default;
  std::string describe() const {
    return "netns " + std::to_string(netns) + ", links " + std::to_string(links) + ", tables " +
           std::to_string(tables) + ", ip rules " + std::to_string(rules) + ", routes " +
           std::to_string(routes);
  }
};

NetState net_state() {
  NetState state;
  if (auto left = net::BridgeManager::find_leftovers(bridge_config())) {
    state = {left->netns.size(), left->links.size(), left->tables.size(), left->rules,
             left->routes};
  }
  return state;
}

class CrashRestart : public ::testing::Test {
protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces, cgroups)";
    if (auto why = missing_images_reason(); !why.empty()) GTEST_SKIP() << why;
    (void)net::BridgeManager::reclaim_leftovers(bridge_config());
    home = std::make_unique<Home>();
  }
  void TearDown() override {
    if (hostd && HasFailure()) {
      const auto log = hostd->log();
      std::fprintf(stderr, "hostd's log (last 8 KiB):\n%s\n",
                   log.substr(log.size() > 8192 ? log.size() - 8192 : 0).c_str());
    }
    hostd.reset();
    home.reset();
  }

  void start() {
    const auto bridge = bridge_config();
    HostdOptions options;
    options.binary = HOSTD_BINARY;
    options.images_dir = images_dir();
    options.home = home->dir;
    options.max_sandboxes = 4;
    options.memory_mib = 256;
    options.request_timeout_s = 120;
    options.network_json = R"({"prefix": "vz", "transit": ")" + bridge.transit.str() +
                           R"(", "route_table": 1231, "rule_priority": 7481, "max_pooled": 1})";
    hostd = std::make_unique<HostdProcess>(options);
    // hostd serves (and has swept) once it answers.
    HttpClient http("127.0.0.1", hostd->port());
    ASSERT_EQ(http.request("GET", "/v1/healthz").status, 200u);
    if (key.empty()) key = hostd->key();
  }
  // A client of the hostd now running (its port changes with each start;
  // a client cannot be reassigned, so the test holds it in an optional).
  void connect(std::optional<HttpClient>& http) { http.emplace("127.0.0.1", hostd->port(), key); }

  std::string create(HttpClient& http) {
    auto created = http.request("POST", "/v1/sandboxes", "{}");
    EXPECT_EQ(created.status, 201u) << created.body;
    return created.status == 201 ? parse<api::Sandbox>(created.body).id() : "";
  }
  std::string run(HttpClient& http, const std::string& id, const std::string& code) {
    return http.request("POST", "/v1/sandboxes/" + id + "/exec", exec_body("bash", code, 30)).body;
  }

  // Sends `method target` from another thread and SIGKILLs hostd as soon
  // as `now()` holds (polled every 2 ms), or when the call ended. Whether
  // the kill came while the call ran.
  bool kill_during(const std::string& method, const std::string& target,
                   const std::function<bool()>& now) {
    std::atomic<bool> ended{false};
    std::thread call([&, port = hostd->port(), key = key] {
      try {
        HttpClient http("127.0.0.1", port, key);
        (void)http.request(method, target, method == "POST" ? "{}" : "");
      } catch (const std::exception&) {
        // hostd died under the call: what this test does.
      }
      ended = true;
    });
    const auto deadline = Clock::now() + 120s;
    while (!ended && !now() && Clock::now() < deadline)
      std::this_thread::sleep_for(2ms);
    const bool during = !ended;
    hostd->kill_hard();
    call.join();
    hostd.reset();
    return during;
  }

  std::unique_ptr<Home> home;
  std::unique_ptr<HostdProcess> hostd;
  std::string key; // the first hostd's keys stay in the shared state
};

TEST_F(CrashRestart, KilledMidFreezeForkAndCreateTheHostConvergesAndSpacesResume) {
  ASSERT_NO_FATAL_FAILURE(start());
  const NetState fresh_net = net_state();
  const std::size_t fresh_leaves = home->cgroup_leaves();
  std::optional<HttpClient> client;
  connect(client);
  HttpClient* http = &*client;

  // A good Space: a sandbox with a file in it, frozen.
  const std::string kept = create(*http);
  ASSERT_FALSE(kept.empty());
  ASSERT_TRUE(contains(run(*http, kept, "echo kept > /root/marker && echo wrote"), "wrote"));
  auto frozen = http->request("POST", "/v1/sandboxes/" + kept + "/freeze");
  ASSERT_EQ(frozen.status, 200u) << frozen.body;
  const std::string space = parse<api::Space>(frozen.body).space_id();
  ASSERT_FALSE(space.empty());

  // Mid-freeze: killed once the freeze's .partial directory is there.
  const std::string freezing = create(*http);
  ASSERT_FALSE(freezing.empty());
  ASSERT_TRUE(contains(run(*http, freezing, "echo lost > /root/marker && echo wrote"), "wrote"));
  http->close();
  auto partial_exists = [&] {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(home->spaces(), ec))
      if (entry.path().extension() == ".partial") return true;
    return false;
  };
  EXPECT_TRUE(kill_during("POST", "/v1/sandboxes/" + freezing + "/freeze", partial_exists))
      << "the freeze ended before hostd was killed";
  EXPECT_TRUE(partial_exists()) << "killed before the freeze wrote anything";

  // Mid-fork: killed once the child's QEMU is there.
  ASSERT_NO_FATAL_FAILURE(start());
  connect(client);
  http = &*client;
  const std::string parent = create(*http);
  ASSERT_FALSE(parent.empty());
  ASSERT_TRUE(contains(run(*http, parent, "echo parent"), "parent"));
  http->close();
  const std::size_t before_fork = hostd->qemu_pids().size();
  EXPECT_TRUE(kill_during("POST", "/v1/sandboxes/" + parent + "/fork", [&] {
    return hostd->qemu_pids().size() > before_fork;
  })) << "the fork ended before hostd was killed";

  // Mid-create: a cold boot (no pool), killed once its QEMU is there.
  ASSERT_NO_FATAL_FAILURE(start());
  EXPECT_TRUE(kill_during("POST", "/v1/sandboxes", [&] { return !hostd->qemu_pids().empty(); }))
      << "the create ended before hostd was killed";

  // A Space directory cut short: its `space` file half written, as a crash
  // of an older store could leave it.
  const std::string broken = "sp-00000000000000000000000000000bad";
  fs::create_directories(home->spaces() / broken / "vm");
  std::ofstream(home->spaces() / broken / "space")
      << "vesicle-space 1\nspace_id " << broken << "\nowner ";

  // The last start converges: nothing of the killed ones is left beyond
  // what a fresh hostd holds.
  ASSERT_NO_FATAL_FAILURE(start());
  connect(client);
  http = &*client;
  for (int i = 0; i < 100 && (!hostd->qemu_pids().empty() || net_state() != fresh_net); ++i)
    std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(hostd->qemu_pids().empty());
  EXPECT_TRUE(hostd->leftover_files().empty())
      << "left in the runtime or shm dir: " << hostd->leftover_files().front();
  EXPECT_EQ(home->cgroup_leaves(), fresh_leaves);
  EXPECT_EQ(net_state(), fresh_net)
      << "now " << net_state().describe() << ", fresh " << fresh_net.describe();
  for (const auto& entry : fs::directory_iterator(home->spaces()))
    EXPECT_NE(entry.path().extension(), ".partial") << entry.path();

  // The Spaces: the good one listed, the broken one not; the interrupted
  // freeze's sandbox is gone, its Space never made.
  auto listed = parse<api::ListSpacesResponse>(http->request("GET", "/v1/spaces").body);
  ASSERT_EQ(listed.spaces_size(), 1) << http->request("GET", "/v1/spaces").body;
  EXPECT_EQ(listed.spaces(0).space_id(), space);
  auto sandboxes = http->request("GET", "/v1/sandboxes");
  EXPECT_FALSE(contains(sandboxes.body, freezing)) << sandboxes.body;
  EXPECT_FALSE(contains(sandboxes.body, parent)) << sandboxes.body;

  // Every Space on disk resumes, with its files.
  auto resumed = http->request("POST", "/v1/spaces/" + space + "/resume", "{}");
  ASSERT_EQ(resumed.status, 201u) << resumed.body;
  const std::string back = parse<api::Sandbox>(resumed.body).id();
  EXPECT_TRUE(contains(run(*http, back, "cat /root/marker"), "kept"));
  EXPECT_EQ(http->request("DELETE", "/v1/sandboxes/" + back).status, 204u);
  // The broken one is not served as a Space (hostd answers it as corrupted).
  EXPECT_NE(http->request("GET", "/v1/spaces/" + broken).status, 200u);

  http->close();
  EXPECT_EQ(hostd->stop(), 0);
  EXPECT_TRUE(hostd->qemu_pids().empty());
  hostd.reset();
  auto left = net::BridgeManager::find_leftovers(bridge_config());
  EXPECT_TRUE(left && left->empty()) << (left ? left->describe() : left.error().message());
}

} // namespace
