#include "hostd/keys.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "common/hex.hpp"
#include "common/unique_fd.hpp"
#include "hostd/runtime_core.hpp" // make_private_dir
#include "hostd/tiers.hpp"

namespace vesicle::hostd {

namespace {

Result<std::string> random_hex(std::size_t bytes) {
  std::vector<unsigned char> buffer(bytes);
  if (RAND_bytes(buffer.data(), static_cast<int>(buffer.size())) != 1)
    return make_error("RAND_bytes", "OpenSSL could not produce random bytes");
  return vesicle::to_hex(buffer.data(), buffer.size());
}

Result<void> write_all(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    auto written = ::write(fd, data.data(), data.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      return sys_error("write", path);
    }
    data.remove_prefix(static_cast<std::size_t>(written));
  }
  return {};
}

} // namespace

Result<std::string> new_key_id() {
  unsigned char bytes[16];
  std::size_t got = 0;
  while (got < sizeof bytes) {
    auto n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error("getrandom", "a key id");
    }
    got += static_cast<std::size_t>(n);
  }
  return "key-" + vesicle::to_hex(bytes, sizeof bytes);
}

// Every request hashes its key. With EVP_sha256() each EVP_Digest looks the
// algorithm up in OpenSSL's providers again: 0.92 us a hash, against 0.25
// fetched once (measured here). The fetched one is never freed: it lives as
// long as the process. EVP_Digest also allocates and frees a context per
// call (3.6% of hostd's CPU per exec in perf), so each thread keeps one.
namespace {
const EVP_MD* sha256_algorithm() {
  static const EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return fetched ? fetched : EVP_sha256();
}

struct FreeDigestContext {
  void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
};
} // namespace

Digest sha256(std::string_view data) {
  thread_local std::unique_ptr<EVP_MD_CTX, FreeDigestContext> context(EVP_MD_CTX_new());
  Digest digest{};
  unsigned int size = 0;
  if (context && EVP_DigestInit_ex2(context.get(), sha256_algorithm(), nullptr) == 1 &&
      EVP_DigestUpdate(context.get(), data.data(), data.size()) == 1 &&
      EVP_DigestFinal_ex(context.get(), digest.data(), &size) == 1)
    return digest;
  EVP_Digest(data.data(), data.size(), digest.data(), &size, sha256_algorithm(), nullptr);
  return digest;
}

std::string to_hex(const Digest& digest) {
  return vesicle::to_hex(digest.data(), digest.size());
}

std::optional<Digest> digest_from_hex(std::string_view text) {
  if (text.size() != 64) return std::nullopt;
  Digest digest{};
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < digest.size(); ++i) {
    int high = nibble(text[2 * i]), low = nibble(text[2 * i + 1]);
    if (high < 0 || low < 0) return std::nullopt;
    digest[i] = static_cast<unsigned char>(high << 4 | low);
  }
  return digest;
}

bool constant_time_equal(const Digest& a, const Digest& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Result<KeyStore> KeyStore::load(std::filesystem::path path) {
  KeyStore store;
  store.path_ = std::move(path);
  std::error_code exists_error;
  if (!std::filesystem::exists(store.path_, exists_error) && !exists_error) return store;
  std::ifstream in(store.path_);
  if (!in) return sys_error("open keys file", store.path_.string());
  std::string line;
  int number = 0;
  std::set<std::string> ids;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string id, hash_hex, word, tier;
    bool admin = false;
    fields >> id >> hash_hex;
    auto hash = digest_from_hex(hash_hex);
    if (id.empty() || !hash)
      return make_error("read keys file",
                        "line " + std::to_string(number) +
                            " is not \"<key id> <64 hex digits of SHA-256> [tier] [admin]\"; fix "
                            "or remove it",
                        store.path_.string());
    // After the hash: a tier name, the word "admin", or both.
    while (fields >> word) {
      if (word == "admin") {
        admin = true;
      } else if (tier.empty() && parse_tier(word)) {
        tier = word;
      } else {
        return make_error("read keys file",
                          "line " + std::to_string(number) + " has \"" + word +
                              "\" after the hash; a tier (" + kTierNames +
                              ") or \"admin\" may follow it",
                          store.path_.string());
      }
    }
    // Two keys with one id would own each other's sandboxes.
    if (!ids.insert(id).second)
      return make_error("read keys file",
                        "line " + std::to_string(number) + " repeats the key id " + id +
                            "; each key needs its own id (remove one of the lines, or make a "
                            "new key with hostd --new-key)",
                        store.path_.string());
    store.entries_.push_back({id, *hash, tier, admin});
  }
  return store;
}

