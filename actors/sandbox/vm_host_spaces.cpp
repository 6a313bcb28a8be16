// VmHost, Spaces: freezing a VM into a Space on disk, and opening (checking)
// one for a resume.
#include "actors/sandbox/vm_host.hpp"

#include <fstream>
#include <iterator>
#include <optional>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <caf/send.hpp>

#include "actors/sandbox/reaper.hpp"
#include "actors/sandbox/space_store.hpp"
#include "common/ids.hpp"
#include "common/log.hpp"
#include "vmm/blocking.hpp"
#include "vmm/disk_rebase.hpp"
#include "vmm/snapshot.hpp"

namespace vesicle {

namespace asio = boost::asio;
namespace fs = std::filesystem;

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
  // A fork snapshot (Vm::save_fork_snapshot): the VM is paused only while
  // its device state, disk overlay and the pages it wrote are copied, and
  // runs on while the Space is written. So a failure at any step leaves
  // the sandbox exactly as it was, with nothing to restore; the VM ends
  // only once the Space is committed. (save_full, the old way, migrated
  // every RAM page through QEMU with the VM paused, then had to restore
  // the sandbox from the saved stream when writing the Space failed.)
  vmm::ForkSaveStats stats;
  fs::path vm_dir = partial / "vm"; // named: g++ 12 miscompiles temporaries in co_await
  // The template's RAM copied ahead, when its fork landing gives it up.
  auto copy = take_template_copy(before);
  auto saved =
      co_await before.vm->save_fork_snapshot_over(std::move(vm_dir), std::move(copy), &stats);
  const auto saved_at = std::chrono::steady_clock::now();
  Result<void> finished = Result<void>{};
  if (saved) {
    space.machine_id = before.machine_id;
    space.images_fingerprint = images_fingerprint_;
    finished = co_await finish_space(*saved, space);
  } else {
    finished = std::move(saved).error();
  }
  if (!finished) {
    // A tree of snapshot files: removed on the blocking pool, not the loop
    // (nothing waits for it).
    vmm::post_blocking([partial] {
      std::error_code ignored;
      fs::remove_all(partial, ignored);
    });
    before.target->sandbox = owner;
    // The VM ran on; should it have ended meanwhile, its muted watcher did
    // not say so.
    if (!before.vm->running())
      caf::anon_send(owner, vm_exited_atom::value,
                     "the VM ended while it was saved for a freeze: " + finished.error().message());
    log::warn("freeze failed; the sandbox runs on",
              {{"sandbox", id}, {"space", space.space_id}, {"error", finished.error().message()}});
    done(std::move(finished).error().with_context("freezing sandbox " + id +
                                                  " (it runs on as before)"));
    co_return;
  }
  // The VM is in the Space: end it and let go of what it held (its network
  // slot is released once its process has exited).
  before.vm->destroy();
  if (auto record = vms_.find(id); record != vms_.end() && record->second.vm == before.vm)
    vms_.erase(record);
  const auto ms = [](auto duration) {
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(duration).count());
  };
  log::info("sandbox frozen into a Space",
            {{"sandbox", id},
             {"space", space.space_id},
             {"reason", space.reason},
             {"paused_ms", ms(stats.paused)},
             {"save_ms", ms(saved_at - started)},
             {"write_ms", ms(std::chrono::steady_clock::now() - saved_at)},
             {"mib", (space.state_bytes + space.disk_bytes) >> 20}});
  done(std::move(space));
}

asio::awaitable<Result<void>> VmHost::finish_space(const vmm::Snapshot& saved, SpaceInfo& space) {
  if (!saved.memory)
    co_return make_error("freeze", "the saved VM has no RAM file", saved.dir.string());
  const auto base = fs::absolute(vmm::GuestImages::in(settings_.images_dir).base_disk);
  // The disk is an overlay on a template's or a fork snapshot's disk (one
  // rebuilt when the images change, the other deleted with its family):
  // rebasing it onto the base image copies in what it needs from them, so
  // the Space stands on its own. Its RAM is a file of its own already: a
  // fork snapshot's memory holds the template's data plus the pages the
  // guest wrote (Vm::save_fork_snapshot), not a link to the template.
  if (auto rebased = co_await vmm::rebase_onto(executor_, saved.disk, base); !rebased)
    co_return std::move(rebased).error();
  const SpaceStore store(settings_.spaces_dir);
  const fs::path final_memory = fs::absolute(store.vm_dir(space.space_id)) / kSpaceMemoryName;
  // Off the executor: writing and hashing read every byte.
  auto write = [&saved, final_memory] {
    return vmm::snapshot::persist_fork_snapshot(saved, saved.dir / kSpaceMemoryName, final_memory);
  };
  auto manifest = co_await vmm::run_blocking(write);
  if (!manifest) co_return std::move(manifest).error();
  // What the RAM costs on disk (its non-zero pages) counts as state.
  space.state_bytes = manifest->state.size + manifest->memory.data_bytes;
  space.disk_bytes = manifest->disk.size;
  space.frozen_at_ms = unix_now_ms();
  co_return store.commit(space);
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
  // Reads and hashes every byte: off this executor, which serves every VM
  // and the API. A Space frozen by save_full (full_ram: every RAM page in
  // its device state) is resumed by restore_full; one frozen from a fork
  // snapshot has its RAM in vm/memory, which this copies into a sealed
  // memfd and hashes in the same pass (what was checked is what runs).
  // Checked before the restore, not after the answer: measured on an idle
  // 1 GiB guest (110 MiB of RAM data) the copy costs ~60 ms and the hash
  // ~85 ms more, of a ~360 ms resume. Hashing the sealed memfd after the
  // answer would save those 85 ms (~1 ms per 1.3 MiB of data), but a
  // Space that fails would then run until the check and be killed, with
  // the Space already spent; checked first it is refused and kept as it
  // is for inspection, and no guest ever runs on unchecked memory.
  const fs::path dir = SpaceStore(settings_.spaces_dir).vm_dir(space.space_id);
  auto check = [dir]() -> asio::awaitable<std::optional<Result<vmm::Snapshot>>> {
    co_return vmm::open_snapshot(dir);
  };
  const auto started = std::chrono::steady_clock::now();
  auto checked = co_await asio::co_spawn(checker_.get_executor(), check, asio::use_awaitable);
  const auto check_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::steady_clock::now() - started)
                            .count();
  auto& opened = *checked;
  if (!opened) {
    done(Error::of(ErrorKind::corrupted, opened.error().message()));
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
  log::info("Space opened for a resume", {{"space", id},
                                          {"full_ram", opened->full_ram ? "1" : "0"},
                                          {"check_ms", std::to_string(check_ms)}});
  opened_spaces_[id] = OpenedSpace{std::move(space), std::move(opened.value())};
  done(Result<void>{});
}

