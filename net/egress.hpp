// What a sandbox may reach: nothing, everything its uplink reaches (minus
// the always-denied networks), or the names of an allowlist.
#pragma once

#include <string>
#include <vector>

#include "common/result.hpp"
#include "net/secrets.hpp"

namespace vesicle::net {

enum class EgressMode { off, open, allowlist };
const char* to_string(EgressMode mode);

struct EgressPolicy {
  EgressMode mode = EgressMode::open;
  std::vector<std::string> allow; // patterns, for EgressMode::allowlist only
  // Headers the proxy sets for granted names (allowlist only; every name
  // also allowed). Held in memory only; see secrets.hpp.
  SecretGrants secrets;

  static EgressPolicy open() { return {EgressMode::open, {}, {}}; }
  static EgressPolicy off() { return {EgressMode::off, {}, {}}; }
  // Checks the patterns (see allowlist.hpp); an empty list is an error:
  // say egress off instead.
  static Result<EgressPolicy> allowlist(std::vector<std::string> patterns);
};

} // namespace vesicle::net
