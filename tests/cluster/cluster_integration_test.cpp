// A cluster end to end (docs/cluster.md): three real hostd nodes in two
// regions and a real vesicle-gateway on loopback, real VMs. Creates by
// region, exec, files, fork, merge_into, freeze and resume through the
// gateway, kill -9 of a node, a gateway restart, a region with every node
// down, the killed node's Space after its restart. Few VMs: two cores, TCG.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

#include "messages/api.pb.h"
#include "tests/cluster/gateway_process.hpp"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/hostd_test_support.hpp"
#include "tests/hostd/http_client.hpp"

using namespace vesicle;
using namespace vesicle::testing;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kRegions[] = {"eu", "eu", "us"};

class ClusterIntegration : public ::testing::Test {
protected:
  void SetUp() override {
    if (auto reason = missing_images_reason(); !reason.empty()) GTEST_SKIP() << reason;
    char pattern[] = "/tmp/cluster-it-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    home_ = pattern;
    std::filesystem::create_directories(home_ / "gateway" / "state");
    {
      std::ofstream secret(home_ / "secret");
      secret << "a-test-cluster-secret-" << home_.filename().string() << "\n";
    }
    std::filesystem::permissions(home_ / "secret", std::filesystem::perms::owner_read |
                                                       std::filesystem::perms::owner_write);
    const auto state = (home_ / "gateway" / "state").string();
    key_ = key_in(run_for_stdout({VESICLE_GATEWAY_BINARY, "--state-dir", state, "--new-key"}));
    admin_key_ = key_in(
        run_for_stdout({VESICLE_GATEWAY_BINARY, "--state-dir", state, "--new-key", "--admin"}));
    actor_port_ = free_port();
    {
      std::ofstream config(home_ / "gateway" / "gateway.json");
      config << R"({"state_dir": ")" << state << R"(", "cluster": {"secret_file": ")"
             << (home_ / "secret").string() << R"(", "heartbeat_ms": 300, "down_after_ms": 1500}})";
    }
    gateway_ =
        std::make_unique<GatewayProcess>(VESICLE_GATEWAY_BINARY, home_ / "gateway", actor_port_);
    // A second gateway replica beside it: the same keys and secret, no
    // state shared with the first; every node registers with both.
    replica_port_ = free_port();
    std::filesystem::create_directories(home_ / "replica");
    std::filesystem::copy_file(home_ / "gateway" / "gateway.json",
                               home_ / "replica" / "gateway.json");
    replica_ =
        std::make_unique<GatewayProcess>(VESICLE_GATEWAY_BINARY, home_ / "replica", replica_port_);
    for (int i = 0; i < 3; ++i)
      start_node(i);
    wait_for_nodes_up(3);
  }

  void TearDown() override {
    if (HasFailure()) {
      std::fprintf(stderr, "gateway's log:\n%s\n",
                   read_file(home_ / "gateway" / "gateway.log").c_str());
      for (auto& node : nodes_)
        if (node) std::fprintf(stderr, "a node's log:\n%s\n", node->log().c_str());
    }
    gateway_.reset();
    replica_.reset();
    for (auto& node : nodes_) {
      if (!node) continue;
      node->stop();
      // A node the test killed and did not restart left its QEMUs behind.
      for (pid_t pid : node->qemu_pids())
        ::kill(pid, SIGKILL);
      node.reset();
    }
    if (home_.empty()) return;
    for (int i = 0; i < 3; ++i) {
      const auto name = node_home(i).filename();
      for (const char* controller : {"memory", "pids", "cpu"}) {
        const auto root = std::filesystem::path("/sys/fs/cgroup") / controller / name;
        std::error_code ec;
        for (const auto& leaf : std::filesystem::directory_iterator(root, ec))
          if (leaf.is_directory()) ::rmdir(leaf.path().c_str());
        ::rmdir(root.c_str());
      }
      std::error_code ignored;
      std::filesystem::remove_all(std::filesystem::path("/dev/shm") / name, ignored);
      std::filesystem::remove_all(node_home(i), ignored);
    }
    std::error_code ignored;
    std::filesystem::remove_all(home_, ignored);
  }

  std::filesystem::path node_home(int i) const {
    return home_.string() + "-n" + std::to_string(i + 1);
  }
  std::string node_name(int i) const { return "n" + std::to_string(i + 1); }

  // Node i on its own home (a restart reuses it), the gateway's keys, a
  // VM uid range of its own (a starting hostd reclaims its range).
  void start_node(int i) {
    std::filesystem::create_directories(node_home(i) / "state");
    std::filesystem::copy_file(home_ / "gateway" / "state" / "keys",
                               node_home(i) / "state" / "keys",
                               std::filesystem::copy_options::overwrite_existing);
    HostdOptions options;
    options.binary = HOSTD_BINARY;
    options.images_dir = images_dir();
    options.max_sandboxes = 2;
    options.memory_mib = 512;
    options.home = node_home(i);
    options.confinement_extra =
        "\"uid_first\": " + std::to_string(1950000000u + i * 8192u) + ", \"uid_count\": 4096";
    options.extra_config = "\"disable_pools\": true, \"cluster\": {\"node_name\": \"" +
                           node_name(i) + "\", \"region\": \"" + kRegions[i] +
                           "\", \"gateways\": [\"127.0.0.1:" + std::to_string(actor_port_) +
                           "\", \"127.0.0.1:" + std::to_string(replica_port_) +
                           "\"], \"secret_file\": \"" + (home_ / "secret").string() +
                           "\", \"heartbeat_ms\": 300, \"down_after_ms\": 1500}";
    nodes_[i] = std::make_unique<HostdProcess>(options);
  }

  HttpClient gateway(const std::string& key = {}) {
    return HttpClient("127.0.0.1", gateway_->port(), key.empty() ? key_ : key);
  }

  api::ListNodesResponse list_nodes() {
    auto answer = gateway(admin_key_).request("GET", "/v1/admin/nodes");
    EXPECT_EQ(answer.status, 200u) << answer.body;
    return parse<api::ListNodesResponse>(answer.body);
  }

  std::size_t nodes_up() {
    std::size_t up = 0;
    const auto listed = list_nodes(); // the loop below must not outlive it
    for (const auto& node : listed.nodes())
      up += node.state() == "up" && node.max_sandboxes() > 0; // up and measured
    return up;
  }

  void wait_for_nodes_up(std::size_t n) {
    auto deadline = Clock::now() + std::chrono::seconds(20);
    while (nodes_up() < n && Clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_GE(nodes_up(), n) << list_nodes().DebugString();
  }

  // A call retried while it answers 409 "already being forked, merged or
  // frozen", for up to 10 s.
  template <class Call> HttpResponse until_not_busy(Call call) {
    auto deadline = Clock::now() + std::chrono::seconds(10);
    auto answer = call();
    while (answer.status == 409 && answer.body.find("already being") != std::string::npos &&
           Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      answer = call();
    }
    return answer;
  }

  int index_of(const std::string& node) const {
    for (int i = 0; i < 3; ++i)
      if (node_name(i) == node) return i;
    return -1;
  }

  std::filesystem::path home_;
  std::string key_;
  std::string admin_key_;
  unsigned short actor_port_ = 0;
  unsigned short replica_port_ = 0;
  std::unique_ptr<GatewayProcess> gateway_;
  std::unique_ptr<GatewayProcess> replica_;
  std::unique_ptr<HostdProcess> nodes_[3];
};

