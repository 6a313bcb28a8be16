// The flows that end sandboxes:
//
// destroy (DELETE)
//   ask the actor to destroy its VM; drop the record once it answered
//   undo/fallback: an actor that does not answer has its VM killed from here
//
// expire (the reaper's verdict)
//   a non-persistent sandbox ends as if its VM had died (record kept, state
//   dead, until DELETE); a persistent one is frozen into a Space, and left
//   running (and logged) if that fails: no work is lost
//
// shutdown
//   refuse new work; freeze each persistent ready sandbox (Spaces on),
//   destroy every other; wait until every running flow has answered; stop
#include "actors/sandbox/flows.hpp"

#include <memory>

#include <caf/send.hpp>

#include "actors/sandbox/vm_host.hpp"
#include "common/log.hpp"

namespace vesicle {

caf::result<done_atom> destroy_flow(registry_pointer self, const std::string& owner,
                                    const std::string& id) {
  auto record = owned(self, owner, id);
  if (!record) return std::move(record.error());
  if (!(*record)->actor_alive) {
    self->state.records.erase(id);
    return done_atom::value;
  }
  auto promise = self->make_response_promise<done_atom>();
  self->request((*record)->actor, self->state.settings.ready_timeout, destroy_atom::value)
      .then(
          [=](done_atom) mutable {
            self->state.records.erase(id);
            update_pool_usage(self);
            promise.deliver(done_atom::value);
          },
          [=](caf::error& failure) mutable {
            // The actor did not finish: kill the VM from here so nothing
            // outlives the DELETE, and say so.
            self->state.vms->reclaim(id, {});
            self->state.records.erase(id);
            update_pool_usage(self);
            promise.deliver(make_error(
                ErrorKind::internal, "deleting sandbox " + id + ": its actor did not answer (" +
                                         self->system().render(failure) + "); its VM was killed"));
          });
  return promise;
}

void expire_flow(registry_pointer self, const std::string& id, const std::string& reason,
                 bool lifetime) {
  auto found = self->state.records.find(id);
  if (found == self->state.records.end()) return;
  auto& record = found->second;
  if (!record.actor_alive || record.info.state != SandboxState::ready) return;
  if (!record.info.spec.persistent) {
    log::info("sandbox ended", {{"sandbox", id}, {"key", record.info.owner}, {"reason", reason}});
    self->send(record.actor, expire_atom::value, reason);
    return;
  }
  if (!self->state.spaces) {
    log::warn("persistent sandbox keeps running: this hostd keeps no Spaces",
              {{"sandbox", id}, {"reason", reason}});
    return;
  }
  log::info("freezing persistent sandbox into a Space", {{"sandbox", id}, {"reason", reason}});
  freeze_flow(self, id, lifetime ? "lifetime" : "idle", [id](caf::expected<SpaceInfo> frozen) {
    if (!frozen)
      log::warn("sandbox could not be frozen and keeps running",
                {{"sandbox", id}, {"error", error_message(frozen.error())}});
  });
}

caf::result<done_atom> shutdown_flow(registry_pointer self) {
  self->state.shutting_down = true;
  stop_template_pools(self);
  auto promise = self->make_response_promise<done_atom>();
  // Stops once every sandbox is gone and every flow has answered (a flow
  // whose sandbox is destroyed here answers with that failure; one between
  // steps answers unavailable at its next step).
  auto remaining = std::make_shared<std::size_t>(1); // 1: this loop itself
  auto stop = [=]() mutable {
    promise.deliver(done_atom::value);
    if (self->state.reaper) self->send_exit(self->state.reaper, caf::exit_reason::user_shutdown);
    self->quit();
  };
  auto one_done = [=]() mutable {
    if (--*remaining > 0) return;
    if (self->state.flows_running == 0) return stop();
    self->state.on_flows_done = stop;
  };
  auto destroy_one = [=](const std::string& id) mutable { take_down(self, id, one_done); };
  // Persistent sandboxes are frozen first, so a restart loses nothing. One
  // that is busy (forked, merged or frozen right now) refuses the freeze's
  // hold and is destroyed once that operation lets it go.
  for (auto& [id, record] : self->state.records) {
    if (!record.actor_alive) continue;
    ++*remaining;
    const bool freeze_first = self->state.spaces && record.info.spec.persistent &&
                              record.info.state == SandboxState::ready;
    if (!freeze_first) {
      destroy_one(id);
      continue;
    }
    freeze_flow(self, id, "shutdown", [=, id = id](caf::expected<SpaceInfo> frozen) mutable {
      if (frozen)
        log::info("sandbox frozen into a Space as hostd stops",
                  {{"sandbox", id}, {"space", frozen->space_id}});
      else
        log::warn("sandbox could not be frozen as hostd stops",
                  {{"sandbox", id}, {"error", error_message(frozen.error())}});
      destroy_one(id);
    });
  }
  one_done();
  return promise;
}

} // namespace vesicle
