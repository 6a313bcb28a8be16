// Network slots themselves: configuration checks, the rules against the
// kernel, the real tap path and its fd handoff, reclaiming what a killed run
// left, and leaks over many acquire/release cycles. Needs root.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "net/bridge.hpp"
#include "net/nft.hpp"
#include "net/ruleset.hpp"
#include "tests/net/probe.hpp"
#include "tests/net/testnet.hpp"

namespace vesicle::net {
namespace {

using namespace std::chrono_literals;

constexpr const char* kInternetPrefix = "vu";
constexpr const char* kBridgePrefix = "vq";
constexpr uint8_t kBlock = 224; // 10.224.0.0/16, routing table 1224

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

size_t named_netns_count(const std::string& prefix) {
  auto names = list_named_netns(prefix + "-");
  return names ? names->size() : 0;
}

BridgeConfig offline_config() {
  BridgeConfig config;
  config.prefix = kBridgePrefix;
  config.transit = Cidr{Ipv4{uint32_t{10} << 24 | uint32_t{kBlock} << 16}, 16};
  config.route_table = 1000 + kBlock;
  config.rule_priority = 7000 + 2u * kBlock;
  config.max_slots = 8;
  config.max_pooled = 4;
  return config;
}

TEST(BridgeConfig, RefusesWhatWouldBreakTheHostOrItself) {
  auto good = offline_config();
  good.uplink = "eth9";
  good.upstream_resolver = Ipv4::parse("198.18.1.53").value();
  EXPECT_TRUE(good.validate());
  auto check = [&](auto change, const char* expect) {
    auto config = good;
    change(config);
    auto valid = config.validate();
    ASSERT_FALSE(valid) << expect;
    EXPECT_TRUE(contains(valid.error().message(), expect)) << valid.error().message();
  };
  check([](BridgeConfig& c) { c.prefix = "Bad"; }, "prefix");
  check([](BridgeConfig& c) { c.prefix = "toolong"; }, "prefix");
  check([](BridgeConfig& c) { c.uplink = "vq-up"; }, "carry the prefix");
  check([](BridgeConfig& c) { c.uplink = "eth0; drop"; }, "interface name");
  check([](BridgeConfig& c) { c.upstream_resolver = Ipv4{0x7F000035}; }, "through the uplink");
  check([](BridgeConfig& c) { c.transit = Cidr::parse("172.16.0.0/12").value(); }, "overlaps");
  check(
      [](BridgeConfig& c) {
        c.transit = Cidr::parse("10.9.0.0/29").value();
        c.max_slots = 2;
      },
      "max_slots");
  check([](BridgeConfig& c) { c.route_table = 254; }, "route_table");
  check([](BridgeConfig& c) { c.rule_priority = 32765; }, "rule_priority");
  check([](BridgeConfig& c) { c.max_pooled = 9; }, "max_pooled");
}

class Slots : public ::testing::Test {
protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0) << "these tests make network namespaces: run them as root";
    auto reclaimed = BridgeManager::reclaim_leftovers(offline_config());
    ASSERT_TRUE(reclaimed) << reclaimed.error().message();
    fds_before_ = testnet::open_fd_count();
  }
  void TearDown() override {
    auto left = BridgeManager::find_leftovers(offline_config());
    ASSERT_TRUE(left) << left.error().message();
    EXPECT_TRUE(left->empty()) << left->describe();
    EXPECT_EQ(testnet::open_fd_count(), fds_before_) << "fds leaked";
  }
  int fds_before_ = 0;
};

