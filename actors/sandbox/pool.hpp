// The warm pool: one actor per template keeps `min_ready` VMs restored from
// the template's snapshot, booted and idle, so a create only has to hand one
// over.
//
// What it does, in order:
//   1. At start it asks VmHost to check the template's snapshot (or build it:
//      cold boot, preload modules, save) and waits for template_atom.
//   2. Once the template is ready it keeps ready + restoring >= min_ready,
//      never letting ready + restoring + in_use exceed max, by asking VmHost
//      to restore VMs one at a time (two cores under TCG: parallel restores
//      only slow each other down).
//   3. take hands out one waiting VM (a hit) or "" (a miss; the registry then
//      restores on demand or cold boots) and starts a refill.
//   4. Supervision: a waiting VM whose process dies is dropped and replaced;
//      a restore that fails is retried after a pause that doubles each time
//      (up to a minute); a template that cannot be built is retried the same
//      way, and creates meanwhile cold boot.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <caf/typed_actor.hpp>

#include "messages/caf_types.hpp"

namespace vesicle {

class VmHost;

using pool_actor = caf::typed_actor<
    // A waiting VM's id for the registry to adopt, or "" when none waits.
    caf::replies_to<take_atom>::with<std::string>,
    // From the registry: how many live sandboxes came from this template.
    caf::reacts_to<usage_atom, std::uint32_t>, caf::replies_to<pool_info_atom>::with<PoolInfo>,
    // From VmHost: the template is usable (true) or not (false, why).
    caf::reacts_to<template_atom, bool, std::string>,
    // From VmHost, per pool VM: restored (QEMU's pid), failed, exited.
    caf::reacts_to<vm_booted_atom, std::string, std::int32_t>,
    caf::reacts_to<vm_boot_failed_atom, std::string, std::string>,
    caf::reacts_to<vm_exited_atom, std::string, std::string>, caf::reacts_to<refill_atom>,
    // Stops refilling and discards the waiting VMs.
    caf::replies_to<shutdown_atom>::with<done_atom>>;

// A template and the pool kept from it.
struct TemplateSpec {
  std::string name = "default";
  std::uint32_t vcpus = 2;
  std::uint32_t memory_mib = 1024;
  // Imported in the REPL before the snapshot, so cells that use them start
  // fast in every sandbox.
  std::vector<std::string> preload_modules;
  std::uint32_t min_ready = 2;
  std::uint32_t max = 8;
  // A saved template (template_store.hpp): its directory. Its snapshot is
  // checked from there and never built; key is its template id.
  std::filesystem::path saved_dir;
  // Names the template's files; VmHost fills it in (it includes a hash of
  // the guest images, so new images never restore an old snapshot).
  std::string key;
};

pool_actor spawn_pool(caf::actor_system& system, TemplateSpec spec, VmHost& vms);

} // namespace vesicle
