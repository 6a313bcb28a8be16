// Finding the virtio-serial port the host named (e.g. "agent"): the kernel
// lists each port under /sys/class/virtio-ports/<dev>/name, and the device
// node is /dev/<dev> (vport0p1, vport1p1, ... depending on probe order).
#pragma once

#include <string>

#include "common/result.hpp"

namespace vesicle::agent {

// The /dev path of the port called `name`; an Error when no port has that
// name (yet: the virtio_console module may still be probing).
Result<std::string> find_virtio_port(const std::string& name,
                                     const std::string& sysfs_dir = "/sys/class/virtio-ports");

} // namespace vesicle::agent
