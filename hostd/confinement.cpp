#include "hostd/confinement.hpp"

#include "common/log.hpp"

namespace vesicle::hostd {

Result<std::shared_ptr<const vmm::VmConfinement>>
open_confinement(const config::HostdConfig& config, bool sweep) {
  const auto& settings = config.confinement();
  if (settings.disabled()) {
    if (sweep) log::warn("confinement is off: every QEMU runs as root, unconfined");
    return std::shared_ptr<const vmm::VmConfinement>{};
  }
  auto confinement = std::make_shared<vmm::VmConfinement>();
  auto uids = vmm::UidPool::create(settings.uid_first(), settings.uid_count());
  if (!uids)
    return std::move(uids).error().with_context("checking confinement.uid_first and uid_count");
  confinement->uids = std::make_shared<vmm::UidPool>(std::move(uids.value()));
  if (sweep) {
    auto killed = confinement->uids->sweep();
    if (!killed) return std::move(killed).error().with_context("sweeping the VM uids");
    if (*killed > 0)
      log::info("killed processes a previous run left as VM uids", {{"processes", *killed}});
  }
  if (!settings.no_cgroups()) {
    auto tree = vmm::cgroup::Tree::open_host(settings.cgroup_parent());
    if (!tree)
      return std::move(tree).error().with_context(
          "setting up cgroups for the VMs (confinement.no_cgroups turns them off)");
    if (sweep) {
      const auto swept = tree->sweep();
      if (!swept.removed.empty())
        log::info("removed cgroup leaves a previous run left",
                  {{"leaves", swept.removed.size()}, {"processes_killed", swept.killed.size()}});
      for (const auto& failed : swept.failed)
        log::warn("a leftover cgroup leaf could not be removed", {{"error", failed.message()}});
    }
    confinement->cgroups = std::make_shared<const vmm::cgroup::Tree>(std::move(tree.value()));
  }
  return std::shared_ptr<const vmm::VmConfinement>(std::move(confinement));
}

} // namespace vesicle::hostd
