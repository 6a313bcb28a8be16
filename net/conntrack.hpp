// Conntrack scrubbing through ctnetlink, so a slot handed to a new sandbox
// carries no flow state (NAT mappings, "established" verdicts) of the last.
#pragma once

#include <cstdint>
#include <optional>

#include "common/result.hpp"

namespace vesicle::net {

// Deletes the conntrack entries of the calling thread's network namespace:
// all of them, or only those whose ct mark equals `mark`.
Result<void> flush_conntrack(std::optional<uint32_t> mark = std::nullopt);

// Number of entries in the calling thread's namespace (for tests and stats).
Result<int> count_conntrack();

} // namespace vesicle::net
