// Random ids for what hostd names: sandboxes, Spaces, pool VMs, templates'
// build VMs. Lowercase hex, so an id is safe in a path and a QEMU -name.
#pragma once

#include <string>
#include <string_view>

namespace vesicle {

// `prefix` and `digits` (at most 16) random hex digits.
std::string random_id(std::string_view prefix, int digits);

} // namespace vesicle
