// VmHost, saved templates: a running sandbox saved as a named template (its
// memory, processes and files) while it runs on, checking one at start,
// restoring from one.
#include "actors/sandbox/vm_host.hpp"

#include <optional>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <caf/send.hpp>

#include "actors/sandbox/reaper.hpp"
#include "actors/sandbox/template_store.hpp"
#include "common/log.hpp"
#include "vmm/blocking.hpp"
#include "vmm/disk_rebase.hpp"
#include "vmm/snapshot.hpp"

namespace vesicle {

namespace asio = boost::asio;
namespace fs = std::filesystem;

void VmHost::save_template(std::string id, TemplateInfo info, TemplateSaved done) {
  asio::co_spawn(executor_, run_save_template(std::move(id), std::move(info), std::move(done)),
                 asio::detached);
}

void VmHost::forget_template(std::string template_id) {
  asio::post(executor_, [this, template_id = std::move(template_id)] {
    templates_.erase(template_id);
    landing_wanted_.erase(template_id);
    if (auto found = landings_.find(template_id); found != landings_.end()) {
      auto landing = std::move(found->second);
      landings_.erase(found);
      count_landings();
      asio::co_spawn(executor_, discard_landing(std::move(landing)), asio::detached);
    }
    if (auto found = warm_restores_.find(template_id); found != warm_restores_.end()) {
      auto warm = std::move(found->second);
      warm_restores_.erase(found);
      count_landings();
      asio::co_spawn(executor_, discard_warm_restore(std::move(warm)), asio::detached);
    }
  });
}

// The steps: a fork snapshot of the running VM (paused only while its
// device state, disk and written pages are copied; the sandbox then runs on
// untouched), its disk rebased onto the base image, its RAM written to the
// template's memory file, the manifest, then the `template` file. Undo: the
// directory goes (the VM never stopped being the sandbox's).
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
  auto remove_dir = [dir] {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  };
  // A copy: it holds the VM and the fork snapshot its disk may stand on
  // (which the saved disk stands on until its rebase) while this waits.
  const SandboxVm source = found->second;
  const auto started = std::chrono::steady_clock::now();
  vmm::ForkSaveStats stats;
  // Named, not temporaries inside the co_await: g++ 12 miscompiles those.
  fs::path vm_dir = store.vm_dir(info.template_id);
  const fs::path memory_file = store.memory_file(info.template_id);
  // The template's RAM copied ahead, when its fork landing gives it up.
  auto copy = take_template_copy(source);
  auto saved =
      co_await source.vm->save_fork_snapshot_over(std::move(vm_dir), std::move(copy), &stats);
  if (!saved) {
    co_await vmm::run_blocking(remove_dir);
    done(std::move(saved).error().with_context(context));
    co_return;
  }
  const auto saved_at = std::chrono::steady_clock::now();
  info.vcpus = saved->vcpus;
  info.memory_mib = saved->memory_mib;
  info.images_fingerprint = images_fingerprint_;
  info.created_at_ms = unix_now_ms();
  vmm::Snapshot snapshot = std::move(saved.value());
  Result<void> committed = co_await make_standalone(snapshot, info, memory_file);
  if (committed) committed = store.commit(info);
  if (!committed) {
    co_await vmm::run_blocking(remove_dir);
    done(std::move(committed).error().with_context(context));
    co_return;
  }
  templates_[info.template_id] = as_template(std::move(snapshot), info.template_id);
  const auto ms = [](auto duration) {
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(duration).count());
  };
  log::info("sandbox saved as a template",
            {{"sandbox", id},
             {"template", info.template_id},
             {"name", info.name},
             {"key", info.owner},
             {"paused_ms", ms(stats.paused)},
             {"save_ms", ms(saved_at - started)},
             {"write_ms", ms(std::chrono::steady_clock::now() - saved_at)},
             {"memory_mib", info.memory_bytes >> 20},
             {"disk_mib", info.disk_bytes >> 20}});
  done(std::move(info));
}

asio::awaitable<Result<void>> VmHost::make_standalone(vmm::Snapshot& saved, TemplateInfo& info,
                                                      const fs::path& memory_file) {
  const auto base = fs::absolute(vmm::GuestImages::in(settings_.images_dir).base_disk);
  // The disk is an overlay on what the sandbox's disk stands on: the base
  // template's or a fork snapshot's disk (one rebuilt when it fails its
  // check, the other gone with its family). Rebased onto the base image,
  // the template outlives both.
  if (auto rebased = co_await vmm::rebase_onto(executor_, saved.disk, base); !rebased)
    co_return std::move(rebased).error();
  // Off the executor: hashing reads every byte.
  auto write = [&saved, memory_file] {
    return vmm::snapshot::persist_fork_snapshot(saved, memory_file, memory_file);
  };
  auto manifest = co_await vmm::run_blocking(write);
  if (!manifest) co_return std::move(manifest).error();
  saved.memory_file = memory_file;
  info.memory_bytes = manifest->memory.data_bytes;
  info.state_bytes = manifest->state.size;
  info.disk_bytes = manifest->disk.size;
  co_return Result<void>{};
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
  auto entry = templates_.emplace(template_id, as_template(std::move(opened.value()), template_id));
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
