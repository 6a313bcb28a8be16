// Spaces on disk: sandboxes frozen to a real disk (not tmpfs), so they
// survive a hostd restart and a host reboot.
//
// Layout, under the spaces directory (state_dir/spaces):
//
//   sp-<12 hex>/space    who owns it and what it was (format below)
//   sp-<12 hex>/vm/      the VM (vmm/snapshot.hpp): manifest with sizes and
//                        checksums, device state, `memory` (its RAM, sparse),
//                        disk.qcow2 whose only backing file is the base
//                        image. Spaces frozen before `memory` existed hold a
//                        full-RAM snapshot instead: every RAM page in the
//                        device state, no memory file (manifest "memory
//                        in-state"); they resume as before.
//   sp-<12 hex>.partial/ a freeze in progress (or interrupted: removed at start)
//
// A freeze builds everything in the .partial directory, writes `space` last
// (atomically) and renames the directory into place, so a Space either
// exists whole or not at all. The `space` file is "key value" lines:
//
//   vesicle-space 1
//   space_id sp-0123456789ab
//   owner <key id>
//   sandbox_id sb-...
//   template default
//   egress 1
//   egress_allow pypi.org            (one line per name, any number)
//   secret_host api.example.com      (the hosts it held secrets for; no values)
//   persistent 1
//   vcpus 2
//   memory_mib 1024
//   disk_mib 2048
//   idle_timeout_s 300
//   max_lifetime_s 1800
//   created_at_ms <Unix ms>
//   frozen_at_ms <Unix ms>
//   reason idle
//   machine_id <32 hex>
//   images <fingerprint of the guest images>
//   state_bytes <n>
//   disk_bytes <n>
//   lived_ms <n>                     (running time over every run; a Space
//                                     without it: frozen_at_ms - created_at_ms)
#pragma once

#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "messages/caf_types.hpp"

namespace vesicle {

inline constexpr int kSpaceFormatVersion = 1;
// The RAM file in a Space's vm directory.
inline constexpr const char* kSpaceMemoryName = "memory";

std::string format_space(const SpaceInfo& space);
// Errors name the line that is wrong.
Result<SpaceInfo> parse_space(std::string_view text);

// "sp-" and 32 random hex digits (128 bits); Spaces made before ids grew
// have 12, and stay valid. Anything else is not a Space id (and never a
// path outside the spaces directory).
std::string new_space_id();
bool is_space_id(std::string_view id);

class SpaceStore {
public:
  explicit SpaceStore(std::filesystem::path dir) : dir_(std::move(dir)) {}

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path space_dir(const std::string& id) const { return dir_ / id; }
  std::filesystem::path vm_dir(const std::string& id) const { return dir_ / id / "vm"; }
  std::filesystem::path partial_dir(const std::string& id) const {
    return dir_ / (id + ".partial");
  }

  // Every Space of `owner`, oldest first. A directory whose `space` file
  // cannot be read is logged and skipped (it is not anyone's to list).
  std::vector<SpaceInfo> list(const std::string& owner) const;
  // The Space if it exists and is `owner`'s; else a not_found Error (the
  // same for another key's Space, so ids cannot be probed across keys).
  Result<SpaceInfo> find(const std::string& owner, const std::string& id) const;
  // Removes a Space: gone for every later call once this returns, its
  // files deleted on the blocking pool (vmm/blocking.hpp).
  Result<void> remove(const std::string& id) const;

  // Writes the `space` file into the partial dir and moves the dir into
  // place (both made durable with fsync).
  Result<void> commit(const SpaceInfo& space) const;

  // Removes the .partial directories an interrupted freeze left, and the
  // .removing ones of a remove() cut short; returns how many.
  unsigned sweep_partial() const;

  // A Space resumes once: a resume claims it until its sandbox is up (the
  // Space is then gone) or the resume failed. A claimed Space can be
  // neither resumed again nor deleted. claim() is false when it is taken.
  bool claim(const std::string& id) { return claimed_.insert(id).second; }
  void release_claim(const std::string& id) { claimed_.erase(id); }
  bool claimed(const std::string& id) const { return claimed_.count(id) > 0; }

private:
  std::filesystem::path dir_;
  std::set<std::string> claimed_;
};

} // namespace vesicle
