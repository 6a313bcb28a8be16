// VmHost, fork and merge: saving a parent as a fork snapshot and resuming
// it (or, for a VM restored without its own RAM file, copying it while it
// runs on), merge_into's swap,
// and the identity (hostname, machine-id) each copy gets.
#include "actors/sandbox/vm_host.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <caf/send.hpp>

#include "common/log.hpp"
#include "vmm/blocking.hpp"
#include "vmm/disk_rebase.hpp"
#include "vmm/snapshot.hpp"

namespace vesicle {

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

// Every fork stacks one more disk layer: a fork snapshot's disk is an
// overlay on the parent's, so a fork of a fork child, or a parent merged
// back from its child, stands one deeper each time. QEMU's jail and
// open_snapshot follow at most 16 layers (the soak's 15th fork/merge cycle
// failed there), and every layer keeps its snapshot alive. Past this many,
// a new fork snapshot's disk is rebased onto the base image instead.
constexpr int kFlattenDepth = 8;

// How many disks `disk` stacks on (0: it stands alone), up to 64.
Result<int> layers_below(fs::path disk) {
  int depth = 0;
  for (; depth < 64; ++depth) {
    auto backing = vmm::snapshot::qcow2_backing_file(disk);
    if (!backing) return std::move(backing).error();
    if (backing->empty()) break;
    disk = std::move(backing).value();
  }
  return depth;
}

// Rebases a fork snapshot's `disk` onto the base image when it stacks on
// more than kFlattenDepth disks (qemu-img copies what the layers between
// hold into it; the guest sees the same bytes). True when it did: the
// snapshot then no longer needs its parent's.
asio::awaitable<Result<bool>> flatten_if_deep(asio::any_io_executor executor, const fs::path& disk,
                                              const fs::path& base) {
  // Reads a header per layer: on the blocking pool, not the VM thread.
  auto count = [disk] { return layers_below(disk); };
  auto depth = co_await vmm::run_blocking(count);
  if (!depth) co_return std::move(depth).error();
  if (*depth <= kFlattenDepth) co_return false;
  co_return co_await vmm::rebase_onto(std::move(executor), disk, base);
}

// The parent link a new fork snapshot keeps: none once its disk was
// flattened onto the base image in `images_dir` (its RAM is its own either
// way).
asio::awaitable<std::shared_ptr<vmm::ForkSnapshot>>
fork_parent_link(asio::any_io_executor executor, const fs::path& images_dir,
                 const vmm::Snapshot& saved, std::shared_ptr<vmm::ForkSnapshot> parent,
                 const std::string& base_id) {
  const auto base = fs::absolute(vmm::GuestImages::in(images_dir).base_disk);
  const auto started = std::chrono::steady_clock::now();
  auto flattened = co_await flatten_if_deep(std::move(executor), saved.disk, base);
  if (!flattened) {
    // It still works (up to 16 layers): say so, and keep the chain.
    log::warn("fork: flattening a deep disk failed",
              {{"fork", base_id}, {"error", flattened.error().message()}});
    co_return parent;
  }
  if (!*flattened) co_return parent;
  log::info("fork: disk flattened onto the base image",
            {{"fork", base_id},
             {"ms", static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                               std::chrono::steady_clock::now() - started)
                                               .count())}});
  co_return nullptr;
}

// A duration in whole milliseconds, as log lines show it.
std::string ms_text(std::chrono::steady_clock::duration duration) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(duration).count());
}

