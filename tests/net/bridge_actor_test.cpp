// The bridge actor and NetworkLease without a VM: leases taken from an asio
// coroutine, their egress changed the way a warm-pool VM's is when a sandbox
// claims it, checked from the slot's stand-in guest namespace
// (BridgeConfig::test_guest_namespaces) against the test internet. Needs root.
#include <unistd.h>

#include <utility>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/send.hpp>
#include <gtest/gtest.h>

#include "actors/bridge/bridge_actor.hpp"
#include "tests/net/probe.hpp"
#include "tests/net/testnet.hpp"

namespace vesicle::net {
namespace {

namespace asio = boost::asio;
using testnet::kAllowedIp;

constexpr const char* kInternetPrefix = "va";
constexpr const char* kBridgePrefix = "vc";
constexpr uint8_t kBlock = 229;

bool reaches(const Netns& guest) {
  auto got = probe::http_get(guest, kAllowedIp, 80, "allowed.test");
  return got && got->find("hello from allowed") != std::string::npos;
}

std::vector<std::string> none() {
  return {};
}
std::vector<std::string> names(std::string name) {
  return {std::move(name)};
}

template <class R> std::string why(const R& result) {
  return result ? std::string() : result.error().message();
}

// A pool VM's life: a lease with egress off, its egress set when claimed,
// capacity and bad policies refused, the slot reused after the release.
// (GCC 12 rejects some temporaries inside coroutines, gtest's assertions
// among them: failures are collected for the test body to report.)
asio::awaitable<void> scenario(caf::actor_system& system, NetworkLeases& leases,
                               std::vector<std::string>& failures, bool& finished) {
  auto check = [&](bool ok, std::string what) {
    if (!ok) failures.push_back(std::move(what));
  };
  auto leased = co_await leases.acquire(false, none());
  check(bool(leased), "acquire off: " + why(leased));
  if (!leased) co_return;
  auto lease = std::move(leased.value());
  auto guest = Netns::open_named(layout::guest_netns(kBridgePrefix, lease->slot()));
  check(bool(guest), "open the stand-in guest namespace");
  if (!guest) co_return;
  check(!reaches(*guest), "egress off reached the server");

  auto opened = co_await lease->set_egress(system, true, none());
  check(bool(opened), "set_egress open: " + why(opened));
  check(reaches(*guest), "egress open did not reach the server");
  auto listed = co_await lease->set_egress(system, true, names("allowed.test"));
  check(bool(listed), "set_egress allowlist: " + why(listed));
  auto allowed = probe::dns_query(*guest, layout::kGatewayAddress, "allowed.test");
  check(allowed && allowed->rcode == 0 && allowed->addresses.size() == 1,
        "allowlist: no answer for allowed.test");
  auto denied = probe::dns_query(*guest, layout::kGatewayAddress, "denied.test");
  check(denied && denied->rcode == 3, "allowlist: denied.test was not NXDOMAIN");
  check(reaches(*guest), "allowlist did not reach allowed.test");
  auto bad = co_await lease->set_egress(system, true, names("198.18.1.10"));
  check(!bad, "set_egress accepted an IP literal");
  check(!reaches(*guest), "a failed set_egress did not leave the slot off");

  auto second = co_await leases.acquire(true, none());
  check(bool(second), "acquire a second slot: " + why(second));
  auto third = co_await leases.acquire(false, none());
  check(!third, "a third slot past max_slots 2");
  if (!third)
    check(third.error().message().find("in use") != std::string::npos,
          "capacity error: " + third.error().message());
  auto invalid = co_await leases.acquire(false, names("allowed.test"));
  check(!invalid, "acquire with egress off and a list");

  // Dropping a lease releases its slot: the next acquire gets it back.
  const auto first_id = lease->slot();
  lease.reset();
  *guest = Netns();
  auto again = co_await leases.acquire(false, none());
  check(again && (*again)->slot() == first_id, "the released slot was not reused");
  finished = true;
}

TEST(BridgeActor, LeasesAcquireChangeEgressAndRelease) {
  if (geteuid() != 0) GTEST_SKIP() << "makes network namespaces: run as root";
  (void)testnet::TestInternet::reclaim(kInternetPrefix);
  auto internet = testnet::TestInternet::start(kInternetPrefix);
  ASSERT_TRUE(internet) << internet.error().message();
  auto config = (*internet)->bridge_config(kBridgePrefix, kBlock);
  config.max_slots = 2;
  config.max_pooled = 1;
  {
    caf::actor_system_config actor_config;
    register_caf_types(actor_config);
    actor_config.set("logger.console", caf::atom("none"));
    caf::actor_system system(actor_config);
    auto manager = BridgeManager::create(config);
    ASSERT_TRUE(manager) << manager.error().message();
    auto bridge = spawn_bridge(system, std::move(*manager));
    NetworkLeases leases(system, bridge);

    asio::io_context io;
    bool finished = false;
    std::vector<std::string> failures;
    asio::co_spawn(io, scenario(system, leases, failures, finished),
                   [](std::exception_ptr failure) {
                     if (failure) std::rethrow_exception(failure);
                   });
    io.run();
    EXPECT_TRUE(finished);
    for (const auto& failure : failures)
      ADD_FAILURE() << failure;
    // Stopping the actor destroys the manager and every slot.
    caf::anon_send_exit(bridge, caf::exit_reason::user_shutdown);
    system.await_all_actors_done();
  }
  auto left = BridgeManager::find_leftovers(config);
  ASSERT_TRUE(left);
  EXPECT_TRUE(left->empty()) << left->describe();
  (void)BridgeManager::reclaim_leftovers(config);
}

} // namespace
} // namespace vesicle::net
