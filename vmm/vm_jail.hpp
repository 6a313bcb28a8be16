// The jail a VM's QEMU runs in (vmm/jail.hpp does the confining): what it
// can see and who it is. Every file QEMU opens by name is bound into the
// jail at the same path it has on the host, so its command line and the
// backing-file names inside qcow2 headers work unchanged; nothing else of
// the host is there (no /etc, no shell, no other VM's files), and what it
// must not change is bound read-only.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <vector>

#include "common/result.hpp"
#include "vmm/jail.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::vmm {

struct VmJailInputs {
  uid_t uid = 0;
  gid_t gid = 0;
  std::filesystem::path vm_dir;  // sockets, overlay, log: read-write
  std::filesystem::path overlay; // its backing chain is bound read-only
  GuestImages images;            // kernel and initrd: read-only
  Accel accel = Accel::tcg;      // KVM adds /dev/kvm
  std::vector<int> cgroup_procs_fds;
};

// The Jail for one VM's QEMU. Reads the overlay's qcow2 header (and its
// backing files' in turn) to find the disks it stacks on.
Result<Jail> vm_jail(const VmJailInputs& inputs);

} // namespace vesicle::vmm
