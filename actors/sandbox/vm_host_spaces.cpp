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
#include "common/ids.hpp"
#include "common/log.hpp"
#include "vmm/blocking.hpp"
#include "vmm/process.hpp"
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
  auto saved = co_await before.vm->save_full(partial / "vm");
  if (!saved) {
    // A tree of snapshot files: removed on the blocking pool, not the loop
    // (nothing waits for it).
    vmm::post_blocking([partial] {
      std::error_code ignored;
      fs::remove_all(partial, ignored);
    });
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
    // A tree of snapshot files: removed on the blocking pool, not the loop
    // (nothing waits for it).
    vmm::post_blocking([partial] {
      std::error_code ignored;
      fs::remove_all(partial, ignored);
    });
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
  // rebuilt when the images change, the other deleted with its family):
  // rebasing it onto
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
  log::info("Space opened for a resume", {{"space", id},
                                          {"full_ram", opened->full_ram ? "1" : "0"},
                                          {"check_ms", std::to_string(check_ms)}});
  opened_spaces_[id] = OpenedSpace{std::move(space), std::move(opened.value())};
  done(Result<void>{});
}

void VmHost::forget_space(std::string space_id) {
  asio::post(executor_, [this, space_id = std::move(space_id)] { opened_spaces_.erase(space_id); });
}
} // namespace vesicle
