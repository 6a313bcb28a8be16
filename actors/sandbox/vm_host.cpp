#include "actors/sandbox/vm_host.hpp"
#include "actors/sandbox/disk_limit.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <sstream>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <caf/send.hpp>

#include "common/unique_fd.hpp"

namespace vesicle {

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

void log_line(const std::string& line) {
  std::fprintf(stderr, "hostd: %s\n", line.c_str());
}

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
std::string images_fingerprint(const fs::path& images_dir) {
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

std::string random_suffix() {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string text;
  auto bits = generator();
  for (int i = 0; i < 10; ++i, bits >>= 4)
    text += kHex[bits & 0xf];
  return text;
}

} // namespace

VmHost::VmHost(asio::any_io_executor executor, vmm::Driver& driver, VmSettings settings)
    : executor_(std::move(executor)), driver_(driver), settings_(std::move(settings)),
      images_fingerprint_(images_fingerprint(settings_.images_dir)) {}

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

// A sandbox's VM: adopt the waiting pool VM if it is still alive, else
// restore from the template if there is one, else cold boot.
asio::awaitable<void> VmHost::run_sandbox_vm(std::string id, SandboxSpec spec, LaunchPlan plan,
                                             sandbox_actor sandbox) {
  std::shared_ptr<vmm::Vm> vm;
  std::shared_ptr<ExitTarget> target;
  std::string source;
  // The VM's network slot. A restored or booted VM's lease is held by this
  // coroutine, which ends after the VM's process has exited, so the slot's
  // tap is free when it is released; an adopted pool VM's lease is held by
  // the pool's coroutine in the same way.
  std::shared_ptr<net::NetworkLease> network;
  if (!plan.pool_vm_id.empty()) {
    auto found = pool_vms_.find(plan.pool_vm_id);
    if (found != pool_vms_.end()) {
      if (found->second.vm->running()) {
        vm = std::move(found->second.vm);
        target = std::move(found->second.target);
        network = std::move(found->second.network);
        source = "pool";
      } else {
        found->second.vm->destroy();
      }
      pool_vms_.erase(found);
    }
  }
  try {
    if (vm && network) {
      // Pool VMs wait with egress off; the sandbox's own egress is in force
      // before the create answers.
      auto egress =
          co_await network->set_egress(network_->system(), spec.egress, spec.egress_allow);
      if (!egress) {
        vm->destroy();
        caf::anon_send(sandbox, vm_boot_failed_atom::value,
                       "setting the sandbox's egress failed: " + egress.error().message());
        co_return;
      }
    }
    if (!vm) {
      auto leased = co_await lease_network(spec.egress, spec.egress_allow);
      if (!leased) {
        caf::anon_send(sandbox, vm_boot_failed_atom::value, leased.error().message());
        co_return;
      }
      network = std::move(leased.value());
    }
    if (!vm && !plan.template_key.empty()) {
      if (auto found = templates_.find(plan.template_key); found != templates_.end()) {
        const auto snapshot = found->second;
        auto config = vm_config(id, spec.vcpus, spec.memory_mib, network.get());
        auto restored = co_await driver_.restore(*snapshot, std::move(config));
        if (!restored) {
          caf::anon_send(sandbox, vm_boot_failed_atom::value,
                         "restoring from the template failed: " + restored.error().message());
          co_return;
        }
        vm = std::move(restored.value());
        source = "restore";
      }
    }
    if (!vm) {
      auto config = vm_config(id, spec.vcpus, spec.memory_mib, network.get());
      auto booted = co_await driver_.boot(std::move(config));
      if (!booted) {
        caf::anon_send(sandbox, vm_boot_failed_atom::value, booted.error().message());
        co_return;
      }
      vm = std::move(booted.value());
      source = "boot";
    }
  } catch (const std::exception& e) {
    caf::anon_send(sandbox, vm_boot_failed_atom::value,
                   std::string("the VMM driver threw: ") + e.what());
    co_return;
  }
  if (source != "boot") {
    // Every clone of a template starts with the same RNG state, clock,
    // hostname and machine-id: replace them before the sandbox is handed
    // out. Sent without waiting for the answer (it is on the create's
    // critical path); the agent applies it before it reads the next request,
    // so the user's first call already sees the new identity.
    // Named locals, not temporaries inside the co_await: g++ 12 miscompiles
    // those.
    auto identity = vmm::IdentityRefresh::generate(id);
    Result<void> sent;
    if (identity) {
      vmm::RefreshFailureHandler on_failure = [id](const Error& error) {
        log_line("sandbox " + id + ": identity refresh failed: " + error.message());
      };
      sent = co_await vm->agent().send_refresh_identity(std::move(identity.value()),
                                                        std::move(on_failure));
    } else {
      sent = std::move(identity).error();
    }
    if (!sent) {
      vm->destroy();
      caf::anon_send(sandbox, vm_boot_failed_atom::value,
                     "giving the restored VM a fresh identity failed: " + sent.error().message());
      co_return;
    }
  }
  // Named locals, not temporaries inside the co_await (g++ 12).
  const std::uint32_t root_mib = root_disk_mib();
  auto limited = co_await limit_root_disk(vm, id, spec.disk_mib, root_mib);
  if (!limited) {
    vm->destroy();
    caf::anon_send(sandbox, vm_boot_failed_atom::value, limited.error().message());
    co_return;
  }
  const bool watched = target != nullptr;
  if (watched) network.reset();
  if (!target) target = std::make_shared<ExitTarget>();
  target->sandbox = sandbox;
  target->pool = nullptr;
  vms_[id] = vm;
  caf::anon_send(sandbox, vm_booted_atom::value, static_cast<std::int32_t>(vm->qemu_pid()),
                 std::move(source));
  if (!watched) co_await watch_exit(std::move(vm), std::move(target));
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
    log_line("template " + spec.key + " is not usable and is rebuilt: " + opened.error().message());
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
  auto config = vm_config("tpl-" + random_suffix(), spec.vcpus, spec.memory_mib, network.get());
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
      auto vm = std::move(found->second);
      vms_.erase(found);
      vm->destroy();
    }
    if (sandbox) caf::anon_send(sandbox, vm_reclaimed_atom::value);
  });
}

std::shared_ptr<vmm::Vm> VmHost::find(const std::string& id) const {
  auto found = vms_.find(id);
  return found == vms_.end() ? nullptr : found->second;
}

void VmHost::destroy_all() {
  auto vms = std::move(vms_);
  vms_.clear();
  for (auto& [id, vm] : vms)
    vm->destroy();
  auto pooled = std::move(pool_vms_);
  pool_vms_.clear();
  for (auto& [id, entry] : pooled) {
    entry.target->pool = nullptr;
    entry.vm->destroy();
  }
}

} // namespace vesicle
