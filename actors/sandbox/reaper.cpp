#include "actors/sandbox/reaper.hpp"

#include <algorithm>
#include <chrono>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

namespace vesicle {

std::int64_t unix_now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

// -- ReaperBook -----------------------------------------------------------------

std::optional<std::int64_t> ReaperBook::Entry::idle_deadline() const {
  // A running operation is activity for as long as it runs.
  // Past its lifetime a sandbox has had its verdict; idling adds nothing.
  if (idle_timeout_s == 0 || idle_reported || lifetime_reported || !open_ops.empty())
    return std::nullopt;
  return last_active_ms + std::int64_t{idle_timeout_s} * 1000;
}

std::optional<std::int64_t> ReaperBook::Entry::lifetime_deadline() const {
  if (max_lifetime_s == 0 || lifetime_reported) return std::nullopt;
  return created_at_ms + std::int64_t{max_lifetime_s} * 1000 - lived_before_ms;
}

void ReaperBook::track(const SandboxInfo& info, std::int64_t now_ms) {
  if (entries_.count(info.id)) return;
  Entry entry;
  entry.idle_timeout_s = info.spec.idle_timeout_s;
  entry.max_lifetime_s = info.spec.max_lifetime_s;
  entry.created_at_ms = info.created_at_ms;
  entry.lived_before_ms = info.lived_before_ms;
  entry.last_active_ms = now_ms;
  entries_.emplace(info.id, std::move(entry));
}

void ReaperBook::forget(const std::string& id) {
  entries_.erase(id);
}

void ReaperBook::op_begun(const std::string& id, std::uint64_t lease, std::int64_t now_ms) {
  auto found = entries_.find(id);
  if (found == entries_.end()) return;
  found->second.open_ops.insert(lease);
  found->second.last_active_ms = now_ms;
  found->second.idle_reported = false;
}

void ReaperBook::op_ended(const std::string& id, std::uint64_t lease, std::int64_t now_ms) {
  auto found = entries_.find(id);
  if (found == entries_.end()) return;
  found->second.open_ops.erase(lease);
  found->second.last_active_ms = now_ms;
  found->second.idle_reported = false;
}

// A deadline computed before an operation at the gate is too early, never
// too late: the timer fires, this reads the gates, and the next deadline
// moves on.
void ReaperBook::read_gates(std::int64_t now_ms) {
  if (!activity_) return;
  for (auto& [id, entry] : entries_) {
    auto seen = activity_(id);
    if (!seen) continue;
    auto latest = seen->running > 0 ? now_ms : seen->last_active_ms;
    if (latest <= entry.last_active_ms) continue;
    entry.last_active_ms = latest;
    entry.idle_reported = false;
  }
}

std::vector<Expiry> ReaperBook::due(std::int64_t now_ms) {
  read_gates(now_ms);
  std::vector<Expiry> result;
  for (auto& [id, entry] : entries_) {
    auto lifetime = entry.lifetime_deadline();
    if (lifetime && *lifetime <= now_ms) {
      entry.lifetime_reported = true;
      result.push_back({id, ExpiryKind::lifetime,
                        "reached its max lifetime of " + std::to_string(entry.max_lifetime_s) +
                            " s (max_lifetime_s)"});
      continue;
    }
    auto idle = entry.idle_deadline();
    if (idle && *idle <= now_ms) {
      entry.idle_reported = true;
      result.push_back(
          {id, ExpiryKind::idle,
           "idle for " + std::to_string(entry.idle_timeout_s) + " s (idle_timeout_s)"});
    }
  }
  return result;
}

std::optional<std::int64_t> ReaperBook::next_deadline() const {
  std::optional<std::int64_t> earliest;
  for (const auto& [id, entry] : entries_)
    for (auto deadline : {entry.idle_deadline(), entry.lifetime_deadline()})
      if (deadline && (!earliest || *deadline < *earliest)) earliest = deadline;
  return earliest;
}

// -- the actor --------------------------------------------------------------------

namespace {

struct ReaperState {
  ReaperBook book;
  expiry_listener listener;
  ReaperSettings settings;
  // When the pending timer fires, if one is pending.
  std::optional<std::int64_t> timer_at;
  static inline const char* name = "reaper";
};

using self_pointer = reaper_actor::stateful_pointer<ReaperState>;

// Keeps one timer set for the earliest deadline. A timer made obsolete by
// an earlier one still fires later; it only checks again, finding nothing.
void schedule(self_pointer self) {
  if (!self->state.settings.timers) return;
  auto next = self->state.book.next_deadline();
  if (!next) return;
  if (self->state.timer_at && *self->state.timer_at <= *next) return;
  self->state.timer_at = next;
  auto delay = std::max<std::int64_t>(0, *next - self->state.settings.clock());
  // A few milliseconds late rather than early: an early wake-up finds
  // nothing due and sets the same timer again.
  self->delayed_send(self, std::chrono::milliseconds(delay + 5), reap_atom::value);
}

void reap(self_pointer self) {
  for (auto& expiry : self->state.book.due(self->state.settings.clock()))
    self->send(self->state.listener, expire_atom::value, expiry.id, expiry.reason,
               expiry.kind == ExpiryKind::lifetime);
}

reaper_actor::behavior_type reaper_behavior(self_pointer self, expiry_listener listener,
                                            ReaperSettings settings) {
  if (!settings.clock) settings.clock = unix_now_ms;
  self->state.listener = listener;
  self->state.settings = std::move(settings);
  self->state.book.set_activity(self->state.settings.activity);
  // Its decisions are for the listener alone: without it, stop (a pending
  // timer would otherwise keep this actor alive forever).
  self->monitor(listener);
  self->set_down_handler([=](caf::down_msg&) { self->quit(); });
  return {
      [=](state_atom, const SandboxInfo& info) {
        if (info.state == SandboxState::ready)
          self->state.book.track(info, self->state.settings.clock());
        else
          self->state.book.forget(info.id);
        schedule(self);
      },
      [=](begin_op_atom, const std::string& id, std::uint64_t lease) {
        self->state.book.op_begun(id, lease, self->state.settings.clock());
      },
      [=](end_op_atom, const std::string& id, std::uint64_t lease) {
        self->state.book.op_ended(id, lease, self->state.settings.clock());
        schedule(self);
      },
      [=](reap_atom) {
        self->state.timer_at.reset();
        reap(self);
        schedule(self);
      },
  };
}

} // namespace

reaper_actor spawn_reaper(caf::actor_system& system, expiry_listener listener,
                          ReaperSettings settings) {
  return system.spawn(reaper_behavior, std::move(listener), std::move(settings));
}

} // namespace vesicle
