// Tenant walls and quotas (issue 14), end to end over loopback HTTP with the
// real HTTP server and registry, in-process, with the fake VMM driver:
//   - the cross-tenant matrix: every route that takes a sandbox, Space or
//     winner id (REST and E2B's) answers another key 404, and the owner's
//     sandbox, files, children, Space and timeout are as they were;
//   - keys reload (POST /v1/admin/keys/reload) without dropping sandboxes,
//     a removed key's sandboxes destroyed or kept per the setting;
//   - /metrics for admin keys only;
//   - the tier quotas: vCPUs, Spaces (count and size), requests per second
//     (429 + Retry-After), a lifetime that counts across freezes.
// tenant_integration_test checks the walls that need a real guest.
#include <thread>
#include <utility> // before Boost 1.74 asio, which needs std::exchange

#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <sstream>

#include "hostd/config.hpp"
#include "hostd/daemon.hpp"
#include "messages/api.pb.h"
#include "messages/e2b.pb.h"
#include "tests/hostd/in_process_hostd.hpp"

using namespace vesicle;
using vesicle::testing::error_of;
using vesicle::testing::HttpClient;
using vesicle::testing::HttpResponse;
using vesicle::testing::InProcessHostdTest;
using vesicle::testing::parse;

namespace {

class TenantTest : public InProcessHostdTest {
protected:
  TenantTest() : InProcessHostdTest("hostd-tenant-test") {}

  // `tune` changes the configuration before its defaults are filled in.
  void start(const std::function<void(config::HostdConfig&)>& tune = {}) {
    start_actors();
    driver->write_full_saves = true; // a freeze checks the Space's files

    config::HostdConfig config;
    config.set_listen("127.0.0.1:0");
    config.set_state_dir(dir.path().string());
    config.set_max_sandboxes(6);
    config.set_request_timeout_s(5);
    config.set_disable_pools(true);
    if (tune) tune(config);
    hostd::apply_defaults(config);
    // prepare_host makes it for the real hostd; a resume copies a Space's
    // disk into it.
    std::filesystem::create_directories(config.runtime_dir());
    auto keys = hostd::KeyStore::load(dir.path() / "keys");
    ASSERT_TRUE(keys);
    auto a = keys->add(), b = keys->add(), c = keys->add("", true);
    ASSERT_TRUE(a && b && c);
    alice = a->key, alice_id = a->id, bob = b->key, bob_id = b->id, admin = c->key;
    start_daemon(config, std::move(*keys));
  }

  api::Sandbox create(HttpClient& http, const std::string& body = R"({"memory_mib": 256})") {
    auto response = http.request("POST", "/v1/sandboxes", body);
    EXPECT_EQ(response.status, 201u) << response.body;
    return parse<api::Sandbox>(response.body);
  }

  // The keys file without the line of key `id` (an operator removing it).
  void remove_key_line(const std::string& id) {
    std::ifstream in(dir.path() / "keys");
    std::string kept;
    for (std::string line; std::getline(in, line);)
      if (line.rfind(id + " ", 0) != 0) kept += line + "\n";
    in.close();
    std::ofstream(dir.path() / "keys") << kept;
  }

  std::size_t admin_count(HttpClient& operator_) {
    auto listed = operator_.request("GET", "/v1/admin/sandboxes");
    EXPECT_EQ(listed.status, 200u) << listed.body;
    return static_cast<std::size_t>(parse<api::AdminSandboxList>(listed.body).sandboxes_size());
  }

