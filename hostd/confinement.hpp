// The confinement of hostd's QEMUs (vmm::VmConfinement) from the
// configuration's `confinement` section: the uid range and the cgroup tree,
// and the start-up sweep of what a crashed predecessor left in them.
#pragma once

#include <memory>

#include "common/result.hpp"
#include "messages/config.pb.h"
#include "vmm/vmm.hpp"

namespace vesicle::hostd {

// Null when the configuration turns confinement off. With `sweep`, first
// kills processes left running as the range's uids and removes leftover
// cgroup leaves (and logs what it found).
Result<std::shared_ptr<const vmm::VmConfinement>>
open_confinement(const config::HostdConfig& config, bool sweep);

} // namespace vesicle::hostd
