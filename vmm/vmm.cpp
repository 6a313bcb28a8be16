#include "vmm/vmm.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string_view>

#include "common/unique_fd.hpp"

namespace vesicle::vmm {

const char* to_string(Accel accel) {
  switch (accel) {
  case Accel::kvm:
    return "kvm";
  case Accel::tcg:
    return "tcg";
  }
  return "unknown";
}

Accel detect_accel() {
  if (const char* forced = std::getenv("VESICLE_ACCEL")) {
    if (std::string_view(forced) == "tcg") return Accel::tcg;
    if (std::string_view(forced) == "kvm") return Accel::kvm;
  }
  UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm) return Accel::tcg;
  // A /dev/kvm can exist without hardware virtualization behind it: kvm_pvm
  // (a paravirtual KVM inside a VM) runs only guest kernels built for it,
  // and ours stops at its first instructions with a KVM internal error.
  // Only the VT-x and AMD-V modules run any x86 guest.
  std::error_code ignored;
  if (std::filesystem::exists("/sys/module/kvm_intel", ignored) ||
      std::filesystem::exists("/sys/module/kvm_amd", ignored))
    return Accel::kvm;
  return Accel::tcg;
}

GuestImages GuestImages::in(const std::filesystem::path& images_dir) {
  return GuestImages{images_dir / "vmlinuz", images_dir / "initrd.img", images_dir / "rootfs.ext4"};
}

Result<void> GuestImages::check() const {
  for (const auto* file : {&kernel, &initrd, &base_disk}) {
    if (file->empty()) return make_error("check guest images", "no path given for a guest image");
    if (::access(file->c_str(), R_OK) != 0) {
      Error error = sys_error("read guest image", file->string());
      error.detail = "build the images with images/build.sh, or point to a directory that has "
                     "vmlinuz, initrd.img and rootfs.ext4";
      return error;
    }
    std::error_code ec;
    if (!std::filesystem::is_regular_file(*file, ec)) {
      return make_error("read guest image", "not a regular file", file->string());
    }
  }
  return {};
}

// A driver without a way to copy a running VM's RAM says so.
asio::awaitable<Result<Snapshot>> Vm::save_fork_snapshot(std::filesystem::path dir,
                                                         ForkSaveStats* /*stats*/,
                                                         AfterForkSave /*after*/) {
  co_return make_error("save fork snapshot", "this VM cannot be snapshotted while it runs",
                       dir.string());
}

asio::awaitable<Result<Snapshot>> Vm::save_fork_snapshot_over(std::filesystem::path dir,
                                                              std::shared_ptr<GuestMemory> /*copy*/,
                                                              ForkSaveStats* stats) {
  co_return co_await save_fork_snapshot(std::move(dir), stats);
}

asio::awaitable<Result<Snapshot>> Vm::save_fork_snapshot_into(ForkLanding& landing,
                                                              ForkSaveStats* /*stats*/,
                                                              AfterForkSave /*after*/) {
  co_return make_error("save fork snapshot", "this VM cannot be saved into a fork landing",
                       landing.snapshot.dir.string());
}

asio::awaitable<Result<ForkLanding>>
Driver::prepare_fork_landing(const Snapshot& /*source*/, std::shared_ptr<GuestMemory> /*memory*/,
                             std::filesystem::path dir, std::vector<VmConfig> /*children*/) {
  co_return make_error("prepare a fork landing", "this driver cannot start VMs ahead of a fork",
                       dir.string());
}

ForkLanding::~ForkLanding() {
  // Filled, the dir is the fork snapshot's; moved from, it is empty.
  if (filled || snapshot.dir.empty()) return;
  children.clear(); // their QEMUs are killed first
  std::error_code ignored;
  std::filesystem::remove_all(snapshot.dir, ignored);
}

} // namespace vesicle::vmm
