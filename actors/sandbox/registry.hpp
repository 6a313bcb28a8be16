// The registry: the supervisor of all sandbox actors. It admits work against
// capacity and each key's cap, owns the id -> sandbox map, checks that the
// asking key owns the sandbox (another key's sandbox is as unknown as a
// missing one), routes each operation to its flow (flows.hpp: create, fork,
// merge, freeze, resume, destroy, one file each), keeps each sandbox's last
// reported state for listing, and monitors the actors: one that stops
// without being destroyed is recorded dead and its VM reclaimed.
//
// Dead sandboxes stay listed (state dead, with the reason) until DELETE;
// they no longer count against capacity.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <caf/typed_actor.hpp>

#include "actors/sandbox/host_room.hpp"
#include "actors/sandbox/pool.hpp"
#include "actors/sandbox/reaper.hpp"
#include "actors/sandbox/sandbox.hpp"
#include "messages/caf_types.hpp"

namespace vesicle {

using registry_actor = caf::typed_actor<
    // owner, spec -> the sandbox once ready. ErrorKind::capacity when full,
    // ErrorKind::internal when its VM did not come up (nothing is left behind).
    caf::replies_to<create_atom, std::string, SandboxSpec>::with<SandboxInfo>,
    // The same with the owner's concurrency cap: ErrorKind::quota when
    // the owner already holds that many live sandboxes.
    caf::replies_to<create_atom, std::string, SandboxSpec, std::uint32_t>::with<SandboxInfo>,
    // owner, id -> the sandbox (ErrorKind::not_found unless owner's)
    caf::replies_to<lookup_atom, std::string, std::string>::with<SandboxInfo>,
    // owner -> the owner's sandboxes, oldest first
    caf::replies_to<list_atom, std::string>::with<SandboxInfoList>,
    // owner, id -> done once the VM and its files are gone
    caf::replies_to<destroy_atom, std::string, std::string>::with<done_atom>,
    // owner, id -> a lease for one operation on the VM (see sandbox.hpp)
    caf::replies_to<begin_op_atom, std::string, std::string>::with<std::uint64_t>,
    caf::reacts_to<end_op_atom, std::string, std::string, std::uint64_t>,
    // owner, id, how: an HTTP handler saw the VM's process gone; the reply
    // comes once the sandbox is recorded dead
    caf::replies_to<vm_exited_atom, std::string, std::string, std::string>::with<done_atom>,
    // owner, id, n -> n children, each starting from the sandbox's state at
    // this moment (memory, processes, files); the parent runs on. All or
    // nothing: a child that fails takes the others down, and the parent is
    // left as it was. ErrorKind::capacity when n do not fit.
    // The last number is the owner's concurrency cap (ErrorKind::quota).
    caf::replies_to<fork_atom, std::string, std::string, std::uint32_t,
                    std::uint32_t>::with<SandboxInfoList>,
    // owner, parent, winner -> the parent, now running the winner's VM; the
    // winner's id is gone, the parent's old VM destroyed. The winner must
    // descend from the parent (ErrorKind::conflict otherwise).
    caf::replies_to<merge_atom, std::string, std::string, std::string>::with<SandboxInfo>,
    // Spaces (space_store.hpp). owner, id -> the Space the sandbox's VM was
    // saved into; the sandbox stays listed, state frozen, until DELETE.
    // The sandbox must be ready with nothing running (failed_precondition).
    caf::replies_to<freeze_atom, std::string, std::string>::with<SpaceInfo>,
    // owner, space id, persistent, the owner's concurrency cap, the
    // secrets of the Space's secret_hosts -> a new sandbox running the
    // Space's VM as it was frozen; the Space is then gone. not_found (not
    // the owner's), space_corrupted (it fails its checks: kept),
    // no_capacity, quota_exceeded, invalid_argument (secrets for other
    // hosts than the Space's).
    caf::replies_to<resume_atom, std::string, std::string, bool, std::uint32_t,
                    SecretValues>::with<SandboxInfo>,
    // owner -> the owner's Spaces; owner, id -> one; owner, id -> deleted
    caf::replies_to<spaces_atom, std::string>::with<SpaceInfoList>,
    caf::replies_to<space_atom, std::string, std::string>::with<SpaceInfo>,
    caf::replies_to<delete_space_atom, std::string, std::string>::with<done_atom>,
    // Saved templates (template_store.hpp; flow_template.cpp). owner, id,
    // what to save (name, global, recipe_hash, pool_size) -> the template
    // once written; the sandbox runs on. The sandbox must be ready with
    // nothing running; conflict when the owner has a template of that name.
    caf::replies_to<save_template_atom, std::string, std::string, TemplateInfo>::with<TemplateInfo>,
    // owner -> the templates it may use (its own and global ones); owner,
    // name -> one; owner, name -> deleted (only its owner's; conflict while
    // a live sandbox runs from it). Another key's is not_found.
    caf::replies_to<templates_atom, std::string>::with<TemplateInfoList>,
    caf::replies_to<template_info_atom, std::string, std::string>::with<TemplateInfo>,
    caf::replies_to<delete_template_atom, std::string, std::string>::with<done_atom>,
    caf::replies_to<capacity_atom>::with<CapacityInfo>,
    // Refuses new creates, freezes every persistent ready sandbox into a
    // Space (when Spaces are on), destroys the others, then stops.
    caf::replies_to<shutdown_atom>::with<done_atom>,
    // from the sandboxes
    caf::reacts_to<state_atom, SandboxInfo>,
    // from the reaper: id, why, lifetime (true) or idle timeout (false)
    caf::reacts_to<expire_atom, std::string, std::string, bool>,
    // Has the reaper check its deadlines now (tests on the deterministic
    // scheduler, where its timer never fires).
    caf::reacts_to<reap_atom>>;

struct RegistrySettings {
  std::uint32_t max_sandboxes = 8;
  // The registry gives a booting sandbox this long to answer before it
  // treats the create as failed; the driver's own boot timeout is shorter.
  std::chrono::milliseconds ready_timeout{120'000};
  // The warm pools, one per template. A create whose template, vcpus and
  // memory match one takes a waiting VM from it, or restores from its
  // template when none waits; any other create cold boots.
  struct Pool {
    TemplateSpec spec; // with its key
    pool_actor actor;
  };
  std::vector<Pool> pools;
  // The reaper the registry spawns and feeds (reaper.hpp). Off: no sandbox
  // is ever ended for idling or age.
  bool reaper = true;
  ReaperSettings reaper_settings;
  // Where Spaces are kept (VmHost writes them there too). Empty: no Spaces;
  // a freeze is refused and persistent sandboxes are left running when idle.
  std::filesystem::path spaces_dir;
  // Saved templates (template_store.hpp): their directory (empty: none on
  // this host; a save is refused).
  std::filesystem::path saved_templates_dir;
  // Admission by the host's free memory and disk (host_room.hpp); unset:
  // by sandbox slots alone.
  std::optional<HostRoomSettings> host_room;
};

// The most children one fork makes.
inline constexpr std::uint32_t kMaxForkChildren = 32;

registry_actor spawn_registry(caf::actor_system& system, VmHost& vms, RegistrySettings settings);

// "sb-" and 32 random hex digits (128 bits).
std::string new_sandbox_id();

} // namespace vesicle
