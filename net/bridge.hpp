// The bridge manager: network slots for sandboxes. hostd's bridge actor owns
// one and calls it from a worker thread (every call does blocking netlink
// work; all are plain synchronous functions, safe from any thread, and
// serialized inside).
//
// A slot is a network namespace holding the VM's tap, a veth to the shared
// egress namespace, and the slot's nftables table; see layout.hpp for the
// picture and README.md for the design. Slots are pooled: a released slot is
// scrubbed (services stopped, firewall reset to "off", conntrack flushed,
// route removed) and handed out again.
//
// For the QEMU driver: Slot::tap_fd is an open, attached tap fd. Pass it to
// QEMU (leave it open across exec, without FD_CLOEXEC) as
//   -netdev tap,id=net0,fd=N -device virtio-net-device,netdev=net0,mac=<guest_mac>
// and close hostd's copy once QEMU has started. QEMU runs in the host's
// namespace. Release the slot only after QEMU has exited: a tap still held
// makes the next acquire of that slot fail with EBUSY (the manager then
// drops that slot and makes a fresh one).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "common/unique_fd.hpp"
#include "net/egress.hpp"
#include "net/egress_services.hpp"
#include "net/ipv4.hpp"
#include "net/layout.hpp"
#include "net/netns.hpp"
#include "net/nft.hpp"
#include "net/rtnl.hpp"
#include "net/ruleset.hpp"

namespace vesicle::net {

// Networks on the host's side that sandboxes never reach: the private and
// shared address ranges (a LAN, a cloud VPC, a carrier-grade NAT).
std::vector<Cidr> default_host_networks();

struct BridgeConfig {
  // Names everything this manager makes: namespaces "<prefix>-<n>" and
  // "<prefix>-eg", the host link "<prefix>-up", nft tables "<prefix>_*".
  // Anything with these names is reclaimed at start. 1-5 of [a-z0-9],
  // starting with a letter.
  std::string prefix = "vs";
  // The host interface sandbox traffic leaves by, and its next hop (none: the
  // uplink is point-to-point). Sandbox traffic never uses any other route.
  // Empty: no uplink, only egress off can be acquired.
  std::string uplink;
  std::optional<Ipv4> uplink_gateway;
  // The resolver open-mode guests query and the allowlist forwarder asks.
  // Reached through the uplink like everything else.
  Ipv4 upstream_resolver;
  // Private network for the links between host, egress namespace and slots;
  // it must not be used on the host for anything else.
  Cidr transit{Ipv4{0x0ADE0000}, 16}; // 10.222.0.0/16
  // Host policy routing: table and the two rule priorities used.
  uint32_t route_table = 7316;
  uint32_t rule_priority = 7316;
  // Denied for every sandbox in addition to loopback, link-local/metadata,
  // multicast and the transit network (see ruleset.hpp).
  std::vector<Cidr> denied_networks = default_host_networks();
  // Holes the operator makes in denied_networks (an internal mirror in
  // 10.0.0.0/8, say). Never in the always-denied networks: validate()
  // refuses an overlap with loopback, link-local, multicast, the guest or
  // the transit network, and the metadata endpoints stay denied inside an
  // allowed network (by their own addresses).
  std::vector<Cidr> allowed_networks;
  // Each sandbox's caps on connections (count, rate) and port 25.
  GuestLimits guest_limits;
  // The allowlist proxy, per sandbox: connections at once (two of hostd's
  // fds each; past it the guest's connection is reset at once) and how long
  // one may pass no byte either way before it is closed.
  size_t proxy_max_connections = 128;
  std::chrono::seconds proxy_idle_timeout{300};
  size_t max_slots = 64; // at most this many slots at once
  size_t max_pooled = 8; // released slots kept for reuse
  std::chrono::seconds dns_min_ttl{60};
  std::chrono::seconds dns_max_ttl{600};
  // Test seam, never for production: instead of a tap, each slot's "tap0"
  // is a veth whose other end is eth0 in a stand-in guest namespace
  // "<prefix>-<n>g", configured as the guest agent would configure a VM, so
  // tests can run real clients "inside the guest" without a VM.
  bool test_guest_namespaces = false;
  // Secrets (secrets.hpp): the per-install CA's directory (empty: grants are
  // refused), and a CA trusted for upstream hosts besides the system store
  // (tests: the test internet's own CA; guests never trust it).
  std::filesystem::path secrets_ca_dir;
  std::filesystem::path upstream_extra_ca;

