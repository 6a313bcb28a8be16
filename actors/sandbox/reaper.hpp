// The reaper: ends sandboxes that sat idle past their idle_timeout_s or
// lived past their max_lifetime_s.
//
// It only decides. The registry tells it what exists (every state change:
// a sandbox is tracked from ready until it leaves ready) and which forks,
// merges and freezes run (begin to end); the operations on a VM it reads
// at the sandboxes' gates (op_gate.hpp) when it looks. When a deadline
// passes it asks the registry to expire the sandbox, and the registry
// decides what expiring means (a non-persistent sandbox is ended and kept
// as a dead record; a persistent one is frozen into a Space).
//
// Activity is an operation on the VM (exec, upload, download). While one
// runs the sandbox is not idle, however long it takes: a long cell is never
// cut off by the idle timer. Idle time counts from the end of the last
// operation (or from ready). The lifetime counts from creation, plus the
// running time before it (a resumed Space's earlier runs, a fork child's
// parent: SandboxInfo::lived_before_ms), and ends a sandbox even in use.
//
// The decisions are ReaperBook's, a plain class with the clock passed in,
// so they are tested without timers; the actor adds the clock and one CAF
// timer set for the next deadline.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <caf/typed_actor.hpp>

#include "actors/sandbox/op_gate.hpp"
#include "messages/caf_types.hpp"

namespace vesicle {

enum class ExpiryKind : std::uint8_t { idle, lifetime };

struct Expiry {
  std::string id;
  ExpiryKind kind = ExpiryKind::idle;
  // For the dead record and the log, e.g. "idle for 300 s (its idle_timeout_s)".
  std::string reason;
};

// What runs on a sandbox's VM by its id, from its gate; nullopt if it has none.
using activity_lookup = std::function<std::optional<OpActivity>(const std::string& id)>;

class ReaperBook {
public:
  // Where due() reads the operations on each VM (none: only op_begun and
  // op_ended count).
  void set_activity(activity_lookup activity) { activity_ = std::move(activity); }
  // Starts watching a sandbox that became ready at `now_ms` (idempotent: a
  // second call keeps what is known). Times are Unix milliseconds, the
  // clock of SandboxInfo::created_at_ms.
  void track(const SandboxInfo& info, std::int64_t now_ms);
  void forget(const std::string& id);
  void op_begun(const std::string& id, std::uint64_t lease, std::int64_t now_ms);
  void op_ended(const std::string& id, std::uint64_t lease, std::int64_t now_ms);

  // The sandboxes whose deadline has passed at `now_ms`, after reading
  // their gates: an operation running now is activity now. Each deadline is
  // reported once: an idle expiry again only after new activity, a
  // lifetime expiry never again (a persistent sandbox the registry keeps
  // running is not asked about every tick).
  std::vector<Expiry> due(std::int64_t now_ms);

  // The earliest deadline not yet reported, if any.
  std::optional<std::int64_t> next_deadline() const;

  bool tracks(const std::string& id) const { return entries_.count(id) != 0; }
  std::size_t size() const { return entries_.size(); }

private:
  struct Entry {
    std::uint32_t idle_timeout_s = 0; // 0: none
    std::uint32_t max_lifetime_s = 0; // 0: none
    std::int64_t created_at_ms = 0;
    std::int64_t lived_before_ms = 0; // SandboxInfo::lived_before_ms
    std::int64_t last_active_ms = 0;
    std::set<std::uint64_t> open_ops;
    bool idle_reported = false;
    bool lifetime_reported = false;
    std::optional<std::int64_t> idle_deadline() const;
    std::optional<std::int64_t> lifetime_deadline() const;
  };
  void read_gates(std::int64_t now_ms);
  std::map<std::string, Entry> entries_;
  activity_lookup activity_;
};

// Whoever acts on the reaper's decisions (the registry): id, why, and
// whether it is the lifetime (true) or the idle timeout (false) that ran out.
using expiry_listener =
    caf::typed_actor<caf::reacts_to<expire_atom, std::string, std::string, bool>>;

using reaper_actor = caf::typed_actor<
    // Every state change of every sandbox: ready starts tracking, anything
    // else stops it.
    caf::reacts_to<state_atom, SandboxInfo>,
    // id, lease: an operation on the sandbox's VM began / ended.
    caf::reacts_to<begin_op_atom, std::string, std::uint64_t>,
    caf::reacts_to<end_op_atom, std::string, std::uint64_t>,
    // Checks the deadlines now: the actor's own timer, or a test.
    caf::reacts_to<reap_atom>>;

struct ReaperSettings {
  // Unix milliseconds; tests substitute their own clock.
  std::function<std::int64_t()> clock;
  // Off in tests on CAF's deterministic scheduler, which never fires a
  // delayed message: they send reap_atom themselves.
  bool timers = true;
  // The sandboxes' gates; the registry gives its own when this is empty.
  activity_lookup activity;
};

reaper_actor spawn_reaper(caf::actor_system& system, expiry_listener listener,
                          ReaperSettings settings);

// System clock in Unix milliseconds.
std::int64_t unix_now_ms();

} // namespace vesicle
