// Host-name allowlists: "allowed.test" matches exactly that name,
// "*.example.test" matches any name below example.test (not example.test
// itself). Matching is on normalized names: ASCII lower case, no trailing
// dot, letters/digits/hyphen/underscore labels, and a last label that is not
// all digits, so no IP literal in any spelling ("1.2.3.4", "0x7f.1", "1234")
// ever matches.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace vesicle::net {

// The normalized form of `name`, or nullopt when it is not a valid host
// name (IP literals included).
std::optional<std::string> normalize_hostname(std::string_view name);

class Allowlist {
public:
  Allowlist() = default;
  // Every pattern is checked; the Error names the first bad one and why.
  static Result<Allowlist> parse(const std::vector<std::string>& patterns);

  bool allows(std::string_view name) const;
  const std::vector<std::string>& patterns() const { return patterns_; }
  bool empty() const { return patterns_.empty(); }

private:
  std::vector<std::string> patterns_; // normalized, as given
  std::vector<std::string> exact_;
  std::vector<std::string> suffixes_; // ".example.test"
};

} // namespace vesicle::net
