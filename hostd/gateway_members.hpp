// The gateway's view of the cluster (docs/cluster.md): which nodes exist,
// where their REST APIs are, whether they are up, and their room. The
// gateway actor (spawn_gateway_actor) keeps the CAF side (the node actors,
// their monitors and heartbeats) and posts each change to Members, which
// lives on the HTTP server's executor: handlers read it without locks.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "common/result.hpp"
#include "hostd/cluster_protocol.hpp"

namespace vesicle::hostd {

struct Member {
  NodeReport report;
  std::string host; // of report.url
  std::string port;
  bool up = false;
  std::string down_reason;
  std::chrono::steady_clock::time_point last_report;
  // Creates sent to it since its last report: placement counts them
  // against its room until the next report.
  std::uint32_t placed = 0;
};

class Members {
public:
  using Clock = std::chrono::steady_clock;

  // The gateway actor's news (on the executor).
  void joined(const NodeReport& report);
  void reported(const NodeReport& report);
  void went_down(const std::string& name, const std::string& reason);

  const Member* by_tag(const std::string& tag) const;
  const Member* by_name(const std::string& name) const;
  std::vector<const Member*> all() const;

  // The node a create goes to: an up node of `region` ("": any region),
  // or the node `pin` names, with a free slot, a warm VM preferred, then
  // the most free slots. Errors name the region: unavailable (no node of
  // it is up), capacity (all full), invalid_argument (no such region once
  // the gateway has run for `settle`).
  Result<const Member*> place(const std::string& region, const std::string& pin);

  // A proxied call to node `name` registers how to abort it; went_down
  // aborts them all, so a call to a dead node ends instead of hanging.
  using Abort = std::function<void()>;
  std::uint64_t on_down(const std::string& name, Abort abort);
  void forget(const std::string& name, std::uint64_t ticket);

  // Nodes stay unknown for this long after the gateway starts: a create
  // for an unknown region gets 503 meanwhile (nodes are re-registering),
  // 400 afterwards.
  void set_settle(Clock::duration settle) { settle_ = settle; }

private:
  std::map<std::string, Member> members_; // by name
  std::map<std::string, std::map<std::uint64_t, Abort>> aborts_;
  std::uint64_t next_ticket_ = 1;
  Clock::time_point started_ = Clock::now();
  Clock::duration settle_ = std::chrono::seconds(5);
};

struct GatewayActorSettings {
  std::string secret;
  std::chrono::milliseconds heartbeat{1000};
  std::chrono::milliseconds down_after{3000};
  boost::asio::any_io_executor executor; // where `members` lives
  std::shared_ptr<Members> members;
};

// The actor nodes register with (cluster_protocol.hpp); publish it with
// the middleman on the actor port.
caf::actor spawn_gateway_actor(caf::actor_system& system, GatewayActorSettings settings);

} // namespace vesicle::hostd