// Milliseconds since `since`, for log lines.
std::string elapsed_ms(std::chrono::steady_clock::time_point since) {
  return ms_text(std::chrono::steady_clock::now() - since);
}

} // namespace

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
  if (!before.vm->maps_memory_shared()) {
    // Its RAM is a private copy of another snapshot's file (it came from
    // the pool, or is a fork's child): copy it while the VM is paused, and
    // let the VM run on as it is.
    co_await fork_running_parent(parent_id, base_id, before, std::move(done));
    co_return;
  }
  const auto dir = settings_.runtime_dir / ("fork-" + base_id);
  // The old QEMU ends when it is saved: that is no death of the sandbox.
  before.target->sandbox = nullptr;
  const auto started = std::chrono::steady_clock::now();
  std::shared_ptr<vmm::Vm> source = before.vm;
  // The RAM stays in memory only (no memory_file): a fork's snapshot dies
  // with its family, and with hostd.
  fs::path no_copy_on_disk;
  auto saved = co_await source->save_snapshot(dir, std::move(no_copy_on_disk));
  if (!saved) {
    const std::string why = saved.error().message();
    before.target->sandbox = parent;
    // A save that failed after the device state was written ends the VM;
    // its watcher, muted meanwhile, may have missed that.
    if (!source->running())
      caf::anon_send(parent, vm_exited_atom::value,
                     "the VM ended while it was saved for a fork: " + why);
    done(std::move(saved).error().with_context("saving sandbox " + parent_id +
                                               " for the fork failed"));
    co_return;
  }
  // The children can be restored now, while the parent resumes.
  auto link =
      co_await fork_parent_link(executor_, settings_.images_dir, *saved, before.base, base_id);
  auto base = fork_snapshots_.add(base_id, std::move(saved.value()), std::move(link));
  done(std::int32_t{0});
  log::info("fork: parent saved",
            {{"sandbox", parent_id}, {"fork", base_id}, {"save_ms", elapsed_ms(started)}});
  co_await resume_parent_from(std::move(parent_id), std::move(base_id), parent, before,
                              std::move(base));
}

