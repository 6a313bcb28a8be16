// VmHost, the launch plans: how acquire() gets a new sandbox its VM from a
// pool VM, a template, a fork snapshot, a Space or a cold boot, and what each
// path falls back to.
#include "actors/sandbox/vm_host.hpp"

#include <optional>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <caf/send.hpp>

#include "common/log.hpp"
#include "vmm/snapshot.hpp"

namespace vesicle {

namespace asio = boost::asio;
namespace fs = std::filesystem;

// Adopts a waiting pool VM, with the sandbox's egress in force. Null when
// it died while waiting (the plan then falls back to its template).
asio::awaitable<Result<std::optional<VmHost::Acquired>>>
VmHost::adopt_pool_vm(const std::string& pool_vm_id, const SandboxSpec& spec) {
  auto found = pool_vms_.find(pool_vm_id);
  if (found == pool_vms_.end()) co_return std::optional<Acquired>{};
  PoolVm pooled = std::move(found->second);
  pool_vms_.erase(found);
  if (!pooled.vm->running()) {
    pooled.vm->destroy();
    co_return std::optional<Acquired>{};
  }
  // An adopted pool VM's lease stays held by the pool's coroutine, which
  // ends after the VM's process has exited.
  if (pooled.network && !pooled.network->has_egress(spec.egress, spec.egress_allow, spec.secrets)) {
    // Pool VMs wait with the default egress (VmSettings::pool_egress_open);
    // any other is in force before the create answers.
    auto egress = co_await pooled.network->set_egress(network_->system(), spec.egress,
                                                      spec.egress_allow, spec.secrets);
    if (!egress) {
      pooled.vm->destroy();
      co_return std::move(egress).error().with_context("setting the sandbox's egress");
    }
  }
  Acquired got;
  got.vm = std::move(pooled.vm);
  got.target = std::move(pooled.target);
  got.network = std::move(pooled.network);
  got.source = "pool";
  got.template_key = std::move(pooled.template_key);
  co_return std::optional<Acquired>{std::move(got)};
}

// Restores a child from the fork snapshot its parent became.
asio::awaitable<Result<VmHost::Acquired>> VmHost::restore_fork_child(const std::string& id,
                                                                     const SandboxSpec& spec,
                                                                     const std::string& base_id,
                                                                     Acquired got) {
  got.base = fork_snapshots_.find(base_id);
  if (!got.base)
    co_return make_error("restore a fork child", "fork snapshot " + base_id + " no longer exists");
  auto config = vm_config(id, spec.vcpus, spec.memory_mib, got.network.get());
  auto restored = co_await driver_.restore(got.base->snapshot(), std::move(config));
  if (!restored)
    co_return std::move(restored).error().with_context(
        "restoring from the parent's fork snapshot failed");
  got.vm = std::move(restored.value());
  got.source = "fork";
  co_return got;
}

// Restores the Space open_space checked; the Space is removed once its VM
// runs.
asio::awaitable<Result<VmHost::Acquired>>
VmHost::resume_space(const std::string& id, const std::string& space_id, Acquired got) {
  auto found = opened_spaces_.find(space_id);
  if (found == opened_spaces_.end())
    co_return make_error("resume a Space", "Space " + space_id + " was not opened for this resume");
  OpenedSpace opened = std::move(found->second);
  opened_spaces_.erase(found);
  if (!opened.snapshot.full_ram)
    co_return co_await resume_mapped_space(id, std::move(opened.info), std::move(opened.snapshot),
                                           std::move(got));
  // restore_full takes the disk it is given (a rename on the same
  // filesystem). Given a copy beside the VM dirs instead, the Space
  // stays whole until the sandbox is ready: a hostd killed meanwhile
  // leaves it resumable (and the copy to the startup sweep). Off the
  // executor: a disk can be large.
  vmm::Snapshot from = opened.snapshot;
  from.disk = settings_.runtime_dir / (id + ".space-disk.qcow2");
  auto copy = [source = opened.snapshot.disk,
               target = from.disk]() -> asio::awaitable<std::error_code> {
    std::error_code ec;
    fs::copy_file(source, target, fs::copy_options::overwrite_existing, ec);
    co_return ec;
  };
  const auto started = std::chrono::steady_clock::now();
  auto copied = co_await asio::co_spawn(checker_.get_executor(), copy, asio::use_awaitable);
  const auto copied_at = std::chrono::steady_clock::now();
  if (copied) {
    std::error_code ignored;
    fs::remove(from.disk, ignored);
    co_return make_error("resume a Space", "resuming Space " + space_id +
                                               " failed (the Space is kept): copying " +
                                               opened.snapshot.disk.string() + " to " +
                                               from.disk.string() + ": " + copied.message());
  }
  auto config = vm_config(id, opened.snapshot.vcpus, opened.snapshot.memory_mib, got.network.get());
  auto restored = co_await driver_.restore_full(from, std::move(config));
  {
    // Renamed into the VM's dir on success, put back here on failure.
    std::error_code ignored;
    fs::remove(from.disk, ignored);
  }
  if (!restored)
    co_return std::move(restored).error().with_context("resuming Space " + space_id +
                                                       " failed (the Space is kept)");
  const auto ms = [](auto duration) {
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(duration).count());
  };
  log::info("Space restored", {{"space", space_id},
                               {"sandbox", id},
                               {"disk_copy_ms", ms(copied_at - started)},
                               {"restore_ms", ms(std::chrono::steady_clock::now() - copied_at)}});
  got.vm = std::move(restored.value());
  got.source = "space";
  got.machine_id = opened.info.machine_id;
  // Resumed once: its disk is this VM's now, and what is left of it goes.
  if (auto removed = SpaceStore(settings_.spaces_dir).remove(space_id); !removed)
    log::warn("Space was resumed but its files stay",
              {{"space", space_id}, {"sandbox", id}, {"error", removed.error().message()}});
  co_return got;
}