asio::awaitable<Result<VmHost::Acquired>> VmHost::resume_mapped_space(const std::string& id,
                                                                      SpaceInfo space,
                                                                      vmm::Snapshot snapshot,
                                                                      Acquired got) {
  const std::string& space_id = space.space_id;
  const auto started = std::chrono::steady_clock::now();
  // restore() maps the RAM open_space loaded (a sealed memfd) share=off and
  // gives the VM a fresh overlay backed by the Space's disk, which must
  // outlive the Space (removed once the VM runs). So the VM stands on hard
  // links of the device state and disk in a directory of its own, held as
  // a fork snapshot is: removed when the last VM (or snapshot) standing on
  // it is gone. Links cost nothing; across filesystems they are copies.
  // Until the VM runs the Space stays whole: a hostd killed meanwhile
  // leaves it resumable (and this directory to the startup sweep).
  const fs::path dir = settings_.runtime_dir / ("space-" + id);
  auto remove_dir = [dir] {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  };
  auto link = [from = snapshot.dir, dir]() -> Result<void> {
    std::error_code ec;
    fs::create_directory(dir, ec);
    if (ec) return Error{ec.value(), "create", dir.string(), {}, {}};
    for (const char* name : {vmm::snapshot::kStateName, vmm::snapshot::kDiskName}) {
      fs::create_hard_link(from / name, dir / name, ec);
      if (ec) fs::copy_file(from / name, dir / name, ec);
      if (ec) return Error{ec.value(), "link or copy", (from / name).string(), {}, {}};
    }
    return {};
  };
  if (auto linked = co_await vmm::run_blocking(link); !linked) {
    co_await vmm::run_blocking(remove_dir);
    co_return std::move(linked).error().with_context("resuming Space " + space_id +
                                                     " failed (the Space is kept)");
  }
  const auto linked_at = std::chrono::steady_clock::now();
  vmm::Snapshot from = std::move(snapshot);
  from.dir = dir;
  from.disk = dir / vmm::snapshot::kDiskName;
  auto config = vm_config(id, from.vcpus, from.memory_mib, got.network.get());
  auto restored = co_await driver_.restore(from, std::move(config));
  if (!restored) {
    co_await vmm::run_blocking(remove_dir);
    co_return std::move(restored).error().with_context("resuming Space " + space_id +
                                                       " failed (the Space is kept)");
  }
  const std::string base_id = "space-" + id;
  got.base = fork_snapshots_.add(base_id, std::move(from), nullptr);
  fork_snapshots_.release(base_id);
  got.vm = std::move(restored.value());
  got.source = "space";
  got.machine_id = space.machine_id;
  const auto ms = [](auto duration) {
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(duration).count());
  };
  log::info("Space restored", {{"space", space_id},
                               {"sandbox", id},
                               {"disk_copy_ms", ms(linked_at - started)},
                               {"restore_ms", ms(std::chrono::steady_clock::now() - linked_at)}});
  // Resumed once: what is left of it goes (the VM holds its own links).
  if (auto removed = SpaceStore(settings_.spaces_dir).remove(space_id); !removed)
    log::warn("Space was resumed but its files stay",
              {{"space", space_id}, {"sandbox", id}, {"error", removed.error().message()}});
  co_return got;
}

void VmHost::forget_space(std::string space_id) {
  asio::post(executor_, [this, space_id = std::move(space_id)] { opened_spaces_.erase(space_id); });
}
} // namespace vesicle
