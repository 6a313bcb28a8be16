#include "actors/sandbox/vm_host.hpp"
#include "vmm/disk_limit.hpp"
#include "common/ids.hpp"
#include "common/log.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <caf/send.hpp>

#include "actors/sandbox/reaper.hpp"
#include "vmm/process.hpp"
#include "vmm/snapshot.hpp"
#include "common/unique_fd.hpp"

namespace vesicle {

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

// A stable 64-bit FNV-1a: template keys must mean the same across hostd
// builds, which std::hash does not promise.
std::string fingerprint(std::string_view data) {
  std::uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : data) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash));
  return std::string(text, 12);
}

// The images' manifest (images/build.sh writes one, holding the content hash
// of each image), else their sizes and modification times.
std::string fingerprint_images(const fs::path& images_dir) {
  std::ifstream manifest(images_dir / "manifest.txt");
  if (manifest) {
    std::string text((std::istreambuf_iterator<char>(manifest)), std::istreambuf_iterator<char>());
    return fingerprint(text);
  }
  std::string identity;
  for (const char* name : {"vmlinuz", "initrd.img", "rootfs.ext4"}) {
    std::error_code ec;
    const auto path = fs::canonical(images_dir / name, ec);
    identity += path.string() + ":" + std::to_string(fs::file_size(path, ec)) + ":" +
                std::to_string(fs::last_write_time(path, ec).time_since_epoch().count()) + ";";
  }
  return fingerprint(identity);
}

} // namespace

VmHost::VmHost(asio::any_io_executor executor, vmm::Driver& driver, VmSettings settings)
    : executor_(std::move(executor)), driver_(driver), settings_(std::move(settings)),
      images_fingerprint_(fingerprint_images(settings_.images_dir)) {}

vmm::VmConfig VmHost::vm_config(const std::string& id, std::uint32_t vcpus,
                                std::uint32_t memory_mib, const net::NetworkLease* network) const {
  vmm::VmConfig config;
  config.id = id;
  config.images = vmm::GuestImages::in(settings_.images_dir);
  config.runtime_dir = settings_.runtime_dir;
  config.shm_dir = settings_.shm_dir;
  config.vcpus = vcpus;
  config.memory_mib = memory_mib;
  config.boot_timeout = settings_.boot_timeout;
  config.qemu_binary = settings_.qemu_binary;
  config.tcg_translation_cache_mib = settings_.tcg_translation_cache_mib;
  if (network) config.network = network->attachment();
  return config;
}

asio::awaitable<Result<std::shared_ptr<net::NetworkLease>>>
VmHost::lease_network(bool egress, std::vector<std::string> allow) {
  if (!network_) co_return std::shared_ptr<net::NetworkLease>();
  auto leased = co_await network_->acquire(egress, std::move(allow));
  if (!leased) co_return std::move(leased).error();
  co_return std::shared_ptr<net::NetworkLease>(std::move(leased.value()));
}

std::uint32_t VmHost::root_disk_mib() const {
  return vesicle::root_disk_mib(settings_.images_dir);
}

std::string VmHost::template_key(const TemplateSpec& spec) const {
  // A snapshot restores only onto the same devices: with networking on, its
  // VMs have a NIC, and a template saved without one cannot serve them.
  return spec.name + "-" + std::to_string(spec.vcpus) + "c" + std::to_string(spec.memory_mib) +
         "m" + (network_ ? "-net-" : "-") + images_fingerprint_;
}

void VmHost::launch(std::string id, SandboxSpec spec, LaunchPlan plan, sandbox_actor sandbox) {
  asio::co_spawn(
      executor_,
      run_sandbox_vm(std::move(id), std::move(spec), std::move(plan), std::move(sandbox)),
      asio::detached);
}

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
  if (pooled.network) {
    // Pool VMs wait with egress off; the sandbox's own egress is in force
    // before the create answers.
    auto egress =
        co_await pooled.network->set_egress(network_->system(), spec.egress, spec.egress_allow);
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
  co_return std::optional<Acquired>{std::move(got)};
}

