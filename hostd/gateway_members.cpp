#include "hostd/gateway_members.hpp"

#include <algorithm>

#include <boost/asio/post.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include "common/log.hpp"
#include "hostd/cluster_identity.hpp"
#include "hostd/config.hpp"
#include "messages/caf_types.hpp"

namespace vesicle::hostd {

namespace asio = boost::asio;

// -- Members (on the executor) -------------------------------------------------

namespace {

void set_address(Member& member) {
  std::string_view url = member.report.url;
  if (url.rfind("http://", 0) == 0) url.remove_prefix(7);
  while (!url.empty() && url.back() == '/')
    url.remove_suffix(1);
  auto address = parse_listen_address(std::string(url));
  if (!address) {
    member.host.clear();
    return;
  }
  member.host = address->host;
  member.port = std::to_string(address->port);
}

} // namespace

void Members::joined(const NodeReport& report) {
  auto& member = members_[report.name];
  const bool was_up = member.up;
  member.report = report;
  set_address(member);
  member.up = !member.host.empty();
  member.down_reason = member.up ? "" : "its URL is not http://host:port: " + report.url;
  member.last_report = Clock::now();
  member.placed = 0;
  if (!was_up)
    log::info("cluster: node up", {{"node", report.name},
                                   {"region", report.region},
                                   {"url", report.url},
                                   {"available", report.available}});
}

void Members::reported(const NodeReport& report) {
  auto found = members_.find(report.name);
  if (found == members_.end()) return joined(report);
  auto& member = found->second;
  if (!member.up) return joined(report);
  member.report = report;
  member.last_report = Clock::now();
  member.placed = 0;
}

void Members::went_down(const std::string& name, const std::string& reason) {
  auto found = members_.find(name);
  if (found == members_.end() || !found->second.up) return;
  found->second.up = false;
  found->second.down_reason = reason;
  log::warn("cluster: node down", {{"node", name}, {"reason", reason}});
  // Abort the calls in flight; each abort's coroutine forgets itself later.
  auto pending = std::move(aborts_[name]);
  aborts_.erase(name);
  for (auto& [ticket, abort] : pending)
    abort();
}

const Member* Members::by_tag(const std::string& tag) const {
  for (const auto& [name, member] : members_)
    if (member.report.tag == tag) return &member;
  return nullptr;
}

const Member* Members::by_name(const std::string& name) const {
  auto found = members_.find(name);
  return found == members_.end() ? nullptr : &found->second;
}

std::vector<const Member*> Members::all() const {
  std::vector<const Member*> out;
  for (const auto& [name, member] : members_)
    out.push_back(&member);
  return out;
}

Result<const Member*> Members::place(const std::string& region, const std::string& pin) {
  std::vector<Member*> candidates;
  std::size_t known = 0;
  for (auto& [name, member] : members_) {
    if (!pin.empty() && name != pin) continue;
    if (!region.empty() && member.report.region != region) continue;
    ++known;
    if (member.up) candidates.push_back(&member);
  }
  const std::string where = !pin.empty()     ? "node \"" + pin + "\""
                            : region.empty() ? std::string("the cluster")
                                             : "region \"" + region + "\"";
  if (known == 0) {
    if (Clock::now() - started_ < settle_)
      return Error::of(ErrorKind::unavailable,
                       "no node of " + where +
                           " has registered yet (the gateway just started); retry in a few "
                           "seconds");
    std::string regions;
    for (const auto& [name, member] : members_)
      if (regions.find("\"" + member.report.region + "\"") == std::string::npos)
        regions += (regions.empty() ? "\"" : ", \"") + member.report.region + "\"";
    return Error::of(ErrorKind::invalid_argument,
                     "no node of " + where + " is known to this gateway; regions: " +
                         (regions.empty() ? std::string("none") : regions));
  }
  if (candidates.empty())
    return Error::of(ErrorKind::unavailable,
                     "every node of " + where + " is down; retry when one is back");
  auto free_slots = [](const Member* m) {
    return m->report.available > m->placed ? m->report.available - m->placed : 0u;
  };
  auto warm = [](const Member* m) { return m->report.pool_ready > m->placed; };
  Member* best = nullptr;
  for (auto* member : candidates) {
    if (free_slots(member) == 0) continue;
    if (!best || std::make_pair(warm(member), free_slots(member)) >
                     std::make_pair(warm(best), free_slots(best)))
      best = member;
  }
  if (!best)
    return Error::of(ErrorKind::capacity, where + " is full: its " +
                                              std::to_string(candidates.size()) +
                                              " node(s) up have no free sandbox slot; retry later");
  ++best->placed;
  return best;
}

std::uint64_t Members::on_down(const std::string& name, Abort abort) {
  auto ticket = next_ticket_++;
  aborts_[name].emplace(ticket, std::move(abort));
  return ticket;
}

void Members::forget(const std::string& name, std::uint64_t ticket) {
  auto found = aborts_.find(name);
  if (found == aborts_.end()) return;
  found->second.erase(ticket);
  if (found->second.empty()) aborts_.erase(found);
}

// -- the gateway actor (CAF side) --------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;

struct LinkedNode {
  caf::actor actor;
  NodeReport report;
  Clock::time_point last;
  bool trusted = false; // answered cl_hello
  bool up = false;
};

struct GatewayState {
  GatewayActorSettings settings;
  std::map<std::string, LinkedNode> nodes; // by name
  static inline const char* name = "vesicle.gateway";
};

using GatewayActor = caf::stateful_actor<GatewayState>;

void post(GatewayActor* self, std::function<void(Members&)> change) {
  auto members = self->state.settings.members;
  asio::post(self->state.settings.executor,
             [members, change = std::move(change)] { change(*members); });
}

void mark_down(GatewayActor* self, LinkedNode& node, std::string reason) {
  if (!node.up) return;
  node.up = false;
  post(self, [name = node.report.name, reason = std::move(reason)](Members& members) {
    members.went_down(name, reason);
  });
}

void mark_report(GatewayActor* self, LinkedNode& node, const NodeReport& report) {
  node.report = report;
  node.last = Clock::now();
  node.up = true;
  post(self, [report](Members& members) { members.reported(report); });
}

LinkedNode* by_actor(GatewayActor* self, const caf::actor_addr& address) {
  for (auto& [name, node] : self->state.nodes)
    if (node.actor && node.actor.address() == address) return &node;
  return nullptr;
}

caf::behavior gateway_behavior(GatewayActor* self, GatewayActorSettings settings) {
  self->state.settings = std::move(settings);
  self->set_down_handler([=](caf::down_msg& down) {
    auto* node = by_actor(self, down.source);
    if (!node) return;
    node->actor = nullptr;
    node->trusted = false;
    mark_down(self, *node,
              "the actor link to it dropped (" + self->system().render(down.reason) + ")");
  });
  self->delayed_send(self, self->state.settings.heartbeat, cl_tick_atom::value);
  return {
      [=](cl_register_atom, const std::string& secret, const NodeReport& report,
          caf::actor node_actor) -> caf::result<cl_welcome_atom, std::string> {
        const auto& settings = self->state.settings;
        if (!secret_matches(settings.secret, secret)) {
          log::warn("cluster: refused a node without the cluster secret", {{"node", report.name}});
          return make_error(ErrorKind::unauthenticated, "the cluster secret does not match");
        }
        if (!node_actor || report.tag != node_tag(report.name))
          return make_error(ErrorKind::invalid_argument, "a registration needs the node actor "
                                                         "and the tag of the node's name");
        for (const auto& [name, other] : self->state.nodes)
          if (name != report.name && other.report.tag == report.tag)
            return make_error(ErrorKind::conflict, "node \"" + report.name +
                                                       "\" has the same id tag as node \"" + name +
                                                       "\"; rename one of them");
        auto& node = self->state.nodes[report.name];
        if (node.actor && node.actor != node_actor) self->demonitor(node.actor);
        node.actor = node_actor;
        node.trusted = false;
        node.report = report;
        self->monitor(node_actor);
        // The node serves nothing before the gateway proves the secret too.
        self->request(node_actor, settings.down_after, cl_hello_atom::value, settings.secret)
            .then(
                [=](const NodeReport& fresh) {
                  auto found = self->state.nodes.find(fresh.name);
                  if (found == self->state.nodes.end() || found->second.actor != node_actor) return;
                  found->second.trusted = true;
                  mark_report(self, found->second, fresh);
                },
                [=](caf::error& failure) {
                  log::warn("cluster: a node did not answer the hello",
                            {{"node", report.name}, {"error", to_error(failure).message()}});
                });
        return {cl_welcome_atom::value, settings.secret};
      },
      [=](cl_report_atom, const NodeReport& report) {
        auto* node = by_actor(self, caf::actor_cast<caf::actor_addr>(self->current_sender()));
        if (!node || !node->trusted || node->report.name != report.name) return;
        mark_report(self, *node, report);
      },
      [=](cl_tick_atom) {
        const auto& settings = self->state.settings;
        const auto now = Clock::now();
        for (auto& [name, node] : self->state.nodes) {
          if (!node.actor || !node.trusted) continue;
          if (node.up && now - node.last > settings.down_after)
            mark_down(self, node,
                      "no heartbeat for " + std::to_string(settings.down_after.count()) + " ms");
          auto actor = node.actor;
          self->request(actor, settings.down_after, cl_status_atom::value)
              .then(
                  [=](const NodeReport& fresh) {
                    auto found = self->state.nodes.find(fresh.name);
                    if (found == self->state.nodes.end() || found->second.actor != actor) return;
                    mark_report(self, found->second, fresh);
                  },
                  [](caf::error&) {}); // the deadline above counts the silence
        }
        self->delayed_send(self, settings.heartbeat, cl_tick_atom::value);
      },
  };
}

} // namespace

caf::actor spawn_gateway_actor(caf::actor_system& system, GatewayActorSettings settings) {
  return system.spawn(gateway_behavior, std::move(settings));
}

} // namespace vesicle::hostd