TEST_F(ClusterIntegration, RegionsRoutingFailureAndGatewayRestart) {
  auto http = gateway();
  auto nodes = list_nodes();
  ASSERT_EQ(nodes.nodes_size(), 3);

  // A create with a region lands on a node of that region; the node's own
  // listing agrees.
  auto created = http.request("POST", "/v1/sandboxes", R"({"region": "eu"})");
  ASSERT_EQ(created.status, 201u) << created.body;
  auto eu = parse<api::Sandbox>(created.body);
  EXPECT_EQ(eu.region(), "eu");
  const int eu_node = index_of(eu.node());
  ASSERT_TRUE(eu_node == 0 || eu_node == 1) << eu.node();
  HttpClient direct("127.0.0.1", nodes_[eu_node]->port(), key_);
  auto listed = direct.request("GET", "/v1/sandboxes");
  EXPECT_NE(listed.body.find(eu.id()), std::string::npos) << listed.body;
  EXPECT_NE(listed.body.find(R"("node":")" + eu.node() + "\""), std::string::npos);

  created = http.request("POST", "/v1/sandboxes", R"({"region": "us"})");
  ASSERT_EQ(created.status, 201u) << created.body;
  auto us = parse<api::Sandbox>(created.body);
  EXPECT_EQ(us.region(), "us");
  EXPECT_EQ(us.node(), "n3");

  // An unknown region is the caller's mistake, named.
  auto nowhere = http.request("POST", "/v1/sandboxes", R"({"region": "mars"})");
  EXPECT_EQ(nowhere.status, 400u);
  EXPECT_NE(nowhere.body.find("mars"), std::string::npos) << nowhere.body;

  // exec streams through; files go both ways; fork children stay on their
  // parent's node.
  auto exec =
      http.request("POST", "/v1/sandboxes/" + eu.id() + "/exec", R"j({"code": "print(40 + 2)"})j");
  ASSERT_EQ(exec.status, 200u) << exec.body;
  // print() may reach the stream as "42" and "\n" in two events.
  EXPECT_NE(exec.body.find(R"("data":"42)"), std::string::npos) << exec.body;
  std::string blob(1 << 20, '\0');
  for (std::size_t i = 0; i < blob.size(); ++i)
    blob[i] = static_cast<char>((i * 2654435761u) >> 13);
  auto put = http.request("PUT", "/v1/sandboxes/" + eu.id() + "/files?path=/tmp/blob.bin", blob,
                          {{"Content-Type", "application/octet-stream"}});
  ASSERT_EQ(put.status, 200u) << put.body;
  auto got = http.request("GET", "/v1/sandboxes/" + eu.id() + "/files?path=/tmp/blob.bin");
  ASSERT_EQ(got.status, 200u);
  EXPECT_TRUE(got.body == blob) << "the file came back different: " << got.body.size() << " bytes";
  auto forked = http.request("POST", "/v1/sandboxes/" + eu.id() + "/fork", R"({"n": 1})");
  ASSERT_EQ(forked.status, 201u) << forked.body;
  auto child = parse<api::ForkResponse>(forked.body).children(0);
  EXPECT_EQ(child.node(), eu.node());
  auto child_exec = http.request("POST", "/v1/sandboxes/" + child.id() + "/exec",
                                 R"j({"code": "open('/tmp/won', 'w').write('the child')"})j");
  ASSERT_EQ(child_exec.status, 200u) << child_exec.body;
  auto all = parse<api::ListSandboxesResponse>(http.request("GET", "/v1/sandboxes").body);
  EXPECT_EQ(all.sandboxes_size(), 3) << all.DebugString();

  // merge_into: the parent goes on as the child; the child's id is gone.
  // (The node answers a fork before it lets go of the parent: a merge or
  // freeze right after may get 409 "already being forked"; retry as the
  // message says.)
  auto merged = until_not_busy([&] {
    return http.request("POST", "/v1/sandboxes/" + eu.id() + "/merge_into/" + child.id());
  });
  ASSERT_EQ(merged.status, 200u) << merged.body;
  EXPECT_EQ(http.request("GET", "/v1/sandboxes/" + child.id()).status, 404u);
  const std::string read_won = R"j({"code": "print(open('/tmp/won').read())"})j";
  auto won = http.request("POST", "/v1/sandboxes/" + eu.id() + "/exec", read_won);
  EXPECT_NE(won.body.find("the child"), std::string::npos) << won.body;

  // freeze and resume: the Space is its node's and resumes there. The
  // resumed sandbox is frozen again, so a Space is on the node when it dies.
  auto frozen =
      until_not_busy([&] { return http.request("POST", "/v1/sandboxes/" + eu.id() + "/freeze"); });
  ASSERT_EQ(frozen.status, 200u) << frozen.body;
  auto space = parse<api::Space>(frozen.body);
  EXPECT_EQ(space.node(), eu.node());
  auto resumed = http.request("POST", "/v1/spaces/" + space.space_id() + "/resume");
  ASSERT_EQ(resumed.status, 201u) << resumed.body;
  auto back = parse<api::Sandbox>(resumed.body);
  EXPECT_EQ(back.node(), eu.node());
  won = http.request("POST", "/v1/sandboxes/" + back.id() + "/exec", read_won);
  EXPECT_NE(won.body.find("the child"), std::string::npos) << won.body;
  frozen = http.request("POST", "/v1/sandboxes/" + back.id() + "/freeze");
  ASSERT_EQ(frozen.status, 200u) << frozen.body;
  const auto kept = parse<api::Space>(frozen.body).space_id();

  // kill -9 of the eu sandbox's node: its sandboxes answer node_unavailable
  // within 5 s, and creates in eu go to the other eu node.
  const auto killed_at = Clock::now();
  nodes_[eu_node]->kill_hard();
  HttpResponse gone;
  while (Clock::now() - killed_at < std::chrono::seconds(5)) {
    gone = gateway().request("GET", "/v1/sandboxes/" + eu.id());
    if (gone.status == 503) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(gone.status, 503u) << gone.body;
  EXPECT_NE(gone.body.find("node_unavailable"), std::string::npos) << gone.body;
  EXPECT_LT(Clock::now() - killed_at, std::chrono::seconds(5));
  auto other_eu = http.request("POST", "/v1/sandboxes", R"({"region": "eu"})");
  ASSERT_EQ(other_eu.status, 201u) << other_eu.body;
  EXPECT_EQ(parse<api::Sandbox>(other_eu.body).node(), node_name(1 - eu_node));

  // A gateway restart loses no sandbox: the nodes register again. While it
  // is down, the replica serves the same sandbox.
  gateway_.reset();
  auto from_replica =
      HttpClient("127.0.0.1", replica_->port(), key_).request("GET", "/v1/sandboxes/" + us.id());
  EXPECT_EQ(from_replica.status, 200u) << from_replica.body;
  gateway_ =
      std::make_unique<GatewayProcess>(VESICLE_GATEWAY_BINARY, home_ / "gateway", actor_port_);
  wait_for_nodes_up(2);
  auto again = gateway().request("GET", "/v1/sandboxes/" + us.id());
  ASSERT_EQ(again.status, 200u) << again.body;
  EXPECT_EQ(parse<api::Sandbox>(again.body).state(), "ready");
  auto us_exec = gateway().request("POST", "/v1/sandboxes/" + us.id() + "/exec",
                                   R"j({"code": "print('still here')"})j");
  EXPECT_NE(us_exec.body.find("still here"), std::string::npos) << us_exec.body;

  // Every eu node down: a create in eu is a 503 that names the region.
  nodes_[1 - eu_node]->kill_hard();
  auto deadline = Clock::now() + std::chrono::seconds(5);
  HttpResponse refused;
  while (Clock::now() < deadline) {
    refused = gateway().request("POST", "/v1/sandboxes", R"({"region": "eu"})");
    if (refused.status == 503) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(refused.status, 503u) << refused.body;
  EXPECT_NE(refused.body.find("\\\"eu\\\""), std::string::npos) << refused.body;

  // The killed nodes come back (reclaiming the VMs the kill left) and rejoin;
  // the Space frozen on the first one is reachable and resumes there.
  start_node(0);
  start_node(1);
  wait_for_nodes_up(3);
  auto listed_space = gateway().request("GET", "/v1/spaces/" + kept);
  ASSERT_EQ(listed_space.status, 200u) << listed_space.body;
  EXPECT_EQ(parse<api::Space>(listed_space.body).node(), eu.node());
  resumed = gateway().request("POST", "/v1/spaces/" + kept + "/resume");
  ASSERT_EQ(resumed.status, 201u) << resumed.body;
  back = parse<api::Sandbox>(resumed.body);
  EXPECT_EQ(back.node(), eu.node());
  won = gateway().request("POST", "/v1/sandboxes/" + back.id() + "/exec", read_won);
  EXPECT_NE(won.body.find("the child"), std::string::npos) << won.body;
}

} // namespace
