// The registry's state and the steps its flows share. The registry actor
// (registry.cpp) admits and routes; each operation's flow (flow_*.cpp) reads
// top to bottom in its own file and keeps what it is in the middle of in its
// own continuations, never in a table here. What lives here is only what
// every flow reads: the records (one per sandbox, placeholders included),
// the settings, and a count of flows still running, so a shutdown can wait
// for them to answer.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/sandbox/registry.hpp"
#include "actors/sandbox/space_store.hpp"
#include "actors/sandbox/template_store.hpp"

namespace vesicle {

class VmHost;

struct Record {
  SandboxInfo info;
  sandbox_actor actor; // null for a placeholder holding a slot
  bool actor_alive = true;
  int pool = -1; // index into settings.pools of the pool it came from
  // The sandboxes it was forked from, its parent first: merge_into accepts
  // any descendant, also when a sandbox in between is gone.
  std::vector<std::string> ancestors;
};

struct RegistryState {
  VmHost* vms = nullptr;
  RegistrySettings settings;
  std::map<std::string, Record> records;
  bool shutting_down = false;
  // Flows that have not answered yet; a shutdown stops once this is zero.
  std::uint32_t flows_running = 0;
  std::function<void()> on_flows_done; // set by a shutdown
  std::optional<SpaceStore> spaces;    // unset: no Spaces on this host
  // The last in-use count each pool was told.
  std::vector<std::uint32_t> pool_usage;
  reaper_actor reaper; // null when settings.reaper is off
  // Saved templates by template id, each with its own pool.
  struct SavedTemplate {
    TemplateInfo info;
    pool_actor pool;
  };
  std::optional<TemplateStore> template_store; // unset: no saved templates
  std::map<std::string, SavedTemplate> saved_templates;
  // The saved templates' pools stop with the registry, however it stops.
  ~RegistryState() {
    for (auto& [id, saved] : saved_templates)
      caf::anon_send_exit(saved.pool, caf::exit_reason::user_shutdown);
  }
  static inline const char* name = "registry";
};

using registry_pointer = registry_actor::stateful_pointer<RegistryState>;

// -- admission ---------------------------------------------------------------

caf::error shutting_down();
CapacityInfo capacity(registry_pointer self);
// Whether a sandbox holds (or will hold) a VM: it counts against capacity,
// its pool's usage and its key's concurrency cap. Dead and frozen ones are
// records only.
bool holds_vm(const SandboxInfo& info);
// The caller's record, or not_found for an unknown id and for another
// key's sandbox alike, so ids cannot be probed across keys.
caf::expected<Record*> owned(registry_pointer self, const std::string& owner,
                             const std::string& id);
// A record that is ready and whose actor runs, or why it cannot be forked,
// merged or frozen now.
caf::expected<Record*> ready_record(registry_pointer self, const std::string& owner,
                                    const std::string& id);
// Refuses `more` new sandboxes of `spec`'s size for `owner` beyond its
// concurrency cap (ErrorKind::quota), the host's sandbox slots, or the
// host's memory and disk (host_room.hpp) (ErrorKind::capacity); `what`
// starts the message ("creating a sandbox", "forking sb-… 3 ways").
caf::error admit(registry_pointer self, const std::string& owner, std::uint32_t more,
                 std::uint32_t max_concurrent, const SandboxSpec& spec, const std::string& what,
                 const std::string& advice);

// -- steps the flows share ----------------------------------------------------

// Tells each pool how many live sandboxes hold one of its VMs.
void update_pool_usage(registry_pointer self);

// A flow counts from its start until its answer, so a shutdown waits for
// every flow to answer before the registry stops. Each flow calls
// flow_started once and flow_ended once, where it answers.
void flow_started(registry_pointer self);
void flow_ended(registry_pointer self);

// Answers whoever waits for a sandbox to become ready (a create, a fork
// child, a resume).
using ReadyHandler = std::function<void(caf::expected<SandboxInfo>)>;
// The launch step: spawns sandbox `info` with `plan`, records it and calls
// `on_ready` once it is ready or failed; a sandbox that does not become
// ready is destroyed, and its record dropped once its VM is gone.
void launch_sandbox(registry_pointer self, SandboxInfo info, int pool, LaunchPlan plan,
                    ReadyHandler on_ready, std::vector<std::string> ancestors = {});
// Destroys a sandbox's actor and VM and drops its record whatever the
// actor answers (a rollback step; a shutdown), then calls `then`, also when
// there was no such record.
void take_down(registry_pointer self, const std::string& id, std::function<void()> then = {});

// A fork, merge or freeze counts as one operation for the reaper: no idle
// verdict while it runs, and the sandbox's idle time starts again when it
// ends. Each has its own lease number.
enum class ReaperLease : std::uint64_t {
  fork = ~std::uint64_t{0},
  merge = ~std::uint64_t{0} - 1,
  freeze = ~std::uint64_t{0} - 2,
};
void reaper_op(registry_pointer self, const std::string& id, ReaperLease lease, bool begun);
// Lets a held sandbox (hold(true)) serve again.
void release_hold(registry_pointer self, const std::string& id);

} // namespace vesicle