// Restores a child from the fork snapshot its parent became.
asio::awaitable<Result<VmHost::Acquired>>
VmHost::restore_fork_child(const std::string& id, const SandboxSpec& spec,
                           const std::string& base_id, Acquired got) {
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
asio::awaitable<Result<VmHost::Acquired>> VmHost::resume_space(const std::string& id,
                                                               const std::string& space_id,
                                                               Acquired got) {
  auto found = opened_spaces_.find(space_id);
  if (found == opened_spaces_.end())
    co_return make_error("resume a Space", "Space " + space_id + " was not opened for this resume");
  OpenedSpace opened = std::move(found->second);
  opened_spaces_.erase(found);
  // restore_full takes the disk it is given (a rename on the same
  // filesystem). Given a copy beside the VM dirs instead, the Space
  // stays whole until the sandbox is ready: a hostd killed meanwhile
  // leaves it resumable (and the copy to the startup sweep). With the
  // Space on disk and VMs on tmpfs this is the copy restore_full would
  // have made anyway. Off the executor: a disk can be large.
  vmm::Snapshot from = opened.snapshot;
  from.disk = settings_.runtime_dir / (id + ".space-disk.qcow2");
  auto copy = [source = opened.snapshot.disk,
               target = from.disk]() -> asio::awaitable<std::error_code> {
    std::error_code ec;
    fs::copy_file(source, target, fs::copy_options::overwrite_existing, ec);
    co_return ec;
  };
  auto copied = co_await asio::co_spawn(checker_.get_executor(), copy, asio::use_awaitable);
  if (copied) {
    std::error_code ignored;
    fs::remove(from.disk, ignored);
    co_return make_error("resume a Space",
                         "resuming Space " + space_id + " failed (the Space is kept): copying " +
                             opened.snapshot.disk.string() + " to " + from.disk.string() + ": " +
                             copied.message());
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
  co_return std::optional<Acquired>{std::move(got)};
}

asio::awaitable<Result<VmHost::Acquired>> VmHost::cold_boot(const std::string& id,
                                                            const SandboxSpec& spec,
                                                            Acquired got) {
  auto config = vm_config(id, spec.vcpus, spec.memory_mib, got.network.get());
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
    if (*adopted) co_return std::move(**adopted);
    template_key = pooled->template_key;
  }
  // Any other VM gets a network slot of its own, held by run_sandbox_vm
  // until the VM's process has exited, so the slot's tap is free when it is
  // released.
  Acquired got;
  auto leased = co_await lease_network(spec.egress, spec.egress_allow);
  if (!leased) co_return std::move(leased).error();
  got.network = std::move(leased.value());

  if (auto* fork = std::get_if<launch::FromForkSnapshot>(&plan))
    co_return co_await restore_fork_child(id, spec, fork->base_id, std::move(got));
  if (auto* space = std::get_if<launch::FromSpace>(&plan))
    co_return co_await resume_space(id, space->space_id, std::move(got));
  if (auto* from_template = std::get_if<launch::FromTemplate>(&plan))
    template_key = from_template->template_key;
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

// A sandbox's VM, from acquiring it as the plan says to handing it to the
// sandbox actor; then watches it until its process exits.
asio::awaitable<void> VmHost::run_sandbox_vm(std::string id, SandboxSpec spec, LaunchPlan plan,
                                             sandbox_actor sandbox) {
  Result<Acquired> acquired = make_error("launch", "not started");
  try {
    acquired = co_await acquire(id, spec, plan);
  } catch (const std::exception& e) {
    acquired = make_error("launch", std::string("the VMM driver threw: ") + e.what());
  }
  if (!acquired) {
    caf::anon_send(sandbox, vm_boot_failed_atom::value, acquired.error().message());
    co_return;
  }
  auto vm = acquired->vm;
  auto target = std::move(acquired->target);
  auto network = std::move(acquired->network);
  auto base = std::move(acquired->base);
  auto machine_id = std::move(acquired->machine_id);
  auto source = std::move(acquired->source);
  {
    // Every clone of a template or fork snapshot starts with the same RNG
    // state, clock, hostname and machine-id: replace them before the
    // sandbox is handed out. A resumed Space keeps its machine-id (it is
    // the same machine). A cold-booted VM has its own already, but gets
    // its hostname and a machine-id hostd knows, which its forks' parent
    // and its Spaces keep.
    auto refreshed = co_await refresh_identity(*vm, id, machine_id);
    if (!refreshed) {
      vm->destroy();
      caf::anon_send(sandbox, vm_boot_failed_atom::value,
                     "giving the VM its identity failed: " + refreshed.error().message());
      co_return;
    }
    machine_id = std::move(refreshed.value());
  }
  // Named locals, not temporaries inside the co_await (g++ 12).
  const std::uint32_t root_mib = root_disk_mib();
  auto limited = co_await limit_root_disk(vm, id, spec.disk_mib, root_mib);
  if (!limited) {
    vm->destroy();
    caf::anon_send(sandbox, vm_boot_failed_atom::value, limited.error().message());
    co_return;
  }
  // An adopted pool VM's exit is already watched (by its pool coroutine).
  const bool watched = target != nullptr;
  if (!target) target = std::make_shared<ExitTarget>();
  target->sandbox = sandbox;
  target->pool = nullptr;
  vms_[id] = SandboxVm{vm, target, std::move(network), std::move(base), std::move(machine_id)};
  caf::anon_send(sandbox, vm_booted_atom::value, static_cast<std::int32_t>(vm->qemu_pid()),
                 std::move(source));
  if (!watched) co_await watch_exit(std::move(vm), std::move(target));
}

asio::awaitable<Result<std::string>> VmHost::refresh_identity(vmm::Vm& vm, std::string hostname,
                                                              std::string machine_id) {
  // Sent without waiting for the answer (it is on the create's critical
  // path); the agent applies it before it reads the next request, so the
  // user's first call already sees the new identity.
  auto identity = vmm::IdentityRefresh::generate(hostname);
  if (!identity) co_return std::move(identity).error();
  if (!machine_id.empty()) identity->machine_id = machine_id;
  std::string given = identity->machine_id;
  vmm::RefreshFailureHandler on_failure = [hostname](const Error& error) {
    log::warn("identity refresh failed", {{"sandbox", hostname}, {"error", error.message()}});
  };
  // Named locals, not temporaries inside the co_await: g++ 12 miscompiles
  // those.
  auto sent =
      co_await vm.agent().send_refresh_identity(std::move(identity.value()), std::move(on_failure));
  if (!sent) co_return std::move(sent).error();
  co_return given;
}

void VmHost::fork_parent(std::string parent_id, std::string base_id, ForkStepDone done) {
  asio::co_spawn(executor_,
                 run_fork_parent(std::move(parent_id), std::move(base_id), std::move(done)),
                 asio::detached);
}

asio::awaitable<void> VmHost::run_fork_parent(std::string parent_id, std::string base_id,
                                              ForkStepDone done) {
  auto found = vms_.find(parent_id);
  if (found == vms_.end() || !found->second.vm->running()) {
    done(Error::of(ErrorKind::conflict, "sandbox " + parent_id + " has no running VM"));
    co_return;
  }
  // Copies: the map may change while this waits.
  const SandboxVm before = found->second;
  const sandbox_actor parent = before.target->sandbox;
  const auto dir = settings_.runtime_dir / ("fork-" + base_id);
  const auto memory_file = settings_.shm_dir / ("vesicle-fork-" + base_id + ".mem");
  // The old QEMU ends when it is saved: that is no death of the sandbox.
  before.target->sandbox = nullptr;
  const auto started = std::chrono::steady_clock::now();
  std::shared_ptr<vmm::Vm> source = before.vm;
  if (!source->maps_memory_shared()) {
    // Its RAM is a private copy of another snapshot's file (it came from
    // the pool, or is a fork's child): move it onto a RAM file of its own
    // first, by a full save and restore. Slow (seconds under TCG), once.
    auto promoted = co_await promote(parent_id, before, base_id);
    if (!promoted) {
      before.target->sandbox = parent;
      if (!before.vm->running())
        caf::anon_send(parent, vm_exited_atom::value,
                       "the VM ended while it was saved for a fork: " + promoted.error().message());
      done(std::move(promoted).error().with_context("saving sandbox " + parent_id +
                                                    " for the fork failed"));
      co_return;
    }
    source = std::move(promoted.value());
  }
  const auto promoted_at = std::chrono::steady_clock::now();
  auto saved = co_await source->save_snapshot(dir, memory_file);
  const auto saved_at = std::chrono::steady_clock::now();
  if (!saved) {
    const std::string why = saved.error().message();
    if (source == before.vm) {
      before.target->sandbox = parent;
      // A save that failed after the device state was written ends the VM;
      // its watcher, muted meanwhile, may have missed that.
      if (!source->running())
        caf::anon_send(parent, vm_exited_atom::value,
                       "the VM ended while it was saved for a fork: " + why);
    } else if (source->running()) {
      // The promoted VM runs on as the parent.
      auto target = std::make_shared<ExitTarget>();
      target->sandbox = parent;
      if (auto record = vms_.find(parent_id); record != vms_.end()) record->second.target = target;
      caf::anon_send(parent, vm_replaced_atom::value,
                     static_cast<std::int32_t>(source->qemu_pid()));
      asio::co_spawn(executor_, watch_exit(source, target), asio::detached);
    } else {
      caf::anon_send(parent, vm_exited_atom::value,
                     "the VM ended while it was saved for a fork: " + why);
    }
    done(std::move(saved).error().with_context("saving sandbox " + parent_id +
                                               " for the fork failed"));
    co_return;
  }
  // The children can be restored now, while the parent resumes.
  auto base = fork_snapshots_.add(base_id, std::move(saved.value()), before.base);
  done(std::int32_t{0});
  // The parent goes on as one more copy of the snapshot, with its network
  // slot, hostname and machine-id.
  Result<std::unique_ptr<vmm::Vm>> restored = make_error("restore", "not tried");
  for (int attempt = 0; attempt < 2 && !restored; ++attempt) {
    auto config =
        vm_config(parent_id, base->snapshot().vcpus, base->snapshot().memory_mib,
                  before.network.get());
    restored = co_await driver_.restore(base->snapshot(), std::move(config));
    if (!restored)
      log::warn("fork: resuming the parent failed", {{"sandbox", parent_id},
                                                     {"fork", base_id},
                                                     {"attempt", attempt + 1},
                                                     {"error", restored.error().message()}});
  }
  if (!restored) {
    caf::anon_send(parent, vm_exited_atom::value,
                   "resuming it from its fork snapshot failed: " + restored.error().message());
    co_return;
  }
  std::shared_ptr<vmm::Vm> vm = std::move(restored.value());
  auto refreshed = co_await refresh_identity(*vm, parent_id, before.machine_id);
  auto record = vms_.find(parent_id);
  if (record == vms_.end() || !refreshed) {
    // Deleted while it was being forked, or its agent is gone.
    vm->destroy();
    if (record != vms_.end())
      caf::anon_send(parent, vm_exited_atom::value,
                     "resumed from its fork snapshot, its agent failed: " +
                         refreshed.error().message());
    co_return;
  }
  const auto ms = [](auto duration) {
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(duration).count());
  };
  // promote_ms: moving the parent onto its own RAM file first, if it had none.
  std::vector<log::Field> phases = {{"sandbox", parent_id}, {"fork", base_id}};
  if (source != before.vm) phases.emplace_back("promote_ms", ms(promoted_at - started));
  phases.emplace_back("save_ms", ms(saved_at - promoted_at));
  phases.emplace_back("resume_ms", ms(std::chrono::steady_clock::now() - saved_at));
  log::write(log::Level::info, "fork: parent saved and resumed", phases);
  auto target = std::make_shared<ExitTarget>();
  target->sandbox = parent;
  record->second.vm = vm;
  record->second.target = target;
  record->second.base = base;
  record->second.machine_id = std::move(refreshed.value());
  base.reset();
  caf::anon_send(parent, vm_replaced_atom::value, static_cast<std::int32_t>(vm->qemu_pid()));
  caf::anon_send(parent, hold_atom::value, false);
  co_await watch_exit(std::move(vm), std::move(target));
}

asio::awaitable<Result<std::shared_ptr<vmm::Vm>>>
VmHost::promote(const std::string& parent_id, const SandboxVm& before, const std::string& base_id) {
  // Beside the VMs' own dirs: restore_full renames the disk into one.
  const auto full_dir = settings_.runtime_dir / ("full-" + base_id);
  auto full = co_await before.vm->save_full(full_dir);
  if (!full) co_return std::move(full).error();
  Result<std::unique_ptr<vmm::Vm>> restored = make_error("restore", "not tried");
  for (int attempt = 0; attempt < 2 && !restored; ++attempt) {
    auto config = vm_config(parent_id, full->vcpus, full->memory_mib, before.network.get());
    restored = co_await driver_.restore_full(*full, std::move(config));
  }
  std::error_code ignored;
  fs::remove_all(full_dir, ignored);
  if (!restored)
    co_return std::move(restored).error().with_context("resuming sandbox " + parent_id +
                                                       " from its full save");
  std::shared_ptr<vmm::Vm> vm = std::move(restored.value());
  // Until the fork's own save ends it, it is the sandbox's VM (a DELETE
  // meanwhile destroys this one).
  if (auto record = vms_.find(parent_id); record != vms_.end()) record->second.vm = vm;
  co_return vm;
}

void VmHost::release_fork(std::string base_id) {
  asio::post(executor_,
             [this, base_id = std::move(base_id)] { fork_snapshots_.release(base_id); });
}

std::size_t VmHost::fork_snapshots() const {
  return fork_snapshots_.count();
}

void VmHost::merge(std::string parent_id, sandbox_actor parent, std::string winner_id,
                   ForkStepDone done) {
  asio::co_spawn(
      executor_,
      run_merge(std::move(parent_id), std::move(parent), std::move(winner_id), std::move(done)),
      asio::detached);
}

asio::awaitable<void> VmHost::run_merge(std::string parent_id, sandbox_actor parent,
                                        std::string winner_id, ForkStepDone done) {
  auto winner_found = vms_.find(winner_id);
  if (winner_found == vms_.end() || !winner_found->second.vm->running()) {
    done(Error::of(ErrorKind::conflict, "sandbox " + winner_id + " has no running VM"));
    co_return;
  }
  SandboxVm winner = std::move(winner_found->second);
  vms_.erase(winner_found);
  std::string machine_id;
  if (auto old = vms_.find(parent_id); old != vms_.end()) {
    SandboxVm replaced = std::move(old->second);
    vms_.erase(old);
    machine_id = replaced.machine_id;
    replaced.target->sandbox = nullptr; // its end is the merge, not a death
    replaced.vm->destroy();
    // `replaced` (its network slot, its hold on a fork snapshot) goes here,
    // after its QEMU is dead.
  }
  winner.target->sandbox = parent;
  const auto pid = static_cast<std::int32_t>(winner.vm->qemu_pid());
  auto vm = winner.vm;
  vms_[parent_id] = std::move(winner);
  // The winner's world now answers as the parent.
  auto refreshed = co_await refresh_identity(*vm, parent_id, machine_id);
  if (refreshed) {
    if (auto record = vms_.find(parent_id); record != vms_.end())
      record->second.machine_id = std::move(refreshed.value());
  } else {
    log::warn(
        "merge: identity refresh failed",
        {{"sandbox", parent_id}, {"winner", winner_id}, {"error", refreshed.error().message()}});
  }
  done(pid);
}

void VmHost::freeze(std::string id, SpaceInfo space, FreezeDone done) {
  asio::co_spawn(executor_, run_freeze(std::move(id), std::move(space), std::move(done)),
                 asio::detached);
}

asio::awaitable<void> VmHost::run_freeze(std::string id, SpaceInfo space, FreezeDone done) {
  auto found = vms_.find(id);
  if (found == vms_.end() || !found->second.vm->running()) {
    done(make_error("freeze", "the sandbox has no running VM", id));
    co_return;
  }
  // A copy: it keeps the VM's network slot and fork snapshot (whose disk
  // backs this VM's until the rebase) alive until the Space is written.
  const SandboxVm before = found->second;
  const sandbox_actor owner = before.target->sandbox;
  // QEMU ends when the VM is saved: that is no death of the sandbox.
  before.target->sandbox = nullptr;
  const SpaceStore store(settings_.spaces_dir);
  const auto partial = store.partial_dir(space.space_id);
  std::error_code ec;
  fs::create_directories(partial, ec);
  if (ec) {
    before.target->sandbox = owner;
    done(Error{ec.value(), "create", partial.string(), {}, {}}.with_context(
        "freezing sandbox " + id + " (check the spaces directory)"));
    co_return;
  }
  const auto started = std::chrono::steady_clock::now();
  auto saved = co_await before.vm->save_full(partial / "vm");
  if (!saved) {
    fs::remove_all(partial, ec);
    before.target->sandbox = owner;
    // save_full resumes the VM on failure; should it have ended anyway, its
    // muted watcher did not say so.
    if (!before.vm->running())
      caf::anon_send(owner, vm_exited_atom::value,
                     "the VM ended while it was saved for a freeze: " + saved.error().message());
    done(std::move(saved).error().with_context("freezing sandbox " + id));
    co_return;
  }
  const auto saved_at = std::chrono::steady_clock::now();
  space.machine_id = before.machine_id;
  space.images_fingerprint = images_fingerprint_;
  auto finished = co_await finish_space(*saved, space);
  if (!finished) {
    // Nothing may be lost: give the sandbox its VM back from what was saved.
    const std::string why = finished.error().message();
    log::warn("freeze failed; resuming the sandbox",
              {{"sandbox", id}, {"space", space.space_id}, {"error", why}});
    auto config = vm_config(id, saved->vcpus, saved->memory_mib, before.network.get());
    auto back = co_await driver_.restore_full(*saved, std::move(config));
    auto record = vms_.find(id);
    if (!back || record == vms_.end()) {
      if (back) back.value()->destroy();
      const std::string lost = back ? std::string("it was deleted meanwhile")
                                    : "resuming it failed too (" + back.error().message() +
                                          "); what was saved is in " + partial.string();
      log::error("freeze failed and the sandbox is not resumed",
                 {{"sandbox", id}, {"space", space.space_id}, {"detail", lost}});
      if (record != vms_.end()) {
        vms_.erase(record);
        caf::anon_send(owner, vm_exited_atom::value,
                       "freezing it failed (" + why + ") and " + lost);
      }
      done(make_error("freeze", why + "; " + lost).with_context("freezing sandbox " + id));
      co_return;
    }
    fs::remove_all(partial, ec);
    std::shared_ptr<vmm::Vm> vm = std::move(back.value());
    auto target = std::make_shared<ExitTarget>();
    target->sandbox = owner;
    record->second.vm = vm;
    record->second.target = target;
    caf::anon_send(owner, vm_replaced_atom::value, static_cast<std::int32_t>(vm->qemu_pid()));
    done(
        make_error("freeze", why + "; the sandbox runs on").with_context("freezing sandbox " + id));
    co_await watch_exit(std::move(vm), std::move(target));
    co_return;
  }
  // The VM is in the Space: let go of what it held (after its QEMU ended,
  // which save_full waited for).
  if (auto record = vms_.find(id); record != vms_.end() && record->second.vm == before.vm)
    vms_.erase(record);
  const auto ms = [](auto duration) {
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(duration).count());
  };
  log::info("sandbox frozen into a Space",
            {{"sandbox", id},
             {"space", space.space_id},
             {"reason", space.reason},
             {"save_ms", ms(saved_at - started)},
             {"write_ms", ms(std::chrono::steady_clock::now() - saved_at)},
             {"mib", (space.state_bytes + space.disk_bytes) >> 20}});
  done(std::move(space));
}

