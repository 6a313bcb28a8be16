// The VM's tap device. It is created persistent inside the slot's namespace
// (so its address and routes outlive any one QEMU) and each VM attaches to
// it by opening /dev/net/tun there; QEMU receives that fd (-netdev
// tap,fd=N) and never needs to enter the namespace itself.
#pragma once

#include <string>

#include "common/result.hpp"
#include "common/unique_fd.hpp"

namespace vesicle::net {

// Creates the tap `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, persistent) in
// the calling thread's namespace.
Result<void> create_persistent_tap(const std::string& name);

// Opens /dev/net/tun in the calling thread's namespace and attaches to
// `name`. The tap is single-queue, so EBUSY here means another process still
// holds it: a VM of an earlier lease did not exit.
Result<UniqueFd> attach_tap(const std::string& name);

} // namespace vesicle::net
