// VmHost, templates and the pool's VMs: checking or building a template
// snapshot, restoring waiting VMs from it for the pool, discarding them.
#include "actors/sandbox/vm_host.hpp"

#include <exception>
#include <fcntl.h>
#include <optional>
#include <sys/file.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <caf/send.hpp>

#include "common/ids.hpp"
#include "common/log.hpp"
#include "common/unique_fd.hpp"
#include "vmm/blocking.hpp"
#include "vmm/snapshot.hpp"

namespace vesicle {

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

// Runs one cell in `vm`'s REPL: an Error when the agent failed (the VM is
// unusable), else why the cell raised ("the cell failed" when it said
// nothing), or "" when it ran.
asio::awaitable<Result<std::string>> run_cell(vmm::Vm& vm, std::string code,
                                              std::chrono::milliseconds timeout) {
  guest::ExecPython cell;
  cell.set_code(std::move(code));
  cell.set_timeout_ms(static_cast<std::uint32_t>(timeout.count()));
  std::string failure;
  vmm::ExecEventSink on_event = [&failure](const guest::Event& event) {
    if (event.has_error()) failure = event.error().name() + ": " + event.error().value();
  };
  auto ran = co_await vm.agent().exec_python(std::move(cell), std::move(on_event));
  if (!ran) co_return std::move(ran).error();
  if (ran->exit_code() != 0) co_return failure.empty() ? std::string("the cell failed") : failure;
  co_return std::string();
}

} // namespace

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
  // A saved template is only ever checked, never built.
  if (!spec.saved_dir.empty()) {
    co_await check_saved_template(std::move(spec), std::move(pool));
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
  // A template booted on another machine or with other kernel parameters
  // (an older hostd's) would still restore, but its VMs would miss what the
  // new ones change.
  const bool same_boot = opened && driver_.boots_as(opened.value());
  if (same_boot) {
    templates_[spec.key] = as_template(std::move(opened.value()), spec.key);
    // A pool's template: its sandboxes' forks find a landing from the start.
    want_landing(spec.key);
    caf::anon_send(pool, template_atom::value, true, "template " + spec.key + " checked");
    co_return;
  }
  if (opened) {
    log::info("template was booted on another machine or with other kernel parameters and is "
              "rebuilt",
              {{"template", spec.key},
               {"was", opened->kernel_cmdline + (opened->pit ? " (with the legacy PIT)" : "") +
                           (opened->vcpu_sockets ? " (each vCPU a socket)" : "")}});
  } else if (fs::exists(dir, ec)) {
    log::warn("template is not usable and is rebuilt",
              {{"template", spec.key}, {"error", opened.error().message()}});
  }
  const auto started = std::chrono::steady_clock::now();
  auto built = co_await build_template(spec);
  if (!built) {
    caf::anon_send(pool, template_atom::value, false, built.error().message());
    co_return;
  }
  templates_[spec.key] = std::move(built.value());
  want_landing(spec.key);
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
  // The RAM image is kept on disk beside the snapshot for the next start
  // (read back into a sealed memfd then); VMs map the memfd.
  const auto memory_file = settings_.templates_dir / (spec.key + ".mem");
  // What an earlier attempt left (a snapshot's tree, its RAM image): on
  // the blocking pool, not the loop.
  // Named, not a temporary inside the co_await: g++ 12 miscompiles those
  // (the captured paths were destroyed twice).
  auto remove_leftovers = [dir, memory_file] {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
    fs::remove(memory_file, ignored);
  };
  co_await vmm::run_blocking(remove_leftovers);

  const auto context = "building template " + spec.key;
  // Egress off: the template VM runs nothing but the preload imports.
  auto leased = co_await lease_network(false, {});
  if (!leased) co_return std::move(leased).error().with_context(context);
  const auto network = std::move(leased.value());
  // disk_mib left 0: a template's disk is the base image's size, the
  // smallest any sandbox has, so its pool VMs' disks only ever grow at
  // hand-out (vmm/root_disk.hpp).
  auto config = vm_config(random_id("tpl-"), spec.vcpus, spec.memory_mib, network.get());
  auto booted = co_await driver_.boot(std::move(config));
  if (!booted) co_return std::move(booted).error().with_context(context);
  std::shared_ptr<vmm::Vm> vm = std::move(booted.value());

  // The REPL is up once a cell has run; the imports make the modules'
  // pages part of the shared template memory.
  std::string imports = "import sys";
  for (const auto& module : spec.preload_modules)
    imports += "; import " + module;
  auto ran = co_await run_cell(*vm, imports, settings_.boot_timeout);
  if (!ran || !ran->empty()) {
    vm->destroy();
    if (!ran) co_return std::move(ran).error().with_context(context);
    co_return make_error("preload modules", *ran, imports)
        .with_context(context + "; check preload_modules in the configuration");
  }
  auto saved = co_await vm->save_snapshot(dir, memory_file);
  vm->destroy();
  if (!saved) {
    co_await vmm::run_blocking(remove_leftovers);
    co_return std::move(saved).error().with_context(context);
  }
  co_return as_template(std::move(saved.value()), spec.key);
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
    auto leased = co_await lease_network(settings_.pool_egress_open, {});
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
  // Listed before its first cell, so that a discard (the pool shutting
  // down) finds it meanwhile.
  pool_vms_[pool_vm_id] = PoolVm{vm, target, network, key};
  auto warmed = co_await run_first_cell(*vm, pool_vm_id);
  if (!warmed) {
    auto listed = pool_vms_.find(pool_vm_id);
    if (listed == pool_vms_.end() || listed->second.vm != vm) co_return; // discarded meanwhile
    pool_vms_.erase(listed);
    vm->destroy();
    caf::anon_send(pool, vm_boot_failed_atom::value, pool_vm_id,
                   warmed.error().with_context("its first cell after the restore").message());
    co_return;
  }
  if (!warmed->empty())
    // Its agent answered: the VM is sound, only the user's state a saved
    // template holds made the cell fail. It waits all the same.
    log::info("a pool VM's first cell failed; the VM waits all the same",
              {{"vm", pool_vm_id}, {"error", *warmed}});
  caf::anon_send(pool, vm_booted_atom::value, pool_vm_id,
                 static_cast<std::int32_t>(vm->qemu_pid()));
  co_await watch_exit(std::move(vm), std::move(target));
}