asio::awaitable<Result<void>> VmHost::finish_space(const vmm::Snapshot& saved, SpaceInfo& space) {
  namespace snapshot = vmm::snapshot;
  const auto base = fs::absolute(vmm::GuestImages::in(settings_.images_dir).base_disk);
  // The disk is an overlay on a template's or a fork snapshot's disk (one
  // on tmpfs, the other rebuilt when the images change): rebasing it onto
  // the base image copies in what it needs from them, so the Space stands
  // on its own.
  auto backing = snapshot::qcow2_backing_file(saved.disk);
  if (!backing) co_return std::move(backing).error();
  // (A disk without a backing file, or one on the base image already,
  // stands on its own.)
  const bool rebase_needed = !backing->empty() && fs::absolute(*backing) != base;
  if (rebase_needed) {
    vmm::detail::SpawnOptions rebase;
    rebase.argv = {"qemu-img", "rebase",      "-q", "-f",  "qcow2",
                   "-b",       base.string(), "-F", "raw", saved.disk.string()};
    rebase.output = saved.dir / "rebase.log";
    auto rebased = co_await vmm::detail::run_helper(executor_, std::move(rebase));
    if (!rebased)
      co_return std::move(rebased).error().with_context("rebasing the disk onto " + base.string());
    std::error_code ignored;
    fs::remove(saved.dir / "rebase.log", ignored);
  }
  // The sizes come from the manifest save_full wrote. A rebased disk
  // changed (not its content as the guest sees it): its manifest entry is
  // hashed and written again, off the executor; an untouched one keeps the
  // entry save_full hashed.
  const fs::path manifest_path = saved.manifest();
  const fs::path disk = saved.disk;
  auto rewrite = [manifest_path, disk,
                  rebase_needed]() -> asio::awaitable<std::optional<Result<snapshot::Manifest>>> {
    std::ifstream in(manifest_path);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto manifest = snapshot::parse_manifest(text);
    if (!manifest) co_return std::move(manifest).error().with_context(manifest_path.string());
    if (!rebase_needed) co_return std::move(manifest);
    auto digest = snapshot::digest_file(disk);
    if (!digest) co_return std::move(digest).error();
    manifest->disk = std::move(digest.value());
    auto written =
        snapshot::write_file_atomically(manifest_path, snapshot::format_manifest(*manifest));
    if (!written) co_return std::move(written).error();
    co_return std::move(manifest);
  };
  auto rewritten = co_await asio::co_spawn(checker_.get_executor(), rewrite, asio::use_awaitable);
  auto& manifest = *rewritten;
  if (!manifest) co_return std::move(manifest).error();
  space.state_bytes = manifest->state.size;
  space.disk_bytes = manifest->disk.size;
  space.frozen_at_ms = unix_now_ms();
  co_return SpaceStore(settings_.spaces_dir).commit(space);
}

