// VmHost, the VM table: who owns each running VM, launching a sandbox's VM
// (acquire it as its plan says, hand it over, watch for its exit),
// reclaiming one, and the settings every VM shares. The other jobs are in
// vm_host_acquire.cpp, vm_host_fork.cpp, vm_host_spaces.cpp and
// vm_host_templates.cpp.
#include "actors/sandbox/vm_host.hpp"

#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <caf/send.hpp>

#include "actors/sandbox/guest_trust.hpp"
#include "common/log.hpp"
#include "vmm/root_disk.hpp"

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
  config.boot_stall_timeout = settings_.boot_stall_timeout;
  config.qemu_binary = settings_.qemu_binary;
  config.tcg_translation_cache_mib = settings_.tcg_translation_cache_mib;
  config.tcg_single_thread = settings_.tcg_single_thread;
  if (network) config.network = network->attachment();
  config.confinement = settings_.confinement;
  config.agent_deadlines = settings_.agent_deadlines;
  config.on_pause = [paused = paused_](const std::string& name,
                                       const std::optional<std::string>& why) {
    paused->set(name, why);
  };
  return config;
}

asio::awaitable<Result<std::shared_ptr<net::NetworkLease>>>
VmHost::lease_network(bool egress, std::vector<std::string> allow, SecretValues secrets,
                      bool for_prestarted) {
  if (!network_) co_return std::shared_ptr<net::NetworkLease>();
  for (int attempt = 0;; ++attempt) {
    auto leased = co_await network_->acquire(egress, allow, secrets);
    if (leased) co_return std::shared_ptr<net::NetworkLease>(std::move(leased.value()));
    // A QEMU started ahead never keeps a sandbox from a slot: one gives
    // its slot up, and the lease is tried again (the bridge may take a
    // moment to see the slot back).
    if (for_prestarted || attempt >= 8) co_return std::move(leased).error();
    if (attempt == 0 && !co_await give_up_a_prestarted_vmm()) co_return std::move(leased).error();
    if (attempt > 0) {
      asio::steady_timer pause(executor_, std::chrono::milliseconds(10 * attempt));
      boost::system::error_code ignored;
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
  }
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
  auto template_key = std::move(acquired->template_key);
  auto prepared = co_await prepare_handout(vm, id, spec, source, machine_id);
  if (!prepared) {
    vm->destroy();
    (void)co_await vm->wait_exit(); // before its network slot goes
    caf::anon_send(sandbox, vm_boot_failed_atom::value, prepared.error().message());
    co_return;
  }
  machine_id = std::move(prepared.value());
  // An adopted pool VM's exit is already watched (by its pool coroutine).
  const bool watched = target != nullptr;
  if (!target) target = std::make_shared<ExitTarget>();
  target->sandbox = sandbox;
  target->pool = nullptr;
  vms_[id] = SandboxVm{vm,
                       target,
                       std::move(network),
                       std::move(base),
                       std::move(machine_id),
                       std::move(template_key)};
  caf::anon_send(sandbox, vm_booted_atom::value, static_cast<std::int32_t>(vm->qemu_pid()),
                 std::move(source));
  if (!watched) co_await watch_exit(std::move(vm), std::move(target));
}

// What a VM goes through before its sandbox gets it. The machine-id it
// ends with, or why it cannot be handed out.
asio::awaitable<Result<std::string>>
VmHost::prepare_handout(std::shared_ptr<vmm::Vm> vm, const std::string& id, const SandboxSpec& spec,
                        const std::string& source, std::string machine_id) {
  // Every clone of a template or fork snapshot starts with the same RNG
  // state, clock, hostname and machine-id: replace them before the sandbox
  // is handed out. A resumed Space keeps its machine-id (it is the same
  // machine). A cold-booted VM has its own already, but gets its hostname
  // and a machine-id hostd knows, which its forks' parent and its Spaces
  // keep.
  auto refreshed = co_await refresh_identity(*vm, id, std::move(machine_id));
  if (!refreshed)
    co_return std::move(refreshed).error().with_context("giving the VM its identity failed");
  // A pool VM's disk is the template's (the base image's size): grown to
  // the sandbox's quota here. Named locals, not temporaries inside the
  // co_await (g++ 12).
  const std::uint32_t disk_mib = spec.disk_mib;
  auto fitted = co_await fit_root_disk(vm, id, disk_mib);
  if (!fitted) co_return std::move(fitted).error();
  if (!spec.secrets.empty()) {
    auto trusted = co_await trust_egress_ca(*vm, source);
    if (!trusted)
      co_return std::move(trusted).error().with_context(
          "making the guest trust the egress CA failed");
  }
  co_return std::move(refreshed.value());
}

// A sandbox with secrets trusts this install's egress CA: its bash commands
// get the CA's variables; a VM that does not trust it yet also gets the CA
// added to its bundle and its REPL's environment set. A fork child and a
// resumed Space already do (their disk and memory came from one that did).
asio::awaitable<Result<void>> VmHost::trust_egress_ca(vmm::Vm& vm, const std::string& source) {
  if (settings_.egress_ca_pem.empty())
    co_return make_error("trust the egress CA",
                         "hostd has no egress CA (network.secrets_ca_dir is not set)");
  GuestTrust trust = guest_trust(settings_.egress_ca_pem);
  vm.agent().set_bash_env(trust.env);
  if (source == "fork" || source == "space") co_return Result<void>{};
  // Both execs' stderr and errors, for the message if one fails.
  std::string errors;
  vmm::ExecEventSink collect_errors = [&errors](const guest::Event& event) {
    if (event.has_stderr() && errors.size() < 4096) errors += event.stderr();
    if (event.has_error()) errors += event.error().name() + ": " + event.error().value();
  };
  guest::ExecBash script;
  script.set_command(trust.script);
  script.set_timeout_ms(30'000);
  auto added = co_await vm.agent().exec_bash(std::move(script), collect_errors);
  if (!added) co_return std::move(added).error();
  if (added->exit_code() != 0)
    co_return make_error("add the egress CA to the guest's bundle",
                         "exit " + std::to_string(added->exit_code()) + ": " + errors);
  // The REPL and what it starts (pip, node) read the same variables.
  std::string code = "__import__('os').environ.update({";
  for (const auto& [name, value] : trust.env)
    code += "'" + name + "': '" + value + "', "; // fixed paths, no quotes
  code += "})";
  guest::ExecPython update;
  update.set_code(std::move(code));
  update.set_timeout_ms(30'000);
  auto set = co_await vm.agent().exec_python(std::move(update), std::move(collect_errors));
  if (!set) co_return std::move(set).error();
  if (set->exit_code() != 0) co_return make_error("set the REPL's CA variables", errors);
  co_return Result<void>{};
}

// Sits on a VM's exit so its owner hears about a death (kill -9, guest
// panic) as soon as it happens. The owner can change while it waits (a
// pool VM handed to a sandbox).
asio::awaitable<void> VmHost::watch_exit(std::shared_ptr<vmm::Vm> vm,
                                         std::shared_ptr<ExitTarget> target) {
  // hostd disconnecting the guest (it broke the agent protocol, or stopped
  // answering) ends the sandbox as an exit would, though QEMU runs on until
  // reclaimed: without this the death waited for the next call.
  vm->agent().on_disconnect([target](const Error& reason) {
    std::string how = std::string(kind_info(reason.kind).name) + ": " + reason.message();
    if (target->sandbox)
      caf::anon_send(target->sandbox, vm_exited_atom::value, std::move(how));
    else if (target->pool)
      caf::anon_send(target->pool, vm_exited_atom::value, target->pool_vm_id, std::move(how));
  });
  std::string how = co_await vm->wait_exit();
  vm.reset();
  if (target->sandbox)
    caf::anon_send(target->sandbox, vm_exited_atom::value, std::move(how));
  else if (target->pool)
    caf::anon_send(target->pool, vm_exited_atom::value, target->pool_vm_id, std::move(how));
}

void VmHost::reclaim(std::string id, sandbox_actor sandbox) {
  asio::co_spawn(
      executor_,
      [this, id = std::move(id), sandbox = std::move(sandbox)]() -> asio::awaitable<void> {
        if (auto found = vms_.find(id); found != vms_.end()) {
          SandboxVm record = std::move(found->second);
          vms_.erase(found);
          // Dead (reaped, its leaf and files gone: destroy() only kills)
          // before its network slot and fork snapshot are let go.
          record.vm->destroy();
          (void)co_await record.vm->wait_exit();
        }
        if (sandbox) caf::anon_send(sandbox, vm_reclaimed_atom::value);
      },
      asio::detached);
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
  // Their QEMUs are killed; the slots go with hostd.
  landings_.clear();
  landed_.clear();
  warm_restores_.clear();
  count_landings();
  auto pooled = std::move(pool_vms_);
  pool_vms_.clear();
  for (auto& [id, entry] : pooled) {
    entry.target->pool = nullptr;
    entry.vm->destroy();
  }
}

} // namespace vesicle