Result<std::vector<std::string>> KeyStore::reload() {
  auto fresh = load(path_);
  if (!fresh) return std::move(fresh).error().with_context("reloading the API keys");
  std::vector<std::string> removed;
  for (const auto& entry : entries_)
    if (!fresh->find(entry.id)) removed.push_back(entry.id);
  entries_ = std::move(fresh->entries_);
  // A key that comes back is a key again, not retired.
  std::erase_if(retired_, [&](const std::string& id) { return find(id) != nullptr; });
  return removed;
}

std::vector<std::string> KeyStore::owners() const {
  std::vector<std::string> ids;
  for (const auto& entry : entries_)
    ids.push_back(entry.id);
  for (const auto& id : retired_)
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  return ids;
}

std::optional<std::string> KeyStore::authenticate(std::string_view presented) const {
  auto hash = sha256(presented);
  // Compare against every entry, without stopping at a match, so the time
  // taken says nothing about which key matched or how many there are before it.
  const KeyEntry* match = nullptr;
  for (const auto& entry : entries_)
    if (constant_time_equal(entry.hash, hash)) match = &entry;
  if (!match) return std::nullopt;
  return match->id;
}

const KeyEntry* KeyStore::find(std::string_view id) const {
  for (const auto& entry : entries_)
    if (entry.id == id) return &entry;
  return nullptr;
}

Result<KeyStore::NewKey> KeyStore::add(std::string tier, bool admin) {
  if (!tier.empty() && !parse_tier(tier))
    return make_error("add an API key",
                      "unknown tier \"" + tier + "\"; the tiers are " + kTierNames);
  auto id = new_key_id();
  if (!id) return std::move(id).error();
  // 128 random bits do not collide; the check costs nothing.
  if (find(id.value())) return make_error("add an API key", "a new key id collided; try again");
  auto secret = random_hex(32);
  if (!secret) return std::move(secret).error();
  NewKey created{id.value(), "vsk_" + secret.value()};
  entries_.push_back({created.id, sha256(created.key), std::move(tier), admin});
  auto saved = save();
  if (!saved) {
    entries_.pop_back();
    return std::move(saved).error().with_context("adding an API key");
  }
  return created;
}

// Write to a temporary file beside the keys file, fsync, rename over it,
// fsync the directory: a crash leaves the old file or the new, never half.
Result<void> KeyStore::save() const {
  std::error_code ignored;
  std::filesystem::create_directories(path_.parent_path(), ignored);
  std::string text =
      "# vesicle API keys: <key id> <SHA-256 of the key, hex> [tier] [admin]. The keys themselves "
      "are not stored.\n";
  for (const auto& entry : entries_)
    text += entry.id + " " + to_hex(entry.hash) + (entry.tier.empty() ? "" : " " + entry.tier) +
            (entry.admin ? " admin" : "") + "\n";
  auto temporary = path_.string() + ".tmp";
  UniqueFd fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return sys_error("create", temporary);
  auto written = write_all(fd.get(), text, temporary);
  if (!written || ::fsync(fd.get()) != 0) {
    auto error = written ? sys_error("fsync", temporary) : std::move(written).error();
    ::unlink(temporary.c_str());
    return error;
  }
  fd.reset();
  if (::rename(temporary.c_str(), path_.c_str()) != 0) {
    auto error = sys_error("rename", temporary + " to " + path_.string());
    ::unlink(temporary.c_str());
    return error;
  }
  UniqueFd dir(::open(path_.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir) ::fsync(dir.get());
  return {};
}

Result<StartKeys> open_keys_at_start(const std::filesystem::path& state_dir,
                                     const KeyRequest& request, const std::string& default_tier) {
  if (auto made = make_private_dir(state_dir); !made) return made.error();
  auto store = KeyStore::load(state_dir / "keys");
  if (!store) return std::move(store).error();
  StartKeys keys{std::move(store.value()), std::nullopt, {}};
  if (!request.new_key && !keys.store.empty()) return keys;
  auto created = keys.store.add(request.tier, request.admin);
  if (!created) return std::move(created).error();
  const auto& tier = request.tier.empty() ? default_tier : request.tier;
  keys.made_text = std::string("vesicle ") + (request.admin ? "admin " : "") + "API key " +
                   created->id + ", tier " + tier + " (shown only this once; store it now):\n" +
                   created->key + "\n";
  keys.made = std::move(created.value());
  return keys;
}

} // namespace vesicle::hostd