void VmHost::open_space(SpaceInfo space, SpaceOpened done) {
  asio::co_spawn(executor_, run_open_space(std::move(space), std::move(done)), asio::detached);
}

asio::awaitable<void> VmHost::run_open_space(SpaceInfo space, SpaceOpened done) {
  if (space.images_fingerprint != images_fingerprint_) {
    done(Error::of(ErrorKind::corrupted,
                   "it was frozen on other guest images (fingerprint " + space.images_fingerprint +
                       ", this host's are " + images_fingerprint_ +
                       "); resume it on a host with the images it was made with"));
    co_return;
  }
  // Reads and hashes every byte (device state with all of RAM, disk): off
  // this executor, which serves every VM and the API.
  const fs::path dir = SpaceStore(settings_.spaces_dir).vm_dir(space.space_id);
  auto check = [dir]() -> asio::awaitable<std::optional<Result<vmm::Snapshot>>> {
    co_return vmm::open_snapshot(dir);
  };
  auto checked = co_await asio::co_spawn(checker_.get_executor(), check, asio::use_awaitable);
  auto& opened = *checked;
  if (!opened) {
    done(Error::of(ErrorKind::corrupted, opened.error().message()));
    co_return;
  }
  if (!opened->full_ram) {
    done(Error::of(ErrorKind::corrupted,
                   "its VM snapshot in " + dir.string() + " is not a full-RAM snapshot"));
    co_return;
  }
  if (opened->network != (network_ != nullptr)) {
    done(Error::of(ErrorKind::corrupted,
                   opened->network
                       ? "it was frozen with a network device and this hostd runs without "
                         "networking; resume it on a hostd with a network section"
                       : "it was frozen without a network device and this hostd gives every VM "
                         "one; resume it on a hostd without networking"));
    co_return;
  }
  const auto id = space.space_id;
  opened_spaces_[id] = OpenedSpace{std::move(space), std::move(opened.value())};
  done(Result<void>{});
}

