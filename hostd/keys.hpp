// API keys. The keys file (state_dir/keys, mode 0600) holds one line per
// key: its id, the SHA-256 of the key (never the key itself) and, optionally,
// its tier (hostd/tiers.hpp; a line without one has the configuration's
// default_key_tier) and the word "admin" for an operator's key (the
// operator's page and /v1/admin: every key's sandboxes). A request's
// key is hashed and compared against every stored hash in constant time;
// the key's id is who owns the sandboxes it creates. Keys are never logged.
//
// Key ids are "key-" and 32 random hex digits (128 bits, from getrandom):
// two keys sharing an id would share every sandbox and Space. Keys made
// before ids grew have 8 hex digits; their lines load as they are (their
// id names their Spaces on disk, so it is not rewritten), and a file in
// which two lines share an id is refused.
#pragma once

#include <array>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace vesicle::hostd {

using Digest = std::array<unsigned char, 32>;

Digest sha256(std::string_view data);
std::string to_hex(const Digest& digest);
std::optional<Digest> digest_from_hex(std::string_view hex);
// "key-" and 32 hex digits from getrandom (128 bits).
Result<std::string> new_key_id();

// CRYPTO_memcmp: the time taken does not depend on where the bytes differ.
bool constant_time_equal(const Digest& a, const Digest& b);

struct KeyEntry {
  std::string id; // "key-" and 32 hex digits (8 for older keys); names the owner
  Digest hash;
  std::string tier;   // "" = the configuration's default_key_tier
  bool admin = false; // may use /v1/admin and /ui
};

class KeyStore {
public:
  // Reads `path`; a missing file is an empty store.
  static Result<KeyStore> load(std::filesystem::path path);

  // Reads the file again (SIGHUP, POST /v1/admin/keys/reload). On success
  // the store holds what the file holds now and the ids that are no longer
  // in it are returned; on failure (a line that does not parse) it is left
  // as it was, so a typo in the file locks nobody out.
  Result<std::vector<std::string>> reload();

  // Ids of keys removed by a reload whose sandboxes are kept running
  // (keys.removed_key_sandboxes "keep"): they authenticate no more, but
  // the admin listing still shows their sandboxes.
  void retire(const std::string& id) { retired_.push_back(id); }
  // Every owner there can be: the keys' ids, then the retired ids.
  std::vector<std::string> owners() const;

  // Makes a new random key, stores its hash (rewriting the file atomically)
  // and returns the key, which exists nowhere else from then on.
  struct NewKey {
    std::string id;
    std::string key;
  };
  // `tier` must be a tier name (hostd/tiers.hpp) or "" for the default.
  Result<NewKey> add(std::string tier = {}, bool admin = false);

  // The id of the key `presented`, if it is one of ours.
  std::optional<std::string> authenticate(std::string_view presented) const;

  // The entry of key id `id`, or null.
  const KeyEntry* find(std::string_view id) const;

  bool empty() const { return entries_.empty(); }
  const std::vector<KeyEntry>& entries() const { return entries_; }
  const std::filesystem::path& path() const { return path_; }

private:
  Result<void> save() const;
  std::filesystem::path path_;
  std::vector<KeyEntry> entries_;
  std::vector<std::string> retired_;
};

// What a start asks of the keys: hostd's and vesicle-gateway's --new-key,
// --tier and --admin.
struct KeyRequest {
  bool new_key = false; // make one even if the file has keys already
  std::string tier;     // "" = the configuration's default_key_tier
  bool admin = false;
};

// The keys a start runs with, and the key it made, if it made one.
struct StartKeys {
  KeyStore store;
  std::optional<KeyStore::NewKey> made;
  // What shows the made key once ("" if none): its id, tier and the key.
  std::string made_text;
};

// Makes `state_dir` (readable by its owner only), loads state_dir/keys and,
// when `request.new_key` or when the file has no key yet, adds one. Where
// the made key is shown (a terminal, a private file) is the caller's.
Result<StartKeys> open_keys_at_start(const std::filesystem::path& state_dir,
                                     const KeyRequest& request, const std::string& default_tier);

} // namespace vesicle::hostd