  Result<void> validate() const;
};

// What hostd gets for a sandbox. Everything a VM needs to be configured
// identically in every slot; see README.md for what the guest agent does
// with it.
struct Slot {
  uint32_t id = 0;
  std::string netns;    // the slot's namespace name
  std::string tap_name; // "tap0", inside netns
  UniqueFd tap_fd;      // attached tap for QEMU; invalid with test_guest_namespaces
  Ipv4 guest_ip = layout::kGuestAddress;
  int guest_prefix = layout::kGuestPrefix;
  Mac guest_mac = layout::kGuestMac;
  Ipv4 gateway = layout::kGatewayAddress;
  Ipv4 dns = layout::kGatewayAddress; // the guest's only resolver
  EgressPolicy policy;
  std::string guest_netns; // test seam only: the stand-in guest's namespace
};

struct BridgeStats {
  size_t in_use = 0;
  size_t pooled = 0;
  size_t max_slots = 0;
  uint64_t created = 0;
  uint64_t destroyed = 0;
  uint64_t acquired_pooled = 0;
  uint64_t acquired_fresh = 0;
  uint64_t dropped_busy = 0; // slots dropped because their tap was still held
};

// What the manager would remove (or removed) by prefix.
struct Leftovers {
  std::vector<std::string> netns;  // names under /run/netns
  std::vector<std::string> links;  // host links
  std::vector<std::string> tables; // host nft tables
  int rules = 0;                   // host ip rules on the host link
  int routes = 0;                  // routes in the policy table
  bool empty() const {
    return netns.empty() && links.empty() && tables.empty() && rules == 0 && routes == 0;
  }
  std::string describe() const;
};

class BridgeManager {
public:
  // Reclaims leftovers of an earlier run, then builds the egress namespace
  // and the host plumbing. The calling thread's namespace is "the host".
  static Result<std::unique_ptr<BridgeManager>> create(BridgeConfig config);
  // Destroys every slot, in use or pooled, and everything create() made.
  ~BridgeManager();
  BridgeManager(const BridgeManager&) = delete;
  BridgeManager& operator=(const BridgeManager&) = delete;

  struct AcquireOptions {
    // A fork child: start with the addresses its parent's DNS answers
    // allowed (the child's guest may have them cached). Allowlist only.
    std::optional<uint32_t> inherit_dns_from;
  };
  Result<Slot> acquire_slot(const EgressPolicy& policy, AcquireOptions options);
  Result<Slot> acquire_slot(const EgressPolicy& policy) { return acquire_slot(policy, {}); }
  // Changes the egress of a slot in use, e.g. for a warm-pool VM that was
  // started on an "off" slot and is now claimed by a sandbox with its own
  // settings. The slot is scrubbed first (services stopped, flows
  // forgotten), so nothing of the old mode carries over; on failure it is
  // left "off".
  Result<void> set_egress(uint32_t id, const EgressPolicy& policy, AcquireOptions options);
  Result<void> set_egress(uint32_t id, const EgressPolicy& policy) {
    return set_egress(id, policy, {});
  }
  // Scrubs the slot and pools it (or destroys it when the pool is full).
  Result<void> release_slot(uint32_t id);
  // Makes `count` more slots ahead of demand (bounded by the pool size).
  Result<void> prewarm(size_t count);
  BridgeStats stats() const;
  const BridgeConfig& config() const { return config_; }
  // The egress CA's certificate (PEM) that a sandbox with secrets must
  // trust (actors/sandbox/guest_trust.hpp); empty without secrets_ca_dir.
  std::string egress_ca_pem() const {
    return interceptor_ ? interceptor_->ca().certificate_pem() : std::string();
  }
  // What create() reclaimed.
  const Leftovers& reclaimed_at_start() const { return reclaimed_; }
  // Counters of a slot's DNS forwarder and proxy (allowlist slots).
  SlotServiceCounters service_counters(uint32_t id);

  // Removes everything named by the config's prefix: namespaces, the host
  // link, its ip rules, the policy table's routes, the host nft table. Only
  // for when no manager with this prefix runs (hostd start, tests).
  static Result<Leftovers> reclaim_leftovers(const BridgeConfig& config);
  // The same, without removing anything (leak checks).
  static Result<Leftovers> find_leftovers(const BridgeConfig& config);

private:
  struct SlotState {
    uint32_t id = 0;
    Netns netns;
    std::shared_ptr<Nft> nft;
    bool in_use = false;
    bool services = false;
    bool marked = false; // its element is in the egress slot_mark map
    EgressPolicy policy;
  };

  explicit BridgeManager(BridgeConfig config);
  Result<EgressPolicy> checked_policy(const EgressPolicy& requested) const;
  Result<void> build_egress_and_host();
  Result<uint32_t> create_slot();
  Result<void> configure_slot(SlotState& slot, const EgressPolicy& policy,
                              std::optional<uint32_t> inherit_from);
  Result<UniqueFd> attach_tap(SlotState& slot);
  Result<void> scrub_slot(SlotState& slot);
  Result<void> destroy_slot(uint32_t id);
  Slot describe(const SlotState& slot, UniqueFd tap_fd) const;

  BridgeConfig config_;
  layout::TransitPlan plan_;
  std::vector<Cidr> denied_;
  Leftovers reclaimed_;
  Netns host_;
  Netns egress_;
  std::unique_ptr<Nft> egress_nft_;
  std::unique_ptr<EgressServices> services_;
  std::shared_ptr<TlsInterceptor> interceptor_; // with secrets_ca_dir only
  std::map<uint32_t, SlotState> slots_;
  std::deque<uint32_t> pool_;
  BridgeStats stats_;
  mutable std::mutex mutex_;
};

} // namespace vesicle::net