asio::awaitable<Result<std::string>> VmHost::run_first_cell(vmm::Vm& vm,
                                                            const std::string& pool_vm_id) {
  // A restored VM's QEMU has translated none of the guest's code: under
  // TCG a sandbox's first exec translates the agent's and the REPL's exec
  // path and, before it, the identity refresh its hand-out sent (the
  // kernel's entropy and clock calls, the REPL reseeding random and
  // numpy): ~150-250 ms of a core (BENCHMARKS.md, "a pool VM's first
  // cell"). Both run here once, before a sandbox takes the VM, so that its
  // first run_code is as fast as its next. Nothing of it shows: the
  // hand-out's own refresh replaces this identity, and the cell writes one
  // newline to the REPL's output pipe (not through sys.stdout or print,
  // which a saved template's cells may have replaced), which goes nowhere,
  // and evaluates to None: no result, `_` untouched.
  auto refreshed = co_await refresh_identity(vm, pool_vm_id, "");
  if (!refreshed) co_return std::move(refreshed).error();
  // Named, not a temporary inside the co_await: g++ 12 miscompiles those.
  std::string code = kPoolFirstCell;
  co_return co_await run_cell(vm, std::move(code), settings_.boot_timeout);
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
std::shared_ptr<const vmm::Snapshot> VmHost::as_template(vmm::Snapshot snapshot,
                                                         const std::string& key) {
  // With landings, a landing holds the template's copy instead.
  if (settings_.spare_fork_copies && settings_.prestarted_vmms == 0 && snapshot.memory) {
    snapshot.spare = vmm::SpareCopy::of(snapshot.memory, "vesicle-spare-" + key);
    snapshot.spare->refill();
  }
  return std::make_shared<const vmm::Snapshot>(std::move(snapshot));
}

} // namespace vesicle
