// The identity refresh after a restore (guest.proto RefreshIdentity): every
// clone of one snapshot starts with the same kernel RNG state, clock,
// hostname and machine-id, and this gives it its own.
//
// Checking and applying are separate so a bad request changes nothing, and
// so the checks can be tested on the host without touching it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"
#include "messages/guest.pb.h"

namespace vesicle::agent {

inline constexpr std::size_t kMinIdentityEntropyBytes = 32;
inline constexpr std::size_t kMaxIdentityEntropyBytes = 512;
// The kernel's limit (HOST_NAME_MAX, the UTS nodename).
inline constexpr std::size_t kMaxHostnameBytes = 64;
// 2000-01-01T00:00:00Z: a host clock before this is broken, and setting a
// guest to it would break TLS and make every file look from the future.
inline constexpr std::int64_t kMinIdentityUnixTimeNs = 946684800LL * 1000000000LL;

// Each returns empty when the value is acceptable, else a sentence naming
// the field, what is wrong and what is expected.
std::string check_hostname(std::string_view hostname);
std::string check_machine_id(std::string_view machine_id);
std::string check_identity(const guest::RefreshIdentity& identity);

// Where a checked refresh goes.
struct IdentityTargets {
  // The kernel steps: entropy and CRNG reseed, clock, hostname. Only PID-1
  // mode sets this; on the host (test mode) they would change the host.
  bool kernel = false;
  // Rewritten atomically; empty: not written.
  std::string machine_id_path;
};

// Applies a request check_identity() accepted. Every step is tried even
// when an earlier one failed; the result lists the failures, each naming its
// step (empty: all applied).
std::vector<Error> apply_identity(const guest::RefreshIdentity& identity,
                                  const IdentityTargets& targets);

// Writes `machine_id` and a newline to `path` through a temporary file in
// the same folder and a rename, so a reader sees the old id or the new one,
// never a partial file.
Result<void> write_machine_id(const std::string& path, std::string_view machine_id);

} // namespace vesicle::agent
