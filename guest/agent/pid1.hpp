// The duties of PID 1 in the VM: the initramfs hands over a machine with
// only the root filesystem mounted; the agent makes it a usable Linux
// system, and powers it off on request. None of this runs in --no-init mode.
#pragma once

namespace vesicle::agent {

// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /tmp and /run where they are
// not mounted yet, adds the /dev/fd links, sets the hostname, brings up lo
// and protects the agent from the OOM killer. Each step logs its own
// failure and the rest go on: a half-set-up machine that answers the host
// is more use than a dead one.
void init_machine();

// Syncs, kills every other process, remounts / read-only and powers off.
// Returns only if the power-off itself failed.
void power_off();

} // namespace vesicle::agent
