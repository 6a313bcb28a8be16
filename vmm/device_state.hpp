// A VM's device state without its RAM, in a form restore loads like any
// snapshot's state file.
//
// QEMU 7.2's QMP xen-save-devices-state writes every device section but no
// RAM (qemu_save_device_state; despite the name it works for any machine):
// the right save for a VM whose RAM hostd copies itself (private_memory.hpp).
// Its stream lacks the configuration section a migration stream starts
// with, which migrate-incoming requires (send-configuration defaults on),
// and the VM description at its end. This inserts the section a microvm
// with x-ignore-shared on writes, so a restored VM loads the state exactly
// as it loads a migration's: same command line, same QMP steps.
#pragma once

#include <string>
#include <string_view>

#include "common/result.hpp"

namespace vesicle::vmm {

// `saved`: what xen-save-devices-state wrote. Returns the stream to store
// as the snapshot's state file. An Error when `saved` does not start with
// QEMU's stream header.
Result<std::string> loadable_device_state(std::string_view saved);

} // namespace vesicle::vmm