void VmHost::forget_space(std::string space_id) {
  asio::post(executor_, [this, space_id = std::move(space_id)] { opened_spaces_.erase(space_id); });
}

// Sits on a VM's exit so its owner hears about a death (kill -9, guest
// panic) as soon as it happens. The owner can change while it waits (a
// pool VM handed to a sandbox).
asio::awaitable<void> VmHost::watch_exit(std::shared_ptr<vmm::Vm> vm,
                                         std::shared_ptr<ExitTarget> target) {
  std::string how = co_await vm->wait_exit();
  vm.reset();
  if (target->sandbox)
    caf::anon_send(target->sandbox, vm_exited_atom::value, std::move(how));
  else if (target->pool)
    caf::anon_send(target->pool, vm_exited_atom::value, target->pool_vm_id, std::move(how));
}

void VmHost::prepare_template(TemplateSpec spec, pool_actor pool) {
  asio::co_spawn(executor_, run_template(std::move(spec), std::move(pool)), asio::detached);
}

asio::awaitable<void> VmHost::run_template(TemplateSpec spec, pool_actor pool) {
  std::error_code ec;
  fs::create_directories(settings_.templates_dir, ec);
  if (ec) {
    caf::anon_send(pool, template_atom::value, false,
                   "cannot create the templates directory " + settings_.templates_dir.string() +
                       ": " + ec.message());
    co_return;
  }
  // Another hostd sharing templates_dir may be building this template right
  // now: wait for it rather than build the same files twice.
  const auto lock_path = settings_.templates_dir / (spec.key + ".lock");
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock) {
    caf::anon_send(pool, template_atom::value, false,
                   sys_error("open", lock_path.string()).message());
    co_return;
  }
  asio::steady_timer pause(executor_);
  for (auto waited = std::chrono::milliseconds(0); ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0;
       waited += std::chrono::milliseconds(500)) {
    if (errno != EWOULDBLOCK || waited > 2 * settings_.boot_timeout) {
      caf::anon_send(pool, template_atom::value, false,
                     "template " + spec.key + " is locked by another process (" +
                         lock_path.string() + "); check for another hostd using " +
                         settings_.templates_dir.string());
      co_return;
    }
    pause.expires_after(std::chrono::milliseconds(500));
    co_await pause.async_wait(asio::use_awaitable);
  }

  const auto dir = settings_.templates_dir / spec.key;
  // Checking reads the whole snapshot (about a second): off this executor,
  // which serves every VM and the HTTP API.
  // (A named lambda: g++ 12 miscompiles temporaries inside co_await.)
  auto check = [dir]() -> asio::awaitable<std::optional<Result<vmm::Snapshot>>> {
    co_return vmm::open_snapshot(dir);
  };
  auto checked = co_await asio::co_spawn(checker_.get_executor(), check, asio::use_awaitable);
  auto& opened = *checked;
  if (opened) {
    templates_[spec.key] = std::make_shared<const vmm::Snapshot>(std::move(opened.value()));
    caf::anon_send(pool, template_atom::value, true, "template " + spec.key + " checked");
    co_return;
  }
  if (fs::exists(dir, ec))
    log::warn("template is not usable and is rebuilt",
              {{"template", spec.key}, {"error", opened.error().message()}});
  const auto started = std::chrono::steady_clock::now();
  auto built = co_await build_template(spec);
  if (!built) {
    caf::anon_send(pool, template_atom::value, false, built.error().message());
    co_return;
  }
  templates_[spec.key] = std::move(built.value());
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started);
  caf::anon_send(pool, template_atom::value, true,
                 "template " + spec.key + " built in " + std::to_string(took.count()) + " ms");
}

