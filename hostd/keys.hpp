// API keys. The keys file (state_dir/keys, mode 0600) holds one line per
// key: its id, the SHA-256 of the key (never the key itself) and, optionally,
// its tier (hostd/tiers.hpp; a line without one has the configuration's
// default_key_tier) and the word "admin" for an operator's key (the
// operator's page and /v1/admin: every key's sandboxes). A request's
// key is hashed and compared against every stored hash in constant time;
// the key's id is who owns the sandboxes it creates. Keys are never logged.
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
// CRYPTO_memcmp: the time taken does not depend on where the bytes differ.
bool constant_time_equal(const Digest& a, const Digest& b);

struct KeyEntry {
  std::string id; // "key-" and 8 hex digits; names the owner
  Digest hash;
  std::string tier; // "" = the configuration's default_key_tier
  bool admin = false; // may use /v1/admin and /ui
};

class KeyStore {
public:
  // Reads `path`; a missing file is an empty store.
  static Result<KeyStore> load(std::filesystem::path path);

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
};

} // namespace vesicle::hostd