TEST_F(Slots, RulesetsPassTheKernelsCheck) {
  auto scratch = create_named_netns(std::string(kBridgePrefix) + "-check");
  ASSERT_TRUE(scratch) << scratch.error().message();
  auto transit = Cidr::parse("10.222.0.0/16").value();
  auto denied = always_denied_networks(transit);
  auto extra = default_host_networks();
  denied.insert(denied.end(), extra.begin(), extra.end());
  auto resolver = Ipv4::parse("198.18.1.53").value();
  auto checked = in_netns(*scratch, [&]() -> Result<void> {
    auto nft = Nft::open("scratch");
    if (!nft) return std::move(nft).error();
    std::vector<std::string> scripts = {
        host_ruleset({"vq_host", "vq-up", "eth9", denied, resolver}),
        host_ruleset({"vq_host", "vq-up", "", denied, resolver}),
        egress_ruleset({"vq_egress", denied, resolver}),
    };
    for (auto mode : {EgressMode::off, EgressMode::open, EgressMode::allowlist}) {
      // With the default caps (ct count, limit rate, SMTP closed), and none.
      scripts.push_back(
          slot_ruleset({"vq_slot", mode, Ipv4{0x0ADE0006}, denied, resolver, GuestLimits{}}));
      scripts.push_back(slot_ruleset(
          {"vq_slot", mode, Ipv4{0x0ADE0006}, denied, resolver, GuestLimits{0, 0, true}}));
    }
    for (const auto& script : scripts) {
      if (auto ok = (*nft)->run(script); !ok) return std::move(ok).error().with_context(script);
    }
    // The element updates the DNS forwarder makes, against the live table.
    std::vector<AllowedElement> elements{{Ipv4{0xC612010A}, std::chrono::seconds(60)}};
    if (auto ok = (*nft)->run(allowed_elements("vq_slot", elements, false)); !ok) {
      return std::move(ok).error();
    }
    if (auto ok = (*nft)->run(allowed_elements("vq_slot", elements, true)); !ok) {
      return std::move(ok).error();
    }
    auto listed = (*nft)->run("list set inet vq_slot allowed");
    if (!listed) return std::move(listed).error();
    if (!contains(*listed, "198.18.1.10")) return make_error("list set", *listed);
    return {};
  });
  EXPECT_TRUE(checked) << checked.error().message();
  scratch = Netns();
  ASSERT_TRUE(delete_named_netns(std::string(kBridgePrefix) + "-check"));
}

// hostd holds several descriptors per sandbox. libnftables waits with
// select(), which glibc aborts on a descriptor numbered 1024 or more: past
// ~100 sandboxes with networking, hostd died opening a slot's context
// (density_bench, 2026-12-06). Its calls run in a descriptor table of their
// own (nft.cpp), so numbers taken elsewhere do not matter.
TEST_F(Slots, NftablesWorksWhileTheProcessHoldsThousandsOfDescriptors) {
  rlimit limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &limit), 0);
  const rlimit before = limit;
  if (limit.rlim_cur < 4096) {
    limit.rlim_cur = std::min<rlim_t>(4096, limit.rlim_max);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &limit), 0);
  }
  ASSERT_GE(limit.rlim_cur, 2048u) << "the test needs 2048 descriptors";
  std::vector<UniqueFd> held;
  while (held.empty() || held.back().get() < 1500) {
    held.emplace_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(held.back()) << "open /dev/null";
  }
  const std::string name = std::string(kBridgePrefix) + "-fds";
  auto scratch = create_named_netns(name);
  ASSERT_TRUE(scratch) << scratch.error().message();
  auto done = in_netns(*scratch, [&]() -> Result<std::string> {
    auto nft = Nft::open("scratch");
    if (!nft) return std::move(nft).error();
    if (auto ok = (*nft)->run("add table inet vq_fds\nadd chain inet vq_fds c"); !ok)
      return std::move(ok).error();
    return (*nft)->run("list table inet vq_fds");
  });
  ASSERT_TRUE(done) << done.error().message();
  EXPECT_TRUE(contains(*done, "chain c")) << *done;
  held.clear();
  scratch = Netns();
  ASSERT_TRUE(delete_named_netns(name));
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &before), 0);
}