// Cold boots a VM, imports the preload modules in its REPL, and saves it as
// the template. Whatever a failed attempt made is removed.
asio::awaitable<Result<std::shared_ptr<const vmm::Snapshot>>>
VmHost::build_template(const TemplateSpec& spec) {
  const auto dir = settings_.templates_dir / spec.key;
  const auto memory_file = settings_.shm_dir / ("vesicle-template-" + spec.key + ".mem");
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::remove(memory_file, ec);

  const auto context = "building template " + spec.key;
  // Egress off: the template VM runs nothing but the preload imports.
  auto leased = co_await lease_network(false, {});
  if (!leased) co_return std::move(leased).error().with_context(context);
  const auto network = std::move(leased.value());
  auto config = vm_config(random_id("tpl-", 10), spec.vcpus, spec.memory_mib, network.get());
  auto booted = co_await driver_.boot(std::move(config));
  if (!booted) co_return std::move(booted).error().with_context(context);
  std::shared_ptr<vmm::Vm> vm = std::move(booted.value());

  guest::ExecPython warm_up;
  // The REPL is up once a cell has run; the imports make the modules'
  // pages part of the shared template memory.
  warm_up.set_code("import sys");
  for (const auto& module : spec.preload_modules)
    warm_up.set_code(warm_up.code() + "; import " + module);
  warm_up.set_timeout_ms(static_cast<std::uint32_t>(settings_.boot_timeout.count()));
  std::string failure;
  vmm::ExecEventSink on_event = [&failure](const guest::Event& event) {
    if (event.has_error()) failure = event.error().name() + ": " + event.error().value();
  };
  auto ran = co_await vm->agent().exec_python(warm_up, std::move(on_event));
  if (!ran || ran->exit_code() != 0) {
    vm->destroy();
    if (!ran) co_return std::move(ran).error().with_context(context);
    co_return make_error("preload modules", failure.empty() ? "the cell failed" : failure,
                         warm_up.code())
        .with_context(context + "; check preload_modules in the configuration");
  }
  auto saved = co_await vm->save_snapshot(dir, memory_file);
  vm->destroy();
  if (!saved) {
    fs::remove_all(dir, ec);
    fs::remove(memory_file, ec);
    co_return std::move(saved).error().with_context(context);
  }
  co_return std::make_shared<const vmm::Snapshot>(std::move(saved.value()));
}

