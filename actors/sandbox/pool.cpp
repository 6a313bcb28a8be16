#include "actors/sandbox/pool.hpp"
#include "common/ids.hpp"
#include "common/log.hpp"

#include <algorithm>
#include <deque>
#include <set>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/sandbox/vm_host.hpp"

namespace vesicle {

namespace {

using namespace std::chrono_literals;

constexpr std::chrono::milliseconds kFirstRetry = 1s;
constexpr std::chrono::milliseconds kLongestRetry = 60s;

enum class TemplateState { building, ready, failed };

struct PoolState {
  TemplateSpec spec;
  VmHost* vms = nullptr;
  TemplateState template_state = TemplateState::building;
  std::string template_failure;
  std::deque<std::string> ready; // oldest first: handed out first
  std::set<std::string> restoring;
  std::uint32_t in_use = 0;
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t replaced = 0;
  std::chrono::milliseconds retry_after = kFirstRetry;
  bool retry_scheduled = false;
  bool shutting_down = false;
  static inline const char* name = "pool";
};

using self_pointer = pool_actor::stateful_pointer<PoolState>;

std::string new_pool_vm_id() {
  return random_id("pool-");
}

// After a failure: try again later, waiting twice as long each time, so a
// broken template or a full disk does not turn into a tight restart loop.
void schedule_retry(self_pointer self) {
  if (self->state.retry_scheduled || self->state.shutting_down) return;
  self->state.retry_scheduled = true;
  self->delayed_send(self, self->state.retry_after, refill_atom::value);
  self->state.retry_after = std::min(self->state.retry_after * 2, kLongestRetry);
}

void refill(self_pointer self) {
  auto& st = self->state;
  if (st.shutting_down || st.template_state != TemplateState::ready || st.retry_scheduled) return;
  const auto pooled = static_cast<std::uint32_t>(st.ready.size() + st.restoring.size());
  // One restore at a time: on two cores under TCG, parallel restores only
  // slow each other down, and a create that misses needs the CPU more.
  if (!st.restoring.empty()) return;
  if (pooled >= st.spec.min_ready || pooled + st.in_use >= st.spec.max) return;
  auto id = new_pool_vm_id();
  st.restoring.insert(id);
  st.vms->restore_for_pool(st.spec.key, id, caf::actor_cast<pool_actor>(self));
}

void discard_waiting(self_pointer self) {
  for (const auto& id : self->state.ready)
    self->state.vms->discard(id);
  self->state.ready.clear();
}

PoolInfo info(self_pointer self) {
  const auto& st = self->state;
  PoolInfo out;
  out.template_name = st.spec.name;
  out.vcpus = st.spec.vcpus;
  out.memory_mib = st.spec.memory_mib;
  switch (st.template_state) {
  case TemplateState::building:
    out.template_state = "building";
    break;
  case TemplateState::ready:
    out.template_state = "ready";
    break;
  case TemplateState::failed:
    out.template_state = "failed: " + st.template_failure;
    break;
  }
  out.min_ready = st.spec.min_ready;
  out.max = st.spec.max;
  out.ready = static_cast<std::uint32_t>(st.ready.size());
  out.restoring = static_cast<std::uint32_t>(st.restoring.size());
  out.in_use = st.in_use;
  out.hits = st.hits;
  out.misses = st.misses;
  out.replaced = st.replaced;
  return out;
}

pool_actor::behavior_type pool_behavior(self_pointer self, TemplateSpec spec, VmHost* vms) {
  self->state.spec = std::move(spec);
  self->state.vms = vms;
  vms->prepare_template(self->state.spec, caf::actor_cast<pool_actor>(self));

  return {
      [=](take_atom) -> std::string {
        auto& st = self->state;
        if (st.ready.empty()) {
          ++st.misses;
          ++st.in_use;
          refill(self);
          return {};
        }
        auto id = std::move(st.ready.front());
        st.ready.pop_front();
        ++st.hits;
        ++st.in_use;
        refill(self);
        return id;
      },
      [=](usage_atom, std::uint32_t in_use) {
        self->state.in_use = in_use;
        refill(self);
      },
      [=](pool_info_atom) { return info(self); },
      [=](template_atom, bool usable, std::string detail) {
        auto& st = self->state;
        if (usable) {
          st.template_state = TemplateState::ready;
          st.template_failure.clear();
          st.retry_after = kFirstRetry;
          log::info("template ready", {{"pool", st.spec.name}, {"detail", detail}});
          refill(self);
          return;
        }
        st.template_state = TemplateState::failed;
        st.template_failure = detail;
        log::warn("template not usable, creates cold boot until it is",
                  {{"pool", st.spec.name}, {"error", detail}});
        schedule_retry(self);
      },
      [=](vm_booted_atom, const std::string& id, std::int32_t) {
        auto& st = self->state;
        if (st.restoring.erase(id) == 0) return;
        if (st.shutting_down) {
          st.vms->discard(id);
          return;
        }
        st.ready.push_back(id);
        st.retry_after = kFirstRetry;
        refill(self);
      },
      [=](vm_boot_failed_atom, const std::string& id, const std::string& reason) {
        if (self->state.restoring.erase(id) == 0) return;
        log::warn("restoring a pool VM failed",
                  {{"pool", self->state.spec.name}, {"vm", id}, {"error", reason}});
        schedule_retry(self);
      },
      [=](vm_exited_atom, const std::string& id, const std::string& how) {
        auto& ready = self->state.ready;
        auto found = std::find(ready.begin(), ready.end(), id);
        if (found == ready.end()) return;
        ready.erase(found);
        ++self->state.replaced;
        log::warn("waiting pool VM died; replacing it",
                  {{"pool", self->state.spec.name}, {"vm", id}, {"reason", how}});
        self->state.vms->discard(id);
        refill(self);
      },
      [=](refill_atom) {
        auto& st = self->state;
        st.retry_scheduled = false;
        if (st.shutting_down) return;
        if (st.template_state == TemplateState::failed) {
          st.template_state = TemplateState::building;
          st.vms->prepare_template(st.spec, caf::actor_cast<pool_actor>(self));
          return;
        }
        refill(self);
      },
      [=](shutdown_atom) {
        self->state.shutting_down = true;
        discard_waiting(self);
        self->quit();
        return done_atom::value;
      },
  };
}

} // namespace

pool_actor spawn_pool(caf::actor_system& system, TemplateSpec spec, VmHost& vms) {
  return system.spawn(pool_behavior, std::move(spec), &vms);
}

} // namespace vesicle