// One Ethernet frame with a zero virtio-net header in front (IFF_VNET_HDR).
std::vector<uint8_t> arp_request_frame() {
  std::vector<uint8_t> frame(10, 0); // struct virtio_net_hdr
  const auto& guest = layout::kGuestMac.bytes;
  frame.insert(frame.end(), 6, 0xFF);
  frame.insert(frame.end(), guest.begin(), guest.end());
  frame.insert(frame.end(), {0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01});
  frame.insert(frame.end(), guest.begin(), guest.end());
  frame.insert(frame.end(), {172, 16, 0, 2});
  frame.insert(frame.end(), 6, 0x00);
  frame.insert(frame.end(), {172, 16, 0, 1});
  return frame;
}

// Sends ARP requests for the gateway into the tap, as a VM would, and waits
// for the slot's answer on the same fd. Requests are repeated like a real
// guest's: right after a tap is attached the kernel may drop the first
// reply (the carrier change is applied asynchronously).
bool gateway_answers_arp(int tap_fd) {
  auto request = arp_request_frame();
  auto deadline = std::chrono::steady_clock::now() + 5s;
  auto next_request = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() < deadline) {
    if (std::chrono::steady_clock::now() >= next_request) {
      if (write(tap_fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
        return false;
      }
      next_request += 300ms;
    }
    pollfd waiting{tap_fd, POLLIN, 0};
    if (poll(&waiting, 1, 50) <= 0) continue;
    uint8_t frame[2048];
    ssize_t n = read(tap_fd, frame, sizeof frame);
    if (n < 10 + 42) continue;
    const uint8_t* eth = frame + 10;
    bool is_arp_reply = eth[12] == 0x08 && eth[13] == 0x06 && eth[20] == 0x00 && eth[21] == 0x02;
    bool from_gateway = std::memcmp(eth + 6, layout::kGatewayMac.bytes.data(), 6) == 0;
    bool to_guest = std::memcmp(eth, layout::kGuestMac.bytes.data(), 6) == 0;
    if (is_arp_reply && from_gateway && to_guest) return true;
  }
  return false;
}

TEST_F(Slots, TapIsMadeInTheSlotAndItsFdHandedOver) {
  auto created = BridgeManager::create(offline_config());
  ASSERT_TRUE(created) << created.error().message();
  auto& manager = **created;
  auto slot = manager.acquire_slot(EgressPolicy::off());
  ASSERT_TRUE(slot) << slot.error().message();
  ASSERT_TRUE(slot->tap_fd.valid());
  EXPECT_EQ(slot->tap_name, "tap0");
  EXPECT_EQ(slot->guest_mac.str(), "02:76:73:00:00:02");
  EXPECT_EQ(slot->guest_ip.str(), "172.16.0.2");
  EXPECT_EQ(slot->gateway.str(), "172.16.0.1");
  EXPECT_EQ(slot->dns.str(), "172.16.0.1");
  EXPECT_TRUE(slot->guest_netns.empty());

  ifreq request{};
  ASSERT_EQ(ioctl(slot->tap_fd.get(), TUNGETIFF, &request), 0) << std::strerror(errno);
  EXPECT_STREQ(request.ifr_name, "tap0");
  EXPECT_EQ(request.ifr_flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR),
            IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
  // The fd is used from this (host-namespace) thread: the VM's side of the
  // tap works without anyone entering the slot.
  EXPECT_TRUE(gateway_answers_arp(slot->tap_fd.get()));

  // Releasing while a "VM" still holds the tap: the slot is pooled, but the
  // next acquire finds it busy, drops it and makes a fresh one.
  UniqueFd still_held = std::move(slot->tap_fd);
  ASSERT_TRUE(manager.release_slot(slot->id));
  auto next = manager.acquire_slot(EgressPolicy::off());
  ASSERT_TRUE(next) << next.error().message();
  EXPECT_EQ(manager.stats().dropped_busy, 1u);
  ASSERT_TRUE(next->tap_fd.valid());
  EXPECT_TRUE(gateway_answers_arp(next->tap_fd.get()));
  next->tap_fd.reset();
  ASSERT_TRUE(manager.release_slot(next->id));
  // With the VM gone the pooled slot attaches again.
  auto again = manager.acquire_slot(EgressPolicy::off());
  ASSERT_TRUE(again) << again.error().message();
  EXPECT_EQ(manager.stats().acquired_pooled, 1u); // the busy one was not handed out
  EXPECT_EQ(manager.stats().acquired_fresh, 2u);
  again->tap_fd.reset();
  ASSERT_TRUE(manager.release_slot(again->id));
  created->reset();
  still_held.reset();
}