// Restores from a template snapshot. Null while the template is not built.
asio::awaitable<Result<std::optional<VmHost::Acquired>>>
VmHost::restore_template(const std::string& id, const SandboxSpec& spec, const std::string& key,
                         Acquired got) {
  auto found = templates_.find(key);
  if (found == templates_.end()) co_return std::optional<Acquired>{};
  const auto snapshot = found->second;
  auto config = vm_config(id, spec.vcpus, spec.memory_mib, got.network.get());
  auto restored = co_await driver_.restore(*snapshot, std::move(config));
  if (!restored)
    co_return std::move(restored).error().with_context("restoring from the template failed");
  got.vm = std::move(restored.value());
  got.source = "restore";
  got.template_key = key;
  co_return std::optional<Acquired>{std::move(got)};
}

asio::awaitable<Result<VmHost::Acquired>> VmHost::cold_boot(const std::string& id,
                                                            const SandboxSpec& spec, Acquired got) {
  auto config = vm_config(id, spec.vcpus, spec.memory_mib, got.network.get());
  config.disk_mib = spec.disk_mib; // the overlay's size: the guest's quota from the start
  auto booted = co_await driver_.boot(std::move(config));
  if (!booted) co_return std::move(booted).error();
  got.vm = std::move(booted.value());
  got.source = "boot";
  co_return got;
}

// The VM a plan gives: each plan's own path, with the fallbacks the plan
// allows (a pool VM that died -> its template -> a cold boot).
asio::awaitable<Result<VmHost::Acquired>>
VmHost::acquire(const std::string& id, const SandboxSpec& spec, const LaunchPlan& plan) {
  std::string template_key;
  if (auto* pooled = std::get_if<launch::FromPoolVm>(&plan)) {
    auto adopted = co_await adopt_pool_vm(pooled->pool_vm_id, spec);
    if (!adopted) co_return std::move(adopted).error();
    if (*adopted) {
      (*adopted)->vm->label(id); // its cgroup leaf now names the sandbox
      co_return std::move(**adopted);
    }
    template_key = pooled->template_key;
  }
  if (auto* saved = std::get_if<launch::FromSavedTemplate>(&plan);
      saved && !saved->pool_vm_id.empty()) {
    auto adopted = co_await adopt_pool_vm(saved->pool_vm_id, spec);
    if (!adopted) co_return std::move(adopted).error();
    if (*adopted) {
      (*adopted)->vm->label(id);
      co_return std::move(**adopted);
    }
  }
  // A fork's first children may be waiting already, with their slots; so
  // may a QEMU for a template's next miss.
  if (auto* fork = std::get_if<launch::FromForkSnapshot>(&plan)) {
    auto landed = co_await take_landed_child(id, spec, fork->base_id);
    if (landed) co_return std::move(*landed);
  }
  if (auto* from_template = std::get_if<launch::FromTemplate>(&plan))
    template_key = from_template->template_key;
  if (!template_key.empty()) {
    auto warm = co_await take_warm_restore(id, spec, template_key, "restore");
    if (warm) co_return std::move(*warm);
  }
  if (auto* saved = std::get_if<launch::FromSavedTemplate>(&plan)) {
    auto warm = co_await take_warm_restore(id, spec, saved->template_id, "template");
    if (warm) co_return std::move(*warm);
  }
  // Any other VM gets a network slot of its own, held by run_sandbox_vm
  // until the VM's process has exited, so the slot's tap is free when it is
  // released.
  Acquired got;
  auto leased = co_await lease_network(spec.egress, spec.egress_allow, spec.secrets);
  if (!leased) co_return std::move(leased).error();
  got.network = std::move(leased.value());

  if (auto* fork = std::get_if<launch::FromForkSnapshot>(&plan))
    co_return co_await restore_fork_child(id, spec, fork->base_id, std::move(got));
  if (auto* space = std::get_if<launch::FromSpace>(&plan))
    co_return co_await resume_space(id, space->space_id, std::move(got));
  if (auto* saved = std::get_if<launch::FromSavedTemplate>(&plan)) {
    auto restored = co_await restore_saved_template(id, spec, saved->template_id, std::move(got));
    if (!restored) co_return std::move(restored).error();
    if (!*restored)
      co_return Error::of(ErrorKind::not_found, "template " + saved->template_id + " is gone");
    co_return std::move(**restored);
  }
  if (!template_key.empty()) {
    auto network = got.network;
    auto restored = co_await restore_template(id, spec, template_key, std::move(got));
    if (!restored) co_return std::move(restored).error();
    if (*restored) co_return std::move(**restored);
    got = Acquired{};
    got.network = std::move(network);
  }
  co_return co_await cold_boot(id, spec, std::move(got));
}
} // namespace vesicle
