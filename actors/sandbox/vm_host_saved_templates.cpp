// VmHost, saved templates: a running sandbox saved as a named template (its
// memory, processes and files), checking one at start, restoring from one.
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
#include "actors/sandbox/template_store.hpp"
#include "common/log.hpp"
#include "vmm/process.hpp"
#include "vmm/snapshot.hpp"

namespace vesicle {

namespace asio = boost::asio;
namespace fs = std::filesystem;

void VmHost::save_template(std::string id, TemplateInfo info, TemplateSaved done) {
  asio::co_spawn(executor_, run_save_template(std::move(id), std::move(info), std::move(done)),
                 asio::detached);
}

void VmHost::forget_template(std::string template_id) {
  asio::post(executor_,
             [this, template_id = std::move(template_id)] { templates_.erase(template_id); });
}

// The steps: (promote a VM without a RAM file of its own), save the VM into
// the template's directory, make its disk stand on the base image, write
// the `template` file, resume the sandbox from the template. Undo: a
// failure before the save resumes nothing (the VM ran on) and removes the
// directory; after it, the sandbox is resumed from what was saved and the
// directory, which then backs its disk, is left without a `template` file
// (removed at the next start, when no VM uses it).
asio::awaitable<void> VmHost::run_save_template(std::string id, TemplateInfo info,
                                                TemplateSaved done) {
  auto found = vms_.find(id);
  if (found == vms_.end() || !found->second.vm->running()) {
    done(Error::of(ErrorKind::conflict, "sandbox " + id + " has no running VM"));
    co_return;
  }
  const std::string context = "saving sandbox " + id + " as template " + info.name;
  const TemplateStore store(saved_templates_dir());
  const auto dir = store.template_dir(info.template_id);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!ec) fs::permissions(store.dir(), fs::perms::owner_all, ec);
  if (ec) {
    done(Error{ec.value(), "create", dir.string(), {}, {}}.with_context(context));
    co_return;
  }
  // Copies: the map may change while this waits.
  const SandboxVm before = found->second;
  const sandbox_actor owner = before.target->sandbox;
  // The old QEMU ends when it is saved: that is no death of the sandbox.
  before.target->sandbox = nullptr;
  const auto started = std::chrono::steady_clock::now();
  std::shared_ptr<vmm::Vm> source = before.vm;
  if (!source->maps_memory_shared()) {
    // A pool VM or a fork child maps a private copy of another snapshot's
    // RAM: move it onto a RAM file of its own first (as a fork does).
    auto promoted = co_await promote(id, before, info.template_id);
    if (!promoted) {
      fs::remove_all(dir, ec);
      before.target->sandbox = owner;
      if (!before.vm->running())
        caf::anon_send(owner, vm_exited_atom::value,
                       "the VM ended while it was saved as a template: " +
                           promoted.error().message());
      done(std::move(promoted).error().with_context(context));
      co_return;
    }
    source = std::move(promoted.value());
  }
  auto saved = co_await source->save_snapshot(store.vm_dir(info.template_id),
                                              store.memory_file(info.template_id));
  if (!saved) {
    const std::string why = saved.error().message();
    fs::remove_all(dir, ec);
    if (source == before.vm) {
      before.target->sandbox = owner;
      // A save that failed after the device state was written ends the VM;
      // its watcher, muted meanwhile, may have missed that.
      if (!source->running())
        caf::anon_send(owner, vm_exited_atom::value,
                       "the VM ended while it was saved as a template: " + why);
    } else if (source->running()) {
      // The promoted VM runs on as the sandbox's.
      auto target = std::make_shared<ExitTarget>();
      target->sandbox = owner;
      if (auto record = vms_.find(id); record != vms_.end()) record->second.target = target;
      caf::anon_send(owner, vm_replaced_atom::value, static_cast<std::int32_t>(source->qemu_pid()));
      asio::co_spawn(executor_, watch_exit(source, target), asio::detached);
    } else {
      caf::anon_send(owner, vm_exited_atom::value,
                     "the VM ended while it was saved as a template: " + why);
    }
    done(std::move(saved).error().with_context(context));
    co_return;
  }
  const auto saved_at = std::chrono::steady_clock::now();
  info.vcpus = saved->vcpus;
  info.memory_mib = saved->memory_mib;
  info.images_fingerprint = images_fingerprint_;
  info.created_at_ms = unix_now_ms();
  auto snapshot = std::make_shared<const vmm::Snapshot>(std::move(saved.value()));
  auto standalone = co_await make_standalone(*snapshot, info);
  // (Not a conditional expression: g++ 12 mishandles its temporaries in a
  // coroutine.)
  Result<void> committed = std::move(standalone);
  if (committed) committed = store.commit(info);
  const auto written_at = std::chrono::steady_clock::now();
  // The sandbox goes on from what was saved, whatever happened since.
  const bool resumed = co_await resume_saved(id, before, owner, snapshot);
  if (!committed && resumed) {
    // The template's disk may still stand on the sandbox's fork snapshot
    // (the rebase failed): the sandbox keeps holding it. (`before` held it
    // meanwhile.)
    if (auto record = vms_.find(id); record != vms_.end()) record->second.base = before.base;
  }
  if (!committed) {
    log::warn("template not saved; its files stay until the next start (the sandbox's disk "
              "stands on them)",
              {{"sandbox", id}, {"template", info.template_id}, {"dir", dir.string()}});
    done(std::move(committed).error().with_context(context));
    co_return;
  }
  templates_[info.template_id] = std::move(snapshot);
  const auto ms = [](auto duration) {
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(duration).count());
  };
  log::info("sandbox saved as a template", {{"sandbox", id},
                                            {"template", info.template_id},
                                            {"name", info.name},
                                            {"key", info.owner},
                                            {"save_ms", ms(saved_at - started)},
                                            {"write_ms", ms(written_at - saved_at)},
                                            {"resumed", resumed ? "yes" : "no"},
                                            {"memory_mib", info.memory_bytes >> 20},
                                            {"disk_mib", info.disk_bytes >> 20}});
  done(std::move(info));
}

