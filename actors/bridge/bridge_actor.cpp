#include "actors/bridge/bridge_actor.hpp"

#include <map>

#include <caf/send.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/ask.hpp"
#include "common/log.hpp"

namespace vesicle::net {

namespace {

// Generous: an acquire is ~1 ms pooled and ~10-30 ms fresh, a release up to
// ~30 ms; the mailbox may hold a few of each.
constexpr auto kRequestTimeout = std::chrono::seconds(30);

// CAF destroys the state when the actor stops: members in reverse order, so
// the taps are closed before the manager destroys every slot.
struct BridgeState {
  std::unique_ptr<BridgeManager> manager;
  // Each lent slot's tap: the bridge owns the fd so a lease that never
  // reaches its VM (a timed-out request) cannot leak it.
  std::map<std::uint32_t, UniqueFd> taps;
  static inline const char* name = "vesicle.bridge";
};

caf::error failure(ErrorKind kind, Error error) {
  return to_caf_error(std::move(error).with_kind(kind));
}

// The bridge's answer as an Error that keeps its kind (a full host is
// capacity, a policy it cannot give is invalid_argument).
Result<void> from_caf(const caf::error& error, const char* doing) {
  return to_error(error).with_context(doing);
}

} // namespace

Result<EgressPolicy> egress_policy(bool egress, const std::vector<std::string>& allow,
                                   const SecretValues& secrets) {
  if (!egress) {
    if (!allow.empty())
      return make_error("check egress", "egress is off, so an allowlist would have no effect; "
                                        "send egress true (or leave it out) with egress_allow");
    if (!secrets.empty())
      return make_error("check egress", "egress is off, so secrets would have no effect");
    return EgressPolicy::off();
  }
  if (allow.empty()) {
    if (!secrets.empty())
      return make_error("check egress",
                        "secrets need an allowlist (egress_allow) naming each of their hosts");
    return EgressPolicy::open();
  }
  auto policy = EgressPolicy::allowlist(allow);
  if (!policy || secrets.empty()) return policy;
  for (const auto& [host, headers] : *secrets.grants) {
    auto& fields = policy->secrets[host];
    for (const auto& [name, value] : headers)
      fields.push_back(HeaderField{name, value});
  }
  return policy;
}

bridge_actor spawn_bridge(caf::actor_system& system, std::unique_ptr<BridgeManager> manager) {
  // spawn() copies its arguments; hand the manager over through a shared
  // holder that the actor empties at once.
  auto holder = std::make_shared<std::unique_ptr<BridgeManager>>(std::move(manager));
  auto body =
      [holder](bridge_actor::stateful_pointer<BridgeState> self) -> bridge_actor::behavior_type {
    self->state.manager = std::move(*holder);
    return {
        [self](net_acquire_atom, bool egress, const std::vector<std::string>& allow,
               const SecretValues& secrets) -> caf::result<NetSlot> {
          auto& manager = *self->state.manager;
          auto policy = egress_policy(egress, allow, secrets);
          if (!policy) return failure(ErrorKind::invalid_argument, policy.error());
          if (policy->mode != EgressMode::off && manager.config().uplink.empty())
            return make_error(ErrorKind::invalid_argument,
                              std::string("egress ") + to_string(policy->mode) +
                                  " needs an uplink, and this host has none configured");
          auto stats = manager.stats();
          if (stats.in_use >= stats.max_slots)
            return make_error(ErrorKind::capacity,
                              "all " + std::to_string(stats.max_slots) +
                                  " network slots are in use; retry after a sandbox is "
                                  "destroyed, or raise network.max_slots");
          auto slot = manager.acquire_slot(*policy);
          if (!slot) return failure(ErrorKind::internal, slot.error());
          NetSlot lent{slot->id, slot->tap_fd.get()};
          self->state.taps[slot->id] = std::move(slot->tap_fd);
          return lent;
        },
        [self](net_egress_atom, std::uint32_t id, bool egress,
               const std::vector<std::string>& allow,
               const SecretValues& secrets) -> caf::result<done_atom> {
          auto policy = egress_policy(egress, allow, secrets);
          if (!policy) {
            // Fail closed, as the manager does for its own failures: the
            // slot must not keep the egress of whoever held it before.
            (void)self->state.manager->set_egress(id, EgressPolicy::off());
            return failure(ErrorKind::invalid_argument, policy.error());
          }
          auto set = self->state.manager->set_egress(id, *policy);
          if (!set) return failure(ErrorKind::internal, set.error());
          return done_atom::value;
        },
        [self](net_release_atom, std::uint32_t id) -> caf::result<done_atom> {
          self->state.taps.erase(id);
          auto released = self->state.manager->release_slot(id);
          if (!released) {
            log::warn("releasing a network slot failed",
                      {{"slot", id}, {"error", released.error().message()}});
            return failure(ErrorKind::internal, released.error());
          }
          return done_atom::value;
        },
    };
  };
  return system.spawn<caf::detached>(body);
}

NetworkLease::~NetworkLease() {
  if (bridge_) caf::anon_send(bridge_, net_release_atom::value, slot_.id);
}

vmm::NetworkAttachment NetworkLease::attachment() const {
  vmm::NetworkAttachment attachment;
  attachment.tap_fd = slot_.tap_fd;
  return attachment; // the MAC: the default, the same in every slot
}

boost::asio::awaitable<Result<void>> NetworkLease::set_egress(caf::actor_system& system,
                                                              bool egress,
                                                              std::vector<std::string> allow,
                                                              SecretValues secrets) {
  // Off until it is known to be in force: a failed change leaves it off.
  egress_ = false;
  allow_.clear();
  secrets_ = {};
  auto done = co_await ask<done_atom>(system, bridge_, kRequestTimeout, net_egress_atom::value,
                                      slot_.id, egress, allow, secrets);
  if (!done) co_return from_caf(done.error(), "set the sandbox's egress");
  egress_ = egress;
  allow_ = std::move(allow);
  secrets_ = std::move(secrets);
  co_return Result<void>{};
}

boost::asio::awaitable<Result<std::unique_ptr<NetworkLease>>>
NetworkLeases::acquire(bool egress, std::vector<std::string> allow, SecretValues secrets) {
  auto slot = co_await ask<NetSlot>(system_, bridge_, kRequestTimeout, net_acquire_atom::value,
                                    egress, allow, secrets);
  if (!slot) {
    auto failed = from_caf(slot.error(), "acquire a network slot");
    co_return std::move(failed).error();
  }
  co_return std::make_unique<NetworkLease>(bridge_, *slot, egress, std::move(allow),
                                           std::move(secrets));
}

} // namespace vesicle::net
