// Every atom and message type the actors exchange, and hostd's error codes,
// in one place. CAF 0.17 has no type-id blocks: atoms are atom_constants and
// each custom type is registered by register_caf_types() with an inspect()
// overload, so it can cross a CAF node boundary later (cluster) unchanged.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/make_message.hpp>
#include <caf/meta/type_name.hpp>

#include "common/result.hpp"

namespace vesicle {

// -- atoms (CAF 0.17 atoms hold at most 10 characters) -----------------------

// HTTP side -> registry
using create_atom = caf::atom_constant<caf::atom("create")>;
using lookup_atom = caf::atom_constant<caf::atom("lookup")>;
using list_atom = caf::atom_constant<caf::atom("list")>;
using destroy_atom = caf::atom_constant<caf::atom("destroy")>;
using capacity_atom = caf::atom_constant<caf::atom("capacity")>;
using shutdown_atom = caf::atom_constant<caf::atom("shutdown")>;
using fork_atom = caf::atom_constant<caf::atom("fork")>;
using merge_atom = caf::atom_constant<caf::atom("merge")>;
// Spaces: freeze a sandbox to disk, resume a Space, list / look up / delete
using freeze_atom = caf::atom_constant<caf::atom("freeze")>;
using resume_atom = caf::atom_constant<caf::atom("resume")>;
using spaces_atom = caf::atom_constant<caf::atom("spaces")>;
using space_atom = caf::atom_constant<caf::atom("space")>;
using delete_space_atom = caf::atom_constant<caf::atom("delspace")>;
// Saved templates: save a sandbox as one, list / look up / delete
using save_template_atom = caf::atom_constant<caf::atom("savetmpl")>;
using templates_atom = caf::atom_constant<caf::atom("templates")>;
using template_info_atom = caf::atom_constant<caf::atom("tmplinfo")>;
using delete_template_atom = caf::atom_constant<caf::atom("deltmpl")>;
// HTTP side -> sandbox
using await_ready_atom = caf::atom_constant<caf::atom("awaitready")>;
using begin_op_atom = caf::atom_constant<caf::atom("beginop")>;
using end_op_atom = caf::atom_constant<caf::atom("endop")>;
using info_atom = caf::atom_constant<caf::atom("info")>;
// registry -> sandbox: hold(true) refuses new operations while a fork or
// merge works on its VM; release_vm: its VM went to another sandbox (merge)
using hold_atom = caf::atom_constant<caf::atom("hold")>;
using release_vm_atom = caf::atom_constant<caf::atom("releasevm")>;
// VmHost (asio side) -> sandbox: results of work done off the CAF threads
using vm_booted_atom = caf::atom_constant<caf::atom("vmbooted")>;
using vm_boot_failed_atom = caf::atom_constant<caf::atom("vmbootfail")>;
using vm_exited_atom = caf::atom_constant<caf::atom("vmexited")>;
using vm_reclaimed_atom = caf::atom_constant<caf::atom("vmreclaim")>;
// ... its VM was replaced (a fork's parent resumed, a merge), or saved
// into a Space (a freeze)
using vm_replaced_atom = caf::atom_constant<caf::atom("vmreplaced")>;
using frozen_atom = caf::atom_constant<caf::atom("frozen")>;
// a flow <-> the one-shot actor running one VmHost call (vm_step.hpp)
using vm_step_atom = caf::atom_constant<caf::atom("vmstep")>;
// sandbox -> registry
using state_atom = caf::atom_constant<caf::atom("state")>;
// registry <-> pool
using take_atom = caf::atom_constant<caf::atom("take")>;
using usage_atom = caf::atom_constant<caf::atom("usage")>;
using pool_info_atom = caf::atom_constant<caf::atom("poolinfo")>;
// VmHost -> pool: a template was checked or built, or could not be
using template_atom = caf::atom_constant<caf::atom("template")>;
// the pool's own timer
using refill_atom = caf::atom_constant<caf::atom("refill")>;
// anyone -> the bridge actor (network slots, actors/bridge/bridge_actor.hpp)
using net_acquire_atom = caf::atom_constant<caf::atom("netacquire")>;
using net_egress_atom = caf::atom_constant<caf::atom("netegress")>;
using net_release_atom = caf::atom_constant<caf::atom("netrelease")>;
// registry -> sandbox: the reaper ended it (idle or lifetime); reaper -> registry
using expire_atom = caf::atom_constant<caf::atom("expire")>;
// the reaper's own timer (and a test's prod)
using reap_atom = caf::atom_constant<caf::atom("reap")>;
// generic acknowledgement
using done_atom = caf::atom_constant<caf::atom("done")>;

// -- message types -------------------------------------------------------------

// The states of a sandbox (see actors/sandbox/sandbox.hpp for the machine).
enum class SandboxState : std::uint8_t {
  booting = 0,    // its VM is starting; nothing runs yet
  ready = 1,      // its VM answers; exec and files work
  destroying = 2, // DELETE in progress; its VM is being torn down
  dead = 3,       // its VM died or never booted; files reclaimed
  frozen = 4,     // its VM was saved into a Space (space_id) and stopped
};
const char* to_string(SandboxState state);

// Secret HTTP headers by exact host name, which hostd's egress proxy sets on
// the sandbox's requests to that host (net/secrets.hpp). Only hostd's memory
// holds the values: inspect() below writes none of them, so no log line,
// to_string or serialized message carries one (a copy sent to another
// process arrives empty). Shared, so copies of a spec do not copy the bytes.
struct SecretValues {
  using Headers = std::vector<std::pair<std::string, std::string>>; // name, value
  std::shared_ptr<const std::map<std::string, Headers>> grants;