asio::awaitable<void> VmHost::resume_parent_from(std::string parent_id, std::string base_id,
                                                 sandbox_actor parent, SandboxVm before,
                                                 std::shared_ptr<vmm::ForkSnapshot> base) {
  const auto started = std::chrono::steady_clock::now();
  Result<std::unique_ptr<vmm::Vm>> restored = make_error("restore", "not tried");
  for (int attempt = 0; attempt < 2 && !restored; ++attempt) {
    auto config = vm_config(parent_id, base->snapshot().vcpus, base->snapshot().memory_mib,
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
  log::info("fork: parent resumed on the fork's snapshot",
            {{"sandbox", parent_id}, {"fork", base_id}, {"resume_ms", elapsed_ms(started)}});
  auto target = std::make_shared<ExitTarget>();
  target->sandbox = parent;
  record->second.vm = vm;
  record->second.target = target;
  record->second.base = base;
  record->second.machine_id = std::move(refreshed.value());
  // It maps the fork's snapshot now, not a template's: no landing fits it.
  record->second.template_key.clear();
  base.reset();
  caf::anon_send(parent, vm_replaced_atom::value, static_cast<std::int32_t>(vm->qemu_pid()));
  caf::anon_send(parent, hold_atom::value, false);
  co_await watch_exit(std::move(vm), std::move(target));
}

asio::awaitable<void> VmHost::fork_running_parent(std::string parent_id, std::string base_id,
                                                  SandboxVm before, ForkStepDone done) {
  const auto dir = settings_.runtime_dir / ("fork-" + base_id);
  const auto started = std::chrono::steady_clock::now();
  // What it wrote over its snapshot is copied into the fork's; kept running
  // it would hold a second copy of all of it for as long as it lives.
  // Restarted on the fork's snapshot it shares that copy with its children,
  // for one more restore (off the fork's answer) and its TCG translations.
  // The save counts what it wrote as it copies it, and leaves it paused
  // from fork_parent_restart_mib on.
  const sandbox_actor parent = before.target->sandbox;
  vmm::AfterForkSave after;
  if (parent && settings_.fork_parent_restart_mib >= 0)
    after.stay_paused_from = static_cast<std::uint64_t>(settings_.fork_parent_restart_mib) << 20;
  vmm::ForkSaveStats stats;
  Result<vmm::Snapshot> saved = make_error("save", "not tried");
  // Into QEMUs started ahead when a landing of its template waits; if that
  // fails (the landing no longer fits: a QEMU of it died or wrote its
  // memory) the VM runs on and is saved the usual way.
  want_landing(before.template_key);
  auto landing = take_landing(before);
  bool landed = false;
  if (landing) {
    saved = co_await before.vm->save_fork_snapshot_into(*landing->landing, &stats, after);
    landed = saved.ok();
    if (landed) {
      landed_[base_id] = std::move(landing);
    } else {
      log::warn("fork: saving into a landing failed; saving the usual way",
                {{"sandbox", parent_id}, {"fork", base_id}, {"error", saved.error().message()}});
      asio::co_spawn(executor_, discard_landing(std::move(landing)), asio::detached);
    }
  }
  if (!saved) saved = co_await before.vm->save_fork_snapshot(dir, &stats, after);
  // The VM does not end here: should it die, its watcher tells the sandbox.
  if (!saved) {
    done(std::move(saved).error().with_context("saving sandbox " + parent_id +
                                               " for the fork failed"));
    co_return;
  }
  const bool restart = stats.stayed_paused;
  // The new snapshot's disk is an overlay on the one the parent's own
  // overlay is backed by: it holds the parent's snapshot. The parent keeps
  // its own (it still maps that RAM and disk) unless it is restarted.
  auto link =
      co_await fork_parent_link(executor_, settings_.images_dir, *saved, before.base, base_id);
  auto base = fork_snapshots_.add(base_id, std::move(saved.value()), std::move(link));
  std::shared_ptr<ParentRestart> waiting;
  if (restart) {
    waiting = std::make_shared<ParentRestart>(executor_);
    parents_to_restart_[base_id] = waiting;
  }
  done(std::int32_t{0});
  log::write(log::Level::info, "fork: running parent saved",
             {{"sandbox", parent_id},
              {"fork", base_id},
              {"save_ms", elapsed_ms(started)},
              {"source_copy_ms", ms_text(stats.data_copy)},
              {"spare_copy", stats.spare_copy ? "taken" : "none"},
              {"landing", landed ? "filled" : "none"},
              {"paused_ms", ms_text(stats.paused)},
              {"ram_copy_ms", ms_text(stats.memory)},
              {"private_mib", std::to_string(stats.private_pages * 4096 >> 20)},
              {"memory_mib", std::to_string(stats.memory_bytes >> 20)},
              {"parent", restart ? "restarted" : "runs on"}});
  if (!restart) {
    base.reset();
    if (parent) caf::anon_send(parent, hold_atom::value, false);
    co_return;
  }
  // It stays paused (and held) until the fork's children are started, so
  // that they have the cores first; a fork that never says so (it should
  // not happen) lets it go on after kParentWaitLimit.
  constexpr std::chrono::minutes kParentWaitLimit{2};
  if (!waiting->children_started) {
    waiting->wakeup.expires_after(kParentWaitLimit);
    boost::system::error_code cancelled;
    co_await waiting->wakeup.async_wait(asio::redirect_error(asio::use_awaitable, cancelled));
  }
  if (!waiting->children_started)
    log::warn("fork: its children were not started in time; restarting the parent",
              {{"sandbox", parent_id}, {"fork", base_id}});
  parents_to_restart_.erase(base_id);
  // Its old QEMU, paused as saved, ends first: the new one takes its
  // network slot and its cgroup leaf's name. That end is no death.
  before.target->sandbox = nullptr;
  before.vm->destroy();
  (void)co_await before.vm->wait_exit();
  co_await resume_parent_from(std::move(parent_id), std::move(base_id), parent, std::move(before),
                              std::move(base));
}

void VmHost::release_fork(std::string base_id) {
  asio::post(executor_, [this, base_id = std::move(base_id)] {
    if (auto parent = parents_to_restart_.find(base_id); parent != parents_to_restart_.end()) {
      parent->second->children_started = true;
      parent->second->wakeup.cancel();
    }
    fork_snapshots_.release(base_id);
    // Children started ahead that this fork did not need (it had fewer).
    if (auto found = landed_.find(base_id); found != landed_.end()) {
      auto unused = std::move(found->second);
      landed_.erase(found);
      asio::co_spawn(executor_, discard_landing(std::move(unused)), asio::detached);
    }
    refill_landings();
  });
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
    (void)co_await replaced.vm->wait_exit();
    // `replaced` (its network slot, its hold on a fork snapshot) goes here,
    // after its QEMU is dead.
  }
  winner.target->sandbox = parent;
  const auto pid = static_cast<std::int32_t>(winner.vm->qemu_pid());
  auto vm = winner.vm;
  vm->label(parent_id); // the replaced VM's leaf is gone (wait_exit above)
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
} // namespace vesicle