asio::awaitable<Result<void>> VmHost::make_standalone(const vmm::Snapshot& saved,
                                                      TemplateInfo& info) {
  namespace snapshot = vmm::snapshot;
  const auto base = fs::absolute(vmm::GuestImages::in(settings_.images_dir).base_disk);
  // The disk is an overlay on the base template's or a fork snapshot's
  // disk (one rebuilt when it fails its check, the other gone with its
  // family): rebased onto the base image, the template outlives both.
  auto backing = snapshot::qcow2_backing_file(saved.disk);
  if (!backing) co_return std::move(backing).error();
  const bool rebase_needed = !backing->empty() && fs::absolute(*backing) != base;
  if (rebase_needed) {
    vmm::detail::SpawnOptions rebase;
    rebase.argv = {"qemu-img", "rebase",      "-q", "-f",  "qcow2",
                   "-b",       base.string(), "-F", "raw", saved.disk.string()};
    rebase.output = saved.dir.parent_path() / "rebase.log";
    auto rebased = co_await vmm::detail::run_helper(executor_, std::move(rebase));
    if (!rebased)
      co_return std::move(rebased).error().with_context("rebasing the disk onto " + base.string());
    std::error_code ignored;
    fs::remove(saved.dir.parent_path() / "rebase.log", ignored);
  }
  // Off the executor: hashing a disk reads all of it.
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
  info.memory_bytes = manifest->memory.data_bytes;
  info.state_bytes = manifest->state.size;
  info.disk_bytes = manifest->disk.size;
  co_return Result<void>{};
}