TEST_F(Slots, ExhaustionAndDoubleReleaseAreClearErrors) {
  auto config = offline_config();
  config.max_slots = 2;
  config.max_pooled = 2;
  auto created = BridgeManager::create(config);
  ASSERT_TRUE(created) << created.error().message();
  auto& manager = **created;
  auto a = manager.acquire_slot(EgressPolicy::off());
  auto b = manager.acquire_slot(EgressPolicy::off());
  ASSERT_TRUE(a && b);
  auto c = manager.acquire_slot(EgressPolicy::off());
  ASSERT_FALSE(c);
  EXPECT_TRUE(contains(c.error().message(), "all 2 slots are in use")) << c.error().message();
  ASSERT_TRUE(manager.release_slot(a->id));
  auto twice = manager.release_slot(a->id);
  ASSERT_FALSE(twice);
  EXPECT_TRUE(contains(twice.error().message(), "released twice")) << twice.error().message();
  auto bad = manager.acquire_slot(EgressPolicy{EgressMode::allowlist, {"10.0.0.1"}, {}});
  EXPECT_FALSE(bad);
  ASSERT_TRUE(manager.release_slot(b->id));
  EXPECT_EQ(manager.stats().in_use, 0u);
  EXPECT_EQ(manager.stats().pooled, 2u);
}

class WithInternet : public Slots {
protected:
  void SetUp() override {
    Slots::SetUp();
    auto started = testnet::TestInternet::start(kInternetPrefix);
    ASSERT_TRUE(started) << started.error().message();
    internet_ = std::move(*started);
    fds_before_ = testnet::open_fd_count();
  }
  void TearDown() override {
    Slots::TearDown();
    internet_.reset();
    EXPECT_EQ(named_netns_count(kInternetPrefix), 0u);
  }
  BridgeConfig config() const { return internet_->bridge_config(kBridgePrefix, kBlock); }
  std::unique_ptr<testnet::TestInternet> internet_;
};

// hostd killed with -9 mid-flight: the next start finds and removes all of
// it (namespaces, host link, rules, policy routes, nft table).
TEST_F(WithInternet, ReclaimsWhatAKilledRunLeft) {
  auto config = this->config();
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto created = BridgeManager::create(config);
    if (!created) _exit(2);
    for (const auto& policy : {EgressPolicy::open(), EgressPolicy::off(),
                               EgressPolicy::allowlist({"allowed.test"}).value()}) {
      auto slot = (*created)->acquire_slot(policy);
      if (!slot) _exit(3);
      (void)slot.value().id;
    }
    char ok = 'k';
    if (write(ready[1], &ok, 1) != 1) _exit(4);
    while (true)
      pause();
  }
  close(ready[1]);
  pollfd waiting{ready[0], POLLIN, 0};
  char ok = 0;
  bool started = poll(&waiting, 1, 60000) == 1 && read(ready[0], &ok, 1) == 1 && ok == 'k';
  close(ready[0]);
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(started) << "the child did not set up its slots (exit status " << status << ")";

  auto left = BridgeManager::find_leftovers(config);
  ASSERT_TRUE(left) << left.error().message();
  EXPECT_EQ(left->netns.size(), 7u) << left->describe(); // egress, 3 slots, 3 stand-in guests
  EXPECT_EQ(left->links, std::vector<std::string>{"vq-up"});
  EXPECT_EQ(left->tables, std::vector<std::string>{"inet vq_host"});
  EXPECT_EQ(left->rules, 2);
  EXPECT_EQ(left->routes, 1);

  auto restarted = BridgeManager::create(config);
  ASSERT_TRUE(restarted) << restarted.error().message();
  EXPECT_EQ((*restarted)->reclaimed_at_start().netns, left->netns);
  EXPECT_EQ((*restarted)->reclaimed_at_start().rules, 2);
  // And the new run works.
  auto slot = (*restarted)->acquire_slot(EgressPolicy::open());
  ASSERT_TRUE(slot) << slot.error().message();
  auto guest = Netns::open_named(slot->guest_netns);
  ASSERT_TRUE(guest);
  auto banner = probe::read_banner(*guest, testnet::kAllowedIp, 7000);
  EXPECT_TRUE(banner) << banner.error().message();
  guest = Netns();
  ASSERT_TRUE((*restarted)->release_slot(slot->id));
}

