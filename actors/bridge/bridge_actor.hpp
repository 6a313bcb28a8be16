// The bridge actor: hostd's owner of the BridgeManager (bridge.hpp). Every
// manager call does blocking netlink and nftables work, so the actor is
// spawned detached (its own thread, never a CAF scheduler thread) and the
// calls are serialized by its mailbox.
//
// NetworkLease is how a VM holds a slot: acquired (with its egress already
// in force) before the VM boots, its tap given to QEMU through
// VmConfig::network, released after the VM's process has exited. VmHost
// takes one per sandbox; a warm-pool VM can take one with egress off and
// change it with set_egress when a sandbox claims it.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <caf/actor_system.hpp>
#include <caf/typed_actor.hpp>

#include "common/result.hpp"
#include "messages/caf_types.hpp"
#include "net/bridge.hpp"
#include "net/egress.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::net {

// Egress as the API and SandboxSpec say it: `egress` false is off; true with
// a non-empty `allow` is an allowlist; true alone is open. `secrets` go with
// an allowlist only (the manager checks each name against it). Errors name
// the bad entry, never a secret's value.
Result<EgressPolicy> egress_policy(bool egress, const std::vector<std::string>& allow,
                                   const SecretValues& secrets = {});

using bridge_actor = caf::typed_actor<
    // egress, allow, secrets -> a slot with that egress in force, its tap fd owned by
    // the bridge until the release. ErrorKind::capacity when every slot is in
    // use, ErrorKind::invalid_argument for a policy this host cannot give (no
    // uplink), ErrorKind::internal when the kernel refuses.
    caf::replies_to<net_acquire_atom, bool, std::vector<std::string>, SecretValues>::with<NetSlot>,
    // slot id, egress, allow, secrets -> done once the new egress is in force (the
    // slot is scrubbed first; on any failure, a bad policy included, it is
    // left off)
    caf::replies_to<net_egress_atom, std::uint32_t, bool, std::vector<std::string>,
                    SecretValues>::with<done_atom>,
    // slot id -> done once its tap fd is closed and the slot scrubbed and
    // pooled (or destroyed). Send it only after the VM's process has exited.
    caf::replies_to<net_release_atom, std::uint32_t>::with<done_atom>>;

// Spawns the actor detached; it owns `manager` and destroys it (and every
// slot) when it stops.
bridge_actor spawn_bridge(caf::actor_system& system, std::unique_ptr<BridgeManager> manager);

// A slot held by one VM. Destroying the lease releases the slot (fire and
// forget), so hold it until the VM's process has exited.
class NetworkLease {
public:
  NetworkLease(bridge_actor bridge, NetSlot slot, bool egress, std::vector<std::string> allow,
               SecretValues secrets)
      : bridge_(std::move(bridge)), slot_(slot), egress_(egress), allow_(std::move(allow)),
        secrets_(std::move(secrets)) {}
  ~NetworkLease();
  NetworkLease(const NetworkLease&) = delete;
  NetworkLease& operator=(const NetworkLease&) = delete;

  std::uint32_t slot() const { return slot_.id; }
  // What VmConfig::network takes. The fd stays open until the release.
  vmm::NetworkAttachment attachment() const;

  // Changes the slot's egress (a pool VM claimed by a sandbox). Run on an
  // asio executor; completes once the new egress is in force.
  boost::asio::awaitable<Result<void>> set_egress(caf::actor_system& system, bool egress,
                                                  std::vector<std::string> allow,
                                                  SecretValues secrets = {});
  // Whether the slot's egress is already exactly this (then a claim needs
  // no set_egress). After a failed set_egress the slot is off.
  bool has_egress(bool egress, const std::vector<std::string>& allow,
                  const SecretValues& secrets = {}) const {
    return egress == egress_ && allow == allow_ && secrets == secrets_;
  }

private:
  bridge_actor bridge_;
  NetSlot slot_;
  bool egress_;
  std::vector<std::string> allow_;
  SecretValues secrets_;
};

// What VmHost needs to lease slots: the actor system (requests from asio
// coroutines go through a short-lived actor) and the bridge.
class NetworkLeases {
public:
  NetworkLeases(caf::actor_system& system, bridge_actor bridge)
      : system_(system), bridge_(std::move(bridge)) {}
  // Run on an asio executor; resumes there.
  boost::asio::awaitable<Result<std::unique_ptr<NetworkLease>>>
  acquire(bool egress, std::vector<std::string> allow, SecretValues secrets = {});
  caf::actor_system& system() const { return system_; }
  const bridge_actor& bridge() const { return bridge_; }

private:
  caf::actor_system& system_;
  bridge_actor bridge_;
};

} // namespace vesicle::net