void VmHost::restore_for_pool(std::string key, std::string pool_vm_id, pool_actor pool) {
  asio::co_spawn(executor_, run_pool_vm(std::move(key), std::move(pool_vm_id), std::move(pool)),
                 asio::detached);
}

asio::awaitable<void> VmHost::run_pool_vm(std::string key, std::string pool_vm_id,
                                          pool_actor pool) {
  asio::steady_timer delay(executor_, settings_.pool_restore_delay);
  boost::system::error_code ignored;
  co_await delay.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  auto found = templates_.find(key);
  if (found == templates_.end()) {
    caf::anon_send(pool, vm_boot_failed_atom::value, pool_vm_id,
                   "template " + key + " is not ready");
    co_return;
  }
  // Held across the restore: a rebuild may replace the map's entry meanwhile.
  const auto snapshot = found->second;
  std::shared_ptr<vmm::Vm> vm;
  // Held until the VM has exited, also after a sandbox adopted it.
  std::shared_ptr<net::NetworkLease> network;
  try {
    auto leased = co_await lease_network(false, {});
    if (!leased) {
      caf::anon_send(pool, vm_boot_failed_atom::value, pool_vm_id, leased.error().message());
      co_return;
    }
    network = std::move(leased.value());
    auto config = vm_config(pool_vm_id, snapshot->vcpus, snapshot->memory_mib, network.get());
    auto restored = co_await driver_.restore(*snapshot, std::move(config));
    if (!restored) {
      caf::anon_send(pool, vm_boot_failed_atom::value, pool_vm_id, restored.error().message());
      co_return;
    }
    vm = std::move(restored.value());
  } catch (const std::exception& e) {
    caf::anon_send(pool, vm_boot_failed_atom::value, pool_vm_id,
                   std::string("the VMM driver threw: ") + e.what());
    co_return;
  }
  auto target = std::make_shared<ExitTarget>();
  target->pool = pool;
  target->pool_vm_id = pool_vm_id;
  pool_vms_[pool_vm_id] = PoolVm{vm, target, network};
  caf::anon_send(pool, vm_booted_atom::value, pool_vm_id,
                 static_cast<std::int32_t>(vm->qemu_pid()));
  co_await watch_exit(std::move(vm), std::move(target));
}

