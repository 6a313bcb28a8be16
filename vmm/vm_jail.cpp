#include "vmm/vm_jail.hpp"

#include "vmm/snapshot.hpp"

namespace vesicle::vmm {

namespace fs = std::filesystem;

Result<Jail> vm_jail(const VmJailInputs& inputs) {
  Jail jail;
  jail.uid = inputs.uid;
  jail.gid = inputs.gid;
  jail.cgroup_procs_fds = inputs.cgroup_procs_fds;
  auto bind = [&jail](const fs::path& path, bool read_only) {
    // QEMU opens the path it was given (the images are symlinks into the
    // image cache): the target is that path, the source what it names.
    std::error_code ec;
    const fs::path absolute = fs::absolute(path, ec).lexically_normal();
    fs::path real = fs::canonical(absolute, ec);
    if (ec) real = absolute;
    jail.mounts.push_back({real, absolute, read_only});
  };
  bind(inputs.vm_dir, false);
  bind(inputs.images.kernel, true);
  bind(inputs.images.initrd, true);
  // The disks the overlay stacks on: a template's or fork's disk, the base
  // image. At most 16 deep (a fork of a fork of ...), as open_snapshot checks.
  fs::path image = inputs.overlay;
  for (int depth = 0; depth < 16; ++depth) {
    auto backing = snapshot::qcow2_backing_file(image);
    if (!backing)
      return std::move(backing).error().with_context("finding the disks " +
                                                     inputs.overlay.string() + " stacks on");
    if (backing->empty()) break;
    bind(*backing, true);
    image = *backing;
  }
  for (const auto& mount : qemu_runtime_mounts())
    jail.mounts.push_back(mount);
  jail.devices = {"/dev/null", "/dev/urandom"};
  if (inputs.accel == Accel::kvm) jail.devices.push_back("/dev/kvm");
  return jail;
}

} // namespace vesicle::vmm