asio::awaitable<bool> VmHost::resume_saved(const std::string& id, const SandboxVm& before,
                                           sandbox_actor owner,
                                           std::shared_ptr<const vmm::Snapshot> snapshot) {
  Result<std::unique_ptr<vmm::Vm>> restored = make_error("restore", "not tried");
  for (int attempt = 0; attempt < 2 && !restored; ++attempt) {
    auto config = vm_config(id, snapshot->vcpus, snapshot->memory_mib, before.network.get());
    restored = co_await driver_.restore(*snapshot, std::move(config));
  }
  if (!restored) {
    vms_.erase(id);
    caf::anon_send(owner, vm_exited_atom::value,
                   "resuming it from the template it was saved as failed: " +
                       restored.error().message());
    co_return false;
  }
  std::shared_ptr<vmm::Vm> vm = std::move(restored.value());
  auto refreshed = co_await refresh_identity(*vm, id, before.machine_id);
  auto record = vms_.find(id);
  if (record == vms_.end() || !refreshed) {
    vm->destroy();
    if (record != vms_.end()) {
      vms_.erase(record);
      caf::anon_send(owner, vm_exited_atom::value,
                     "resumed from the template it was saved as, its agent failed: " +
                         refreshed.error().message());
    }
    co_return false;
  }
  auto target = std::make_shared<ExitTarget>();
  target->sandbox = owner;
  record->second.vm = vm;
  record->second.target = target;
  // Its disk now stands on the template's, which stands on the base image:
  // no fork snapshot is needed any more (run_save_template puts it back
  // when the rebase failed).
  record->second.base = nullptr;
  record->second.machine_id = std::move(refreshed.value());
  caf::anon_send(owner, vm_replaced_atom::value, static_cast<std::int32_t>(vm->qemu_pid()));
  asio::co_spawn(executor_, watch_exit(std::move(vm), std::move(target)), asio::detached);
  co_return true;
}

// Reads and checks a saved template's snapshot (off the executor: it
// hashes every byte), once; later calls find it in templates_.
asio::awaitable<Result<std::shared_ptr<const vmm::Snapshot>>>
VmHost::open_saved_template(const std::string& template_id) {
  if (auto found = templates_.find(template_id); found != templates_.end()) co_return found->second;
  const fs::path dir = TemplateStore(saved_templates_dir()).vm_dir(template_id);
  auto check = [dir]() -> asio::awaitable<std::optional<Result<vmm::Snapshot>>> {
    co_return vmm::open_snapshot(dir);
  };
  auto checked = co_await asio::co_spawn(checker_.get_executor(), check, asio::use_awaitable);
  auto& opened = *checked;
  std::string refused;
  if (!opened)
    refused = opened.error().message();
  else if (opened->network != (network_ != nullptr))
    refused = opened->network ? "it was saved with a network device and this hostd runs "
                                "without networking"
                              : "it was saved without a network device and this hostd gives "
                                "every VM one";
  if (!refused.empty())
    co_return Error::of(ErrorKind::corrupted, "saved template " + template_id + " is not usable: " +
                                                  refused + "; delete it and save it again");
  // Another call may have opened it meanwhile: keep the first.
  auto entry = templates_.emplace(template_id,
                                  std::make_shared<const vmm::Snapshot>(std::move(opened.value())));
  co_return entry.first->second;
}

asio::awaitable<void> VmHost::check_saved_template(TemplateSpec spec, pool_actor pool) {
  auto opened = co_await open_saved_template(spec.key);
  if (!opened) {
    caf::anon_send(pool, template_atom::value, false, opened.error().message());
    co_return;
  }
  caf::anon_send(pool, template_atom::value, true, "template " + spec.key + " checked");
}

asio::awaitable<Result<std::optional<VmHost::Acquired>>>
VmHost::restore_saved_template(const std::string& id, const SandboxSpec& spec,
                               const std::string& template_id, Acquired got) {
  // A create right after hostd's start may come before the pool's check.
  auto opened = co_await open_saved_template(template_id);
  if (!opened) co_return std::move(opened).error();
  auto restored = co_await restore_template(id, spec, template_id, std::move(got));
  if (restored && *restored) (*restored)->source = "template";
  co_return restored;
}

} // namespace vesicle