  std::string alice, alice_id, bob, bob_id, admin;
};

TEST_F(TenantTest, AnotherKeyGets404OnEveryIdAndTheOwnersThingsDoNotChange) {
  start();
  auto owner = client(alice);
  auto other = client(bob);
  // Alice: a sandbox with a fork child and a file, a frozen Space, an E2B
  // sandbox. (The file after the fork: the fake parent restored from its
  // fork snapshot starts with no files.)
  auto sandbox = create(owner);
  const std::string sb = "/v1/sandboxes/" + sandbox.id();
  auto forked = owner.request("POST", sb + "/fork", R"({"n": 1})");
  ASSERT_EQ(forked.status, 201u) << forked.body;
  const auto child = parse<api::ForkResponse>(forked.body).children(0).id();
  ASSERT_EQ(owner.request("PUT", sb + "/files?path=/data/mine", "alice's bytes").status, 200u);
  auto to_freeze = create(owner);
  auto frozen = owner.request("POST", "/v1/sandboxes/" + to_freeze.id() + "/freeze");
  ASSERT_EQ(frozen.status, 200u) << frozen.body;
  const auto space = parse<api::Space>(frozen.body).space_id();
  auto e2b_created = owner.request(
      "POST", "/sandboxes", R"({"templateID": "base", "timeout": 300})", {{"X-API-KEY", alice}});
  ASSERT_EQ(e2b_created.status, 201u) << e2b_created.body;
  const auto e2b_id = parse<e2b::SandboxCreated>(e2b_created.body).sandboxid();
  auto e2b_before = owner.request("GET", "/sandboxes/" + e2b_id, "", {{"X-API-KEY", alice}});
  ASSERT_EQ(e2b_before.status, 200u);
  const auto end_at = parse<e2b::SandboxDetail>(e2b_before.body).endat();
  // Bob's own sandbox, for merge_into with a winner that is not his.
  auto bobs = create(other);

  struct Call {
    std::string method, target, body;
  };
  const std::vector<Call> rest = {
      {"GET", sb, ""},
      {"DELETE", sb, ""},
      {"POST", sb + "/exec", R"({"code": "out hi"})"},
      {"PUT", sb + "/files?path=/data/mine", "bob's bytes"},
      {"GET", sb + "/files?path=/data/mine", ""},
      {"POST", sb + "/fork", R"({"n": 1})"},
      {"POST", sb + "/freeze", ""},
      {"POST", sb + "/merge_into/" + child, ""},
      {"POST", "/v1/sandboxes/" + bobs.id() + "/merge_into/" + child, ""},
      {"GET", "/v1/sandboxes/" + child, ""},
      {"DELETE", "/v1/sandboxes/" + child, ""},
      {"GET", "/v1/spaces/" + space, ""},
      {"DELETE", "/v1/spaces/" + space, ""},
      {"POST", "/v1/spaces/" + space + "/resume", ""},
      {"POST", "/v1/spaces/" + space + "/resume", R"({"persistent": true})"},
  };
  for (const auto& call : rest) {
    auto response = other.request(call.method, call.target, call.body);
    EXPECT_EQ(response.status, 404u) << call.method << " " << call.target << ": " << response.body;
    if (response.status == 404u) {
      EXPECT_EQ(error_of(response).code(), "not_found");
    }
  }
  const std::vector<Call> e2b_calls = {
      {"GET", "/sandboxes/" + e2b_id, ""},
      {"DELETE", "/sandboxes/" + e2b_id, ""},
      {"POST", "/sandboxes/" + e2b_id + "/timeout", R"({"timeout": 5})"},
      {"POST", "/sandboxes/" + e2b_id + "/pause", ""},
      {"POST", "/sandboxes/" + e2b_id + "/connect", R"({"timeout": 60})"},
      {"POST", "/sandboxes/" + e2b_id + "/resume", R"({"timeout": 60})"},
      {"POST", "/sandboxes/" + e2b_id + "/fork", R"({"count": 1})"},
      {"POST", "/sandboxes/" + e2b_id + "/refreshes", ""},
      {"GET", "/v2/sandboxes/" + e2b_id, ""},
  };
  for (const auto& call : e2b_calls) {
    auto response = other.request(call.method, call.target, call.body, {{"X-API-KEY", bob}});
    EXPECT_EQ(response.status, 404u) << call.method << " " << call.target << ": " << response.body;
  }
  // Bob's listings show none of it.
  EXPECT_EQ(parse<api::ListSandboxesResponse>(other.request("GET", "/v1/sandboxes").body)
                .sandboxes_size(),
            1);
  EXPECT_EQ(parse<api::ListSpacesResponse>(other.request("GET", "/v1/spaces").body).spaces_size(),
            0);
  auto bob_e2b = other.request("GET", "/v2/sandboxes", "", {{"X-API-KEY", bob}});
  EXPECT_EQ(bob_e2b.body.find(e2b_id), std::string::npos) << bob_e2b.body;

  // Nothing changed for Alice.
  auto got = owner.request("GET", sb);
  ASSERT_EQ(got.status, 200u);
  EXPECT_EQ(parse<api::Sandbox>(got.body).state(), "ready");
  EXPECT_EQ(owner.request("GET", sb + "/files?path=/data/mine").body, "alice's bytes");
  std::string text;
  auto ran = owner.stream("POST", sb + "/exec", R"({"code": "out hi"})",
                          [&](std::string_view data) { text.append(data); });
  EXPECT_EQ(ran.status, 200u);
  EXPECT_NE(text.find(R"("data":"hi")"), std::string::npos) << text;
  EXPECT_EQ(parse<api::Sandbox>(owner.request("GET", "/v1/sandboxes/" + child).body).state(),
            "ready");
  EXPECT_EQ(owner.request("GET", "/v1/spaces/" + space).status, 200u);
  auto e2b_after = owner.request("GET", "/sandboxes/" + e2b_id, "", {{"X-API-KEY", alice}});
  ASSERT_EQ(e2b_after.status, 200u);
  EXPECT_EQ(parse<e2b::SandboxDetail>(e2b_after.body).state(), "running");
  EXPECT_EQ(parse<e2b::SandboxDetail>(e2b_after.body).endat(), end_at);
  // And the owner may do what the other key could not.
  EXPECT_EQ(owner.request("POST", sb + "/merge_into/" + child).status, 200u);
  EXPECT_EQ(owner.request("POST", "/v1/spaces/" + space + "/resume").status, 201u);
}

TEST_F(TenantTest, MetricsNeedAnAdminKey) {
  start();
  auto refused = client(alice).request("GET", "/metrics");
  EXPECT_EQ(refused.status, 403u) << refused.body;
  EXPECT_EQ(error_of(refused).code(), "forbidden");
  EXPECT_NE(error_of(refused).message().find("admin key"), std::string::npos);
  auto served = client(admin).request("GET", "/metrics");
  EXPECT_EQ(served.status, 200u);
  EXPECT_NE(served.body.find("vesicle_max_sandboxes 6"), std::string::npos) << served.body;
  // This process booted no QEMU, so none was booted again.
  EXPECT_NE(served.body.find("\nvesicle_boot_retries_total 0\n"), std::string::npos) << served.body;
}

TEST_F(TenantTest, KeysReloadWithoutDroppingSandboxesAndARemovedKeysAreDestroyed) {
  start();
  auto alices = client(alice);
  auto bobs = client(bob);
  auto operator_ = client(admin);
  auto kept = create(alices);
  create(bobs);
  // hostd --new-key while hostd runs: the new key works after a reload.
  auto file = hostd::KeyStore::load(dir.path() / "keys");
  ASSERT_TRUE(file);
  auto carol = file->add();
  ASSERT_TRUE(carol);
  remove_key_line(bob_id);
  auto carols = client(carol->key);
  EXPECT_EQ(carols.request("GET", "/v1/sandboxes").status, 401u);
  EXPECT_EQ(alices.request("POST", "/v1/admin/keys/reload").status, 401u); // no admin
  auto reloaded = operator_.request("POST", "/v1/admin/keys/reload");
  ASSERT_EQ(reloaded.status, 200u) << reloaded.body;
  EXPECT_NE(reloaded.body.find("\"removed\": [\"" + bob_id + "\"]"), std::string::npos)
      << reloaded.body;
  EXPECT_NE(reloaded.body.find("\"sandboxes_destroyed\": 1"), std::string::npos);
  EXPECT_EQ(carols.request("GET", "/v1/sandboxes").status, 200u);
  EXPECT_EQ(bobs.request("GET", "/v1/sandboxes").status, 401u);
  // Alice's sandbox ran through it; Bob's is gone with its VM.
  EXPECT_EQ(parse<api::Sandbox>(alices.request("GET", "/v1/sandboxes/" + kept.id()).body).state(),
            "ready");
  EXPECT_EQ(admin_count(operator_), 1u);
  // A file that does not parse changes nothing.
  std::ofstream(dir.path() / "keys", std::ios::app) << "not a key line\n";
  auto bad = operator_.request("POST", "/v1/admin/keys/reload");
  EXPECT_NE(bad.status, 200u) << bad.body;
  EXPECT_NE(bad.body.find("line"), std::string::npos) << bad.body;
  EXPECT_EQ(carols.request("GET", "/v1/sandboxes").status, 200u);
}

TEST_F(TenantTest, ARemovedKeysSandboxesAreKeptWhenTheSettingSaysSo) {
  start([](config::HostdConfig& c) { c.mutable_keys()->set_removed_key_sandboxes("keep"); });
  auto bobs = client(bob);
  auto operator_ = client(admin);
  auto sandbox = create(bobs);
  remove_key_line(bob_id);
  auto reloaded = operator_.request("POST", "/v1/admin/keys/reload");
  ASSERT_EQ(reloaded.status, 200u) << reloaded.body;
  EXPECT_NE(reloaded.body.find("\"sandboxes_kept\": 1"), std::string::npos) << reloaded.body;
  EXPECT_EQ(bobs.request("GET", "/v1/sandboxes/" + sandbox.id()).status, 401u);
  // The operator still sees it, and can end it.
  EXPECT_EQ(admin_count(operator_), 1u);
  EXPECT_EQ(operator_.request("DELETE", "/v1/admin/sandboxes/" + sandbox.id()).status, 204u);
  EXPECT_EQ(admin_count(operator_), 0u);
}

TEST_F(TenantTest, RequestsPastTheTiersRateAre429WithRetryAfter) {
  start(
      [](config::HostdConfig& c) { c.mutable_tiers()->mutable_free()->set_max_requests_per_s(2); });
  auto alices = client(alice);
  // A burst of twice the rate passes, the next is refused.
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(alices.request("GET", "/v1/sandboxes").status, 200u) << i;
  auto refused = alices.request("GET", "/v1/sandboxes");
  ASSERT_EQ(refused.status, 429u) << refused.body;
  EXPECT_EQ(refused.header("retry-after"), "1");
  EXPECT_EQ(error_of(refused).code(), "quota_exceeded");
  EXPECT_NE(error_of(refused).message().find("max_requests_per_s"), std::string::npos);
  // E2B's routes count against the same key.
  auto e2b = alices.request("GET", "/v2/sandboxes", "", {{"X-API-KEY", alice}});
  EXPECT_EQ(e2b.status, 429u);
  EXPECT_EQ(e2b.header("retry-after"), "1");
  // Other keys are not affected, and the key may go on after the wait.
  EXPECT_EQ(client(bob).request("GET", "/v1/sandboxes").status, 200u);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_EQ(alices.request("GET", "/v1/sandboxes").status, 200u);
}

TEST_F(TenantTest, VcpusAreCappedByTheKeysTier) {
  start();
  auto alices = client(alice);
  EXPECT_EQ(create(alices, R"({"memory_mib": 256, "vcpus": 8})").vcpus(), 2u);
}

TEST_F(TenantTest, SpacesPerKeyAreCappedByCount) {
  start([](config::HostdConfig& c) { c.mutable_tiers()->mutable_free()->set_max_spaces(1); });
  auto alices = client(alice);
  auto first = create(alices), second = create(alices);
  ASSERT_EQ(alices.request("POST", "/v1/sandboxes/" + first.id() + "/freeze").status, 200u);
  auto refused = alices.request("POST", "/v1/sandboxes/" + second.id() + "/freeze");
  ASSERT_EQ(refused.status, 429u) << refused.body;
  EXPECT_NE(error_of(refused).message().find("max_spaces"), std::string::npos);
  EXPECT_NE(error_of(refused).message().find("DELETE /v1/spaces/"), std::string::npos);
  // A persistent sandbox would be frozen when idle: refused as well.
  auto persistent =
      alices.request("POST", "/v1/sandboxes", R"({"memory_mib": 256, "persistent": true})");
  EXPECT_EQ(persistent.status, 429u) << persistent.body;
  // The sandbox that was not frozen runs on; Bob has his own quota.
  EXPECT_EQ(parse<api::Sandbox>(alices.request("GET", "/v1/sandboxes/" + second.id()).body).state(),
            "ready");
  auto bobs = client(bob);
  auto his = create(bobs);
  EXPECT_EQ(bobs.request("POST", "/v1/sandboxes/" + his.id() + "/freeze").status, 200u);
}

TEST_F(TenantTest, SpacesPerKeyAreCappedBySize) {
  start([](config::HostdConfig& c) { c.mutable_tiers()->mutable_free()->set_max_spaces_mib(200); });
  auto alices = client(alice);
  auto sandbox = create(alices); // 256 MiB of RAM: its Space would not fit
  auto refused = alices.request("POST", "/v1/sandboxes/" + sandbox.id() + "/freeze");
  ASSERT_EQ(refused.status, 429u) << refused.body;
  EXPECT_NE(error_of(refused).message().find("max_spaces_mib"), std::string::npos);
}

TEST_F(TenantTest, TemplatesCountAgainstTheStoredBytesCap) {
  start([](config::HostdConfig& c) { c.mutable_tiers()->mutable_free()->set_max_spaces_mib(200); });
  auto alices = client(alice);
  auto sandbox = create(alices); // 256 MiB of RAM: a template of it would not fit
  auto refused = alices.request("POST", "/v1/templates",
                                R"({"from_sandbox": ")" + sandbox.id() + R"(", "name": "big"})");
  ASSERT_EQ(refused.status, 429u) << refused.body;
  const auto message = error_of(refused).message();
  EXPECT_NE(message.find("max_spaces_mib"), std::string::npos) << message;
  EXPECT_NE(message.find("saving template big"), std::string::npos) << message;
  // Nothing was saved, and the sandbox goes on.
  auto listed = alices.request("GET", "/v1/templates");
  EXPECT_EQ(listed.body.find("\"big\""), std::string::npos) << listed.body;
  EXPECT_EQ(alices.request("GET", "/v1/sandboxes/" + sandbox.id()).status, 200u);
  // Another key's sandbox is unknown before any quota is looked at.
  auto foreign = client(bob).request(
      "POST", "/v1/templates", R"({"from_sandbox": ")" + sandbox.id() + R"(", "name": "big"})");
  EXPECT_EQ(foreign.status, 404u) << foreign.body;
}

TEST_F(TenantTest, ALifetimeCountsAcrossFreezesAndResumes) {
  start();
  auto alices = client(alice);
  // Persistent, 1 s of lifetime: the reaper freezes it into a Space.
  auto sandbox = create(alices, R"({"memory_mib": 256, "persistent": true, "max_lifetime_s": 1})");
  std::string space;
  for (int i = 0; i < 100 && space.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto got = parse<api::Sandbox>(alices.request("GET", "/v1/sandboxes/" + sandbox.id()).body);
    if (got.state() == "frozen") space = got.space_id();
  }
  ASSERT_FALSE(space.empty()) << "the reaper did not freeze the sandbox";
  // Resuming would start a fresh second: refused, saying why.
  auto resumed = alices.request("POST", "/v1/spaces/" + space + "/resume");
  ASSERT_EQ(resumed.status, 429u) << resumed.body;
  EXPECT_NE(error_of(resumed).message().find("whole lifetime"), std::string::npos);
  // The Space is kept, and deletable.
  EXPECT_EQ(alices.request("DELETE", "/v1/spaces/" + space).status, 204u);
}

} // namespace