void VmHost::discard(std::string pool_vm_id) {
  asio::post(executor_, [this, pool_vm_id = std::move(pool_vm_id)] {
    auto found = pool_vms_.find(pool_vm_id);
    if (found == pool_vms_.end()) return;
    auto vm = std::move(found->second.vm);
    found->second.target->pool = nullptr; // a discarded VM's exit is no news
    pool_vms_.erase(found);
    vm->destroy();
  });
}

void VmHost::reclaim(std::string id, sandbox_actor sandbox) {
  asio::post(executor_, [this, id = std::move(id), sandbox = std::move(sandbox)] {
    if (auto found = vms_.find(id); found != vms_.end()) {
      SandboxVm record = std::move(found->second);
      vms_.erase(found);
      // Dead before its network slot and fork snapshot are let go.
      record.vm->destroy();
    }
    if (sandbox) caf::anon_send(sandbox, vm_reclaimed_atom::value);
  });
}

std::shared_ptr<vmm::Vm> VmHost::find(const std::string& id) const {
  auto found = vms_.find(id);
  return found == vms_.end() ? nullptr : found->second.vm;
}

void VmHost::destroy_all() {
  auto vms = std::move(vms_);
  vms_.clear();
  for (auto& [id, record] : vms)
    record.vm->destroy();
  vms.clear();
  fork_snapshots_.clear();
  auto pooled = std::move(pool_vms_);
  pool_vms_.clear();
  for (auto& [id, entry] : pooled) {
    entry.target->pool = nullptr;
    entry.vm->destroy();
  }
}

} // namespace vesicle
