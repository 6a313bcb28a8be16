// Saved templates on disk: sandboxes kept under a name (POST /v1/templates)
// for new sandboxes to start from. They survive a hostd restart.
//
// Layout, under the saved-templates directory (templates_dir/saved):
//
//   tp-<32 hex>/vm/        the VM: a snapshot (vmm/snapshot.hpp: manifest
//                          with sizes and checksums, device state, disk.qcow2
//                          whose only backing file is the base image)
//   tp-<32 hex>/memory     its RAM file (sparse; the manifest names it)
//   tp-<32 hex>/template   who owns it and what it is (format below)
//
// The RAM file's path is written into the manifest, so a save writes
// straight into the template's own directory, and `template` last
// (written to a temporary file and renamed): a template exists whole once
// its `template` file does, and a directory without one is what a save cut
// short left (removed at load). The `template` file is "key value" lines:
//
//   vesicle-template 1
//   template_id tp-...
//   name pandas-ml
//   owner <key id>
//   global 0
//   from_sandbox sb-...
//   created_at_ms <Unix ms>
//   vcpus 2
//   memory_mib 1024
//   disk_mib 2048
//   images <fingerprint of the guest images>
//   recipe <hash, or empty>
//   pool_size 1
//   memory_bytes <n>
//   state_bytes <n>
//   disk_bytes <n>
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "messages/caf_types.hpp"

namespace vesicle {

inline constexpr int kTemplateFormatVersion = 1;

std::string format_template(const TemplateInfo& info);
// Errors name the line that is wrong.
Result<TemplateInfo> parse_template(std::string_view text);

// "tp-" and 32 random hex digits.
std::string new_template_id();
bool is_template_id(std::string_view id);

// A template name: 1 to 64 of [a-z0-9._-], starting with a letter or digit
// (it travels in URLs and file listings). Not "default": that is the
// configured pool's. The Error says what is wrong.
Result<void> check_template_name(std::string_view name);

// What a key's saved templates cost: the one number a quota compares.
// Memory is the RAM files' data (what the host's page cache and disk hold
// for them); disk is their device state and disk changes.
struct TemplateUsage {
  std::uint32_t count = 0;
  std::uint64_t memory_bytes = 0;
  std::uint64_t disk_bytes = 0;
};
// The usage of `owner`'s own templates among `templates` (global ones count
// against the key that saved them).
TemplateUsage template_usage(const std::vector<TemplateInfo>& templates, const std::string& owner);

// Whether `key` may use and see `info`: its own, or a global one.
inline bool template_visible(const TemplateInfo& info, const std::string& key) {
  return info.global || info.owner == key;
}

class TemplateStore {
public:
  explicit TemplateStore(std::filesystem::path dir) : dir_(std::move(dir)) {}

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path template_dir(const std::string& id) const { return dir_ / id; }
  std::filesystem::path vm_dir(const std::string& id) const { return dir_ / id / "vm"; }
  std::filesystem::path memory_file(const std::string& id) const { return dir_ / id / "memory"; }

  // Every template whose `template` file reads, oldest first. Directories
  // without one (a save cut short) are removed; unreadable files are
  // logged and skipped.
  std::vector<TemplateInfo> load() const;
  // Writes the `template` file (atomically, fsynced): the template exists.
  Result<void> commit(const TemplateInfo& info) const;
  // Removes a template's directory (renamed aside first, deleted on the
  // blocking pool): gone for every later load once this returns.
  Result<void> remove(const std::string& id) const;

private:
  std::filesystem::path dir_;
};

} // namespace vesicle
