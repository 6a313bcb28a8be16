// Random ids for what hostd names: sandboxes, Spaces, pool VMs, templates'
// build VMs. Lowercase hex, so an id is safe in a path and a QEMU -name.
// The bits come from the kernel's CSPRNG (getrandom): an id names files and
// grants access to a sandbox's traffic, so it must not be guessable from
// earlier ids, which a seeded std::mt19937 would allow.
#pragma once

#include <string>
#include <string_view>

namespace vesicle {

// The number of hex digits in a sandbox or Space id: 128 bits.
inline constexpr int kIdDigits = 32;

// `prefix` and `digits` (at most 64) random hex digits.
std::string random_id(std::string_view prefix, int digits = kIdDigits);

// A cluster node's sandbox and Space ids start their hex digits with the
// node's tag (hostd/cluster_identity.hpp), so a gateway routes a call by
// the id alone. Set once at start, before any id is made; "" (a single
// host): all digits random.
void set_node_id_tag(std::string tag);
// `prefix`, the node tag, then random hex digits: kIdDigits in all.
std::string node_scoped_id(std::string_view prefix);

} // namespace vesicle