  bool empty() const { return !grants || grants->empty(); }
  // The host names, sorted (what a Space and GET show).
  std::vector<std::string> hosts() const;
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, SecretValues&) {
  return f(caf::meta::type_name("vesicle.SecretValues"));
}

inline bool operator==(const SecretValues& a, const SecretValues& b) {
  if (a.empty() || b.empty()) return a.empty() == b.empty();
  return *a.grants == *b.grants;
}

// What a create asked for, after defaults and validation.
struct SandboxSpec {
  std::string template_name = "default";
  bool egress = true;
  std::vector<std::string> egress_allow;
  bool persistent = false;
  std::uint32_t vcpus = 2;
  std::uint32_t memory_mib = 1024;
  std::uint32_t disk_mib = 2048;
  std::uint32_t idle_timeout_s = 300;
  std::uint32_t max_lifetime_s = 1800;
  std::string region;
  // The hosts it holds secrets for (a Space keeps these, never the values)
  // and, while it runs, the values.
  std::vector<std::string> secret_hosts;
  SecretValues secrets;
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, SandboxSpec& x) {
  return f(caf::meta::type_name("vesicle.SandboxSpec"), x.template_name, x.egress, x.egress_allow,
           x.persistent, x.vcpus, x.memory_mib, x.disk_mib, x.idle_timeout_s, x.max_lifetime_s,
           x.region, x.secret_hosts, x.secrets);
}

// A sandbox as the registry and GET see it.
struct SandboxInfo {
  std::string id;
  std::string owner; // the id of the API key that created it
  SandboxState state = SandboxState::booting;
  SandboxSpec spec;
  std::int64_t created_at_ms = 0; // Unix time
  std::string dead_reason;        // set in state dead
  std::int32_t qemu_pid = 0;      // 0 unless a VM is running
  // Where its VM came from: "pool" (a restored VM waiting in the warm pool),
  // "restore" (restored from the template on demand), "boot" (cold boot) or
  // "fork" (restored from its parent's fork snapshot).
  std::string source;
  // The sandbox it was forked from ("" unless source is "fork").
  std::string forked_from;
  // The Space it was frozen into (state frozen).
  std::string space_id;
  // The Space it was resumed from ("" unless source is "space").
  std::string resumed_from;
  // Running time its Spaces (and, for a fork child, its parent) had used
  // before created_at_ms: max_lifetime_s counts it too, so freezing and
  // resuming (or forking) never restarts the lifetime.
  std::int64_t lived_before_ms = 0;
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, SandboxInfo& x) {
  return f(caf::meta::type_name("vesicle.SandboxInfo"), x.id, x.owner, x.state, x.spec,
           x.created_at_ms, x.dead_reason, x.qemu_pid, x.source, x.forked_from, x.space_id,
           x.resumed_from, x.lived_before_ms);
}

inline bool operator==(const SandboxSpec& a, const SandboxSpec& b) {
  return a.template_name == b.template_name && a.egress == b.egress &&
         a.egress_allow == b.egress_allow && a.persistent == b.persistent && a.vcpus == b.vcpus &&
         a.memory_mib == b.memory_mib && a.disk_mib == b.disk_mib &&
         a.idle_timeout_s == b.idle_timeout_s && a.max_lifetime_s == b.max_lifetime_s &&
         a.region == b.region && a.secret_hosts == b.secret_hosts && a.secrets == b.secrets;
}

struct CapacityInfo {
  std::uint32_t max_sandboxes = 0;
  std::uint32_t booting = 0;
  std::uint32_t ready = 0;
  std::uint32_t destroying = 0; // still holding a VM
  std::uint32_t dead = 0;       // records only, no VM
  std::uint32_t frozen = 0;     // records only: their VMs are in Spaces on disk
  std::uint32_t available() const {
    auto used = booting + ready + destroying;
    return used >= max_sandboxes ? 0 : max_sandboxes - used;
  }
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, CapacityInfo& x) {
  return f(caf::meta::type_name("vesicle.CapacityInfo"), x.max_sandboxes, x.booting, x.ready,
           x.destroying, x.dead, x.frozen);
}

using SandboxInfoList = std::vector<SandboxInfo>;

// A Space: a sandbox frozen to disk (actors/sandbox/space_store.hpp), and
// what it needs to come back as it was.
struct SpaceInfo {
  std::string space_id;           // "sp-" and 32 (before: 12) hex digits
  std::string owner;              // the key that owns it (the sandbox's)
  std::string sandbox_id;         // the sandbox it was frozen from
  SandboxSpec spec;               // the sandbox's settings
  std::int64_t created_at_ms = 0; // the sandbox's creation (Unix ms)
  std::int64_t frozen_at_ms = 0;
  // Why it was frozen: "freeze" (asked for), "idle" or "lifetime" (the
  // reaper), "shutdown" (hostd stopped).
  std::string reason;
  std::string machine_id;         // kept across the freeze
  std::string images_fingerprint; // the guest images it runs on
  std::uint64_t state_bytes = 0;  // device state and RAM
  std::uint64_t disk_bytes = 0;   // its disk (changes over the base image)
  // Running time used up to the freeze, across every earlier run: what
  // its next run's lifetime has already spent.
  std::int64_t lived_ms = 0;
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, SpaceInfo& x) {
  return f(caf::meta::type_name("vesicle.SpaceInfo"), x.space_id, x.owner, x.sandbox_id, x.spec,
           x.created_at_ms, x.frozen_at_ms, x.reason, x.machine_id, x.images_fingerprint,
           x.state_bytes, x.disk_bytes, x.lived_ms);
}

using SpaceInfoList = std::vector<SpaceInfo>;

// A saved template: a running sandbox's state (memory, processes, files)
// kept under a name, for new sandboxes to start from
// (actors/sandbox/template_store.hpp).
struct TemplateInfo {
  std::string template_id; // "tp-" and 32 hex digits: names its files
  std::string name;        // what creates ask for; unique per owner
  std::string owner;       // the key that saved it
  bool global = false;     // an admin key made it usable by every key
  std::string from_sandbox;
  std::int64_t created_at_ms = 0;
  std::uint32_t vcpus = 0;
  std::uint32_t memory_mib = 0;
  std::uint32_t disk_mib = 0; // the sandbox's disk size: the least a sandbox from it gets
  std::string images_fingerprint;
  // What a client's recipe hashed to ("" when saved by hand): a second
  // build of the same recipe finds the template instead of making another.
  std::string recipe_hash;
  std::uint32_t pool_size = 0;    // VMs kept restored and waiting; 0: restore on demand
  std::uint64_t memory_bytes = 0; // RAM file: bytes in non-zero pages (what it costs)
  std::uint64_t state_bytes = 0;  // device state
  std::uint64_t disk_bytes = 0;   // disk.qcow2: the changes over the base image
  // VMs of its pool waiting now: filled in by a lookup of one template
  // (GET /v1/templates/{name}), not kept.
  std::uint32_t pool_ready = 0;
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, TemplateInfo& x) {
  return f(caf::meta::type_name("vesicle.TemplateInfo"), x.template_id, x.name, x.owner, x.global,
           x.from_sandbox, x.created_at_ms, x.vcpus, x.memory_mib, x.disk_mib, x.images_fingerprint,
           x.recipe_hash, x.pool_size, x.memory_bytes, x.state_bytes, x.disk_bytes, x.pool_ready);
}

using TemplateInfoList = std::vector<TemplateInfo>;

// One warm pool as /v1/capacity and /metrics report it.
struct PoolInfo {
  std::string template_name;
  std::uint32_t vcpus = 0;
  std::uint32_t memory_mib = 0;
  std::string template_state; // "building", "ready" or "failed: <why>"
  std::uint32_t min_ready = 0;
  std::uint32_t max = 0;
  std::uint32_t ready = 0;     // restored VMs waiting to be taken
  std::uint32_t restoring = 0; // restores in flight
  std::uint32_t in_use = 0;    // live sandboxes of this template
  std::uint64_t hits = 0;      // creates served by a waiting VM
  std::uint64_t misses = 0;    // creates that found none waiting
  std::uint64_t replaced = 0;  // waiting VMs that died and were replaced
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, PoolInfo& x) {
  return f(caf::meta::type_name("vesicle.PoolInfo"), x.template_name, x.vcpus, x.memory_mib,
           x.template_state, x.min_ready, x.max, x.ready, x.restoring, x.in_use, x.hits, x.misses,
           x.replaced);
}

// A network slot the bridge actor lent out: its id and its tap's fd, which
// the bridge keeps open (and owns) until the slot is released.
struct NetSlot {
  std::uint32_t id = 0;
  std::int32_t tap_fd = -1;
};

template <class Inspector> typename Inspector::result_type inspect(Inspector& f, NetSlot& x) {
  return f(caf::meta::type_name("vesicle.NetSlot"), x.id, x.tap_fd);
}

// -- errors ------------------------------------------------------------------

// Actors answer failures as CAF errors in the category "vesicle" whose code
// is the ErrorKind (common/error_kind.hpp) and whose context is the message
// a user reads. to_caf_error and to_error convert at the actor boundary, so
// both sides work with Error.
inline const caf::atom_value kErrorCategory = caf::atom("vesicle");

inline caf::error make_error(ErrorKind kind, std::string message) {
  return caf::error(static_cast<std::uint8_t>(kind), kErrorCategory,
                    caf::make_message(std::move(message)));
}
caf::error to_caf_error(const Error& error);
// An actor's error as an Error; CAF's own (a timeout, a dead actor) are
// internal: hostd's actors did not answer.
Error to_error(const caf::error& error);

// The message string carried by an error made above ("" if none).
std::string error_message(const caf::error& error);

// Registers the types above and the error category with an actor system.
void register_caf_types(caf::actor_system_config& config);

} // namespace vesicle