// The test internet is only required to be up (the probes reach its hosts).
void cycle(BridgeManager& manager, int cycles, const testnet::TestInternet& /*internet*/,
           bool probe_every_tenth) {
  const EgressPolicy policies[] = {EgressPolicy::open(), EgressPolicy::off(),
                                   EgressPolicy::allowlist({"allowed.test"}).value()};
  for (int i = 0; i < cycles; ++i) {
    const auto& policy = policies[i % 3];
    auto slot = manager.acquire_slot(policy);
    ASSERT_TRUE(slot) << "cycle " << i << ": " << slot.error().message();
    if (probe_every_tenth && i % 10 == 0) {
      auto guest = Netns::open_named(slot->guest_netns);
      ASSERT_TRUE(guest);
      auto answer = probe::dns_query(*guest, layout::kGatewayAddress, "allowed.test");
      EXPECT_EQ(answer.ok(), policy.mode != EgressMode::off) << "cycle " << i;
    }
    auto released = manager.release_slot(slot->id);
    ASSERT_TRUE(released) << "cycle " << i << ": " << released.error().message();
  }
}

TEST_F(WithInternet, TwoHundredPooledCyclesLeaveNothingBehind) {
  auto created = BridgeManager::create(config());
  ASSERT_TRUE(created) << created.error().message();
  auto& manager = **created;
  cycle(manager, 10, *internet_, false);
  int fds_warm = testnet::open_fd_count();
  size_t netns_warm = named_netns_count(kBridgePrefix);
  auto started = std::chrono::steady_clock::now();
  cycle(manager, 200, *internet_, true);
  auto took = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(testnet::open_fd_count(), fds_warm);
  EXPECT_EQ(named_netns_count(kBridgePrefix), netns_warm);
  auto stats = manager.stats();
  EXPECT_EQ(stats.in_use, 0u);
  EXPECT_EQ(stats.created, 1u); // one slot, reused 210 times
  std::printf("200 pooled acquire/release cycles: %.1f ms each\n",
              std::chrono::duration<double, std::milli>(took).count() / 200);
}

TEST_F(WithInternet, TwoHundredFreshCyclesLeaveNothingBehind) {
  auto config = this->config();
  config.max_pooled = 0; // every release destroys, every acquire creates
  auto created = BridgeManager::create(config);
  ASSERT_TRUE(created) << created.error().message();
  auto& manager = **created;
  cycle(manager, 3, *internet_, false);
  int fds_warm = testnet::open_fd_count();
  auto started = std::chrono::steady_clock::now();
  cycle(manager, 200, *internet_, true);
  auto took = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(testnet::open_fd_count(), fds_warm);
  EXPECT_EQ(named_netns_count(kBridgePrefix), 1u); // the egress namespace only
  auto stats = manager.stats();
  EXPECT_EQ(stats.created, 203u);
  EXPECT_EQ(stats.destroyed, 203u);
  std::printf("200 fresh acquire/release cycles: %.1f ms each\n",
              std::chrono::duration<double, std::milli>(took).count() / 200);
}

} // namespace
} // namespace vesicle::net
