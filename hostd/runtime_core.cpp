#include "hostd/runtime_core.hpp"

#include <unistd.h>

#include <memory>
#include <mutex>
#include <unordered_map>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "actors/ask.hpp"
#include "actors/sandbox/space_store.hpp"
#include "common/log.hpp"
#include "hostd/confinement.hpp"
#include "hostd/network.hpp"
#include "hostd/sweep.hpp"
#include "messages/caf_types.hpp"
#include "vmm/overlay_usage.hpp"

namespace vesicle::hostd {

VmSettings vm_settings(const config::HostdConfig& config,
                       std::shared_ptr<const vmm::VmConfinement> confinement) {
  VmSettings settings;
  settings.confinement = std::move(confinement);
  settings.images_dir = config.images_dir();
  settings.runtime_dir = config.runtime_dir();
  settings.shm_dir = config.shm_dir();
  settings.boot_timeout = std::chrono::seconds(config.boot_timeout_s());
  settings.boot_stall_timeout = std::chrono::seconds(config.boot_stall_timeout_s());
  settings.qemu_binary = config.qemu_binary();
  settings.tcg_translation_cache_mib = config.tcg_translation_cache_mib();
  settings.tcg_single_thread = config.tcg_thread() != "multi";
  settings.templates_dir = config.templates_dir();
  settings.spaces_dir = config.spaces_dir();
  settings.pool_egress_open = config.has_network() && !config.network().uplink().empty() &&
                              config.network().default_egress() == "open";
  settings.spare_fork_copies = !config.has_spare_fork_copies() || config.spare_fork_copies();
  settings.prestarted_vmms = config.has_prestarted_vmms() ? config.prestarted_vmms() : 1;
  if (config.has_fork_parent_restart_mib())
    settings.fork_parent_restart_mib = config.fork_parent_restart_mib();
  const auto& agent = config.agent_deadlines();
  settings.agent_deadlines.exec_grace = std::chrono::seconds(agent.exec_grace_s());
  settings.agent_deadlines.cancel_answer = std::chrono::seconds(agent.exec_grace_s());
  settings.agent_deadlines.control = std::chrono::seconds(agent.call_timeout_s());
  settings.agent_deadlines.send = std::chrono::seconds(agent.call_timeout_s());
  settings.agent_deadlines.file_idle = std::chrono::seconds(2 * agent.call_timeout_s());
  settings.agent_deadlines.liveness = std::chrono::seconds(agent.liveness_s());
  return settings;
}

void configure_actor_system(caf::actor_system_config& config) {
  register_caf_types(config);
  // The actors only decide; the heavy lifting is on the asio thread.
  config.set("scheduler.max-threads", 2);
  // The work-stealing default lets idle workers sleep up to 10 ms between
  // polls (its relaxed phase), a delay a create could pay on each of its
  // actor hops; the sharing policy wakes a worker for each message.
  config.set("scheduler.policy", caf::atom("sharing"));
  config.set("logger.console", caf::atom("none"));
}

Result<void> make_private_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error{ec.value(), "create directory", dir.string(), {}, {}};
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
  return {};
}

namespace {

Result<void> check_images(const std::filesystem::path& dir) {
  for (const char* name : {"vmlinuz", "initrd.img", "rootfs.ext4"}) {
    auto path = dir / name;
    if (::access(path.c_str(), R_OK) != 0)
      return sys_error("read guest image", path.string())
          .with_context("checking images_dir; build the images with images/build.sh or point "
                        "images_dir at a directory with vmlinuz, initrd.img and rootfs.ext4");
  }
  return {};
}

} // namespace

Result<void> prepare_host(const config::HostdConfig& config) {
  for (const auto& dir : {config.state_dir(), config.runtime_dir()})
    if (auto made = make_private_dir(dir); !made) return made;
  if (auto images = check_images(config.images_dir()); !images) return images;
  auto swept = sweep_leftovers(config.runtime_dir(), config.shm_dir());
  if (!swept)
    return std::move(swept).error().with_context("reclaiming what a previous run left in " +
                                                 config.runtime_dir());
  if (swept->processes + swept->directories + swept->memory_files > 0)
    log::info("reclaimed from a previous run", {{"qemu_processes", swept->processes},
                                                {"vm_directories", swept->directories},
                                                {"memory_files", swept->memory_files}});
  if (auto confined = open_confinement(config, true); !confined) return confined.error();
  if (auto made = make_private_dir(config.spaces_dir()); !made) return made;
  // A freeze interrupted by a crash left a .partial directory: never a
  // Space (a Space exists once its directory is renamed into place).
  if (auto partial = SpaceStore(config.spaces_dir()).sweep_partial(); partial > 0)
    log::warn("removed unfinished Spaces of an interrupted freeze", {{"count", partial}});
  return {};
}

VmLease::~VmLease() {
  if (gate_) gate_->leave();
}

RuntimeCore::RuntimeCore(asio::any_io_executor executor, caf::actor_system& system,
                         vmm::Driver& driver, config::HostdConfig config)
    : system_(system), config_(std::move(config)), confinement_(open_confinement(config_, false)),
      vms_(std::move(executor), driver,
           vm_settings(config_, confinement_ ? *confinement_
                                             : std::shared_ptr<const vmm::VmConfinement>{})) {}

RuntimeCore::~RuntimeCore() {
  if (registry_) caf::anon_send_exit(registry_, caf::exit_reason::user_shutdown);
  for (auto& pool : pools_)
    caf::anon_send_exit(pool, caf::exit_reason::user_shutdown);
  // The bridge destroys every slot as it stops (its own thread).
  if (bridge_) caf::anon_send_exit(bridge_, caf::exit_reason::user_shutdown);
}

void RuntimeCore::stop_actors_and_wait() {
  caf::scoped_actor self(system_);
  auto stop = [&](const auto& actor) {
    if (!actor) return;
    caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
    self->wait_for(actor);
  };
  stop(registry_);
  for (auto& pool : pools_)
    stop(pool);
  stop(bridge_);
}

caf::timespan RuntimeCore::create_timeout() const {
  return std::chrono::seconds(config_.boot_timeout_s()) + std::chrono::seconds(30);
}

Result<void> RuntimeCore::start_network() {
  auto network = bridge_config(config_);
  if (!network) return std::move(network).error();
  if (!*network) return {};
  // Reclaims what a killed run with the same prefix left, then builds the
  // egress namespace and host plumbing: blocking, but once, before serving.
  auto manager = net::BridgeManager::create(std::move(**network));
  if (!manager)
    return std::move(manager).error().with_context(
        "setting up sandbox networking (the network section of the configuration)");
  if (const auto& reclaimed = (*manager)->reclaimed_at_start(); !reclaimed.empty())
    log::warn("removed network leftovers of an earlier run", {{"what", reclaimed.describe()}});
  std::string egress_ca = (*manager)->egress_ca_pem();
  bridge_ = net::spawn_bridge(system_, std::move(manager.value()));
  vms_.attach_network(std::make_shared<net::NetworkLeases>(system_, bridge_), std::move(egress_ca));
  return {};
}

Result<void> RuntimeCore::start() {
  if (!confinement_) return confinement_.error();
  if (auto network = start_network(); !network) return network;
  auto boot = std::chrono::seconds(config_.boot_timeout_s());
  RegistrySettings settings;
  settings.max_sandboxes = config_.max_sandboxes();
  // The driver gives up on a boot after boot_timeout; the registry and the
  // callers wait a little longer so the driver's error is what they see.
  settings.ready_timeout = boot + std::chrono::seconds(15);
  settings.spaces_dir = config_.spaces_dir();
  settings.saved_templates_dir = vms_.saved_templates_dir();
  if (const auto& admission = config_.admission(); !admission.disabled()) {
    HostRoomSettings room;
    room.memory_reserve_mib = admission.memory_reserve_mib();
    room.memory_overcommit = admission.memory_overcommit();
    room.vm_overhead_mib = admission.vm_overhead_mib();
    room.disk_reserve_mib = admission.disk_reserve_mib();
    room.disk_overcommit = admission.disk_overcommit();
    room.disk_dir = config_.runtime_dir();
    // Found through the sandbox's QEMU (vmm/overlay_usage.hpp): a pool VM's
    // directory is named after the VM, not the sandbox. A VM that exits
    // while this reads counts whole. Each QEMU's overlay descriptor is
    // remembered: admission asks for every running sandbox at each create.
    struct OverlayFds {
      std::mutex lock;
      std::unordered_map<std::int32_t, int> by_pid;
    };
    room.disk_in_use_mib = [fds = std::make_shared<OverlayFds>()](
                               std::int32_t qemu_pid) -> std::optional<std::uint64_t> {
      std::lock_guard<std::mutex> guard(fds->lock);
      // Pids of ended QEMUs are never asked again: start over now and then.
      if (fds->by_pid.size() > 4096) fds->by_pid.clear();
      auto [known, added] = fds->by_pid.try_emplace(qemu_pid, -1);
      auto bytes = vmm::overlay_bytes_in_use(qemu_pid, &known->second);
      if (!bytes) {
        fds->by_pid.erase(known);
        return std::nullopt;
      }
      return *bytes >> 20;
    };
    if (confinement_ && *confinement_ && (*confinement_)->cgroups) {
      room.memory_in_use_mib =
          [tree = (*confinement_)->cgroups](const std::string& id) -> std::optional<std::uint64_t> {
        auto bytes = tree->memory_in_use(id);
        if (!bytes) return std::nullopt;
        return *bytes >> 20;
      };
    }
    settings.host_room = room;
  }
  for (const auto& pool : config_.pools()) {
    TemplateSpec spec;
    spec.name = pool.template_();
    spec.vcpus = pool.vcpus();
    spec.memory_mib = pool.memory_mib();
    spec.preload_modules.assign(pool.preload_modules().begin(), pool.preload_modules().end());
    spec.min_ready = pool.min_ready();
    spec.max = pool.max();
    spec.key = vms_.template_key(spec);
    auto actor = spawn_pool(system_, spec, vms_);
    pools_.push_back(actor);
    settings.pools.push_back({spec, actor});
  }
  registry_ = spawn_registry(system_, vms_, settings);
  return {};
}

asio::awaitable<void> RuntimeCore::shutdown() {
  if (shut_down_) co_return;
  shut_down_ = true;
  for (auto& pool : pools_) {
    auto stopped =
        co_await ask<done_atom>(system_, pool, std::chrono::seconds(10), shutdown_atom::value);
    if (!stopped) log::warn("a pool did not stop", {{"error", system_.render(stopped.error())}});
  }
  if (registry_) {
    auto done = co_await ask<done_atom>(system_, registry_, std::chrono::seconds(120),
                                        shutdown_atom::value);
    if (!done)
      log::warn("the registry did not finish shutting down; killing VMs",
                {{"error", system_.render(done.error())}});
  }
  vms_.destroy_all();
  // Every VM is gone, and with it its leaf: our cgroup root goes too (it
  // stays when something is still in it, and the next start sweeps that).
  // A leaf whose VM was reaped a moment ago may still count it; the sweep
  // empties and removes whatever is left, with its own retries.
  if (confinement_ && *confinement_ && (*confinement_)->cgroups) {
    const auto& tree = *(*confinement_)->cgroups;
    auto removed = tree.remove_roots();
    auto executor = co_await asio::this_coro::executor;
    asio::steady_timer pause(executor);
    for (int attempt = 0; !removed && attempt < 20; ++attempt) {
      (void)tree.sweep();
      pause.expires_after(std::chrono::milliseconds(50));
      co_await pause.async_wait(asio::use_awaitable);
      removed = tree.remove_roots();
    }
    if (!removed)
      log::warn("the VMs' cgroup root was not removed", {{"error", removed.error().message()}});
  }
}

asio::awaitable<caf::expected<VmLease>> RuntimeCore::lease(const std::string& owner,
                                                           const std::string& id) {
  // The usual case, a ready sandbox, costs no message (op_gate.hpp).
  if (auto gate = vms_.op_gates()->enter(id, owner))
    co_return VmLease(std::move(gate), owner, id, vms_.find(id));
  auto lease = co_await ask<std::uint64_t>(system_, registry_, actor_timeout(),
                                           begin_op_atom::value, owner, id);
  if (!lease) co_return std::move(lease.error());
  // The sandbox actor entered its gate for this lease.
  co_return VmLease(vms_.op_gates()->find(id), owner, id, vms_.find(id));
}

namespace {

// How the VM's process ended, if it ends within `limit`. A broken agent
// channel is usually seen a moment before the process is reaped.
asio::awaitable<std::optional<std::string>> exit_within(std::shared_ptr<vmm::Vm> vm,
                                                        std::chrono::milliseconds limit) {
  if (!vm->running()) co_return co_await vm->wait_exit();
  struct Waiting {
    explicit Waiting(asio::any_io_executor executor) : timer(executor) {}
    asio::steady_timer timer;
    std::optional<std::string> how;
  };
  auto executor = co_await asio::this_coro::executor;
  auto waiting = std::make_shared<Waiting>(executor);
  waiting->timer.expires_after(limit);
  asio::co_spawn(
      executor,
      [vm, waiting]() -> asio::awaitable<void> {
        auto how = co_await vm->wait_exit();
        waiting->how = std::move(how);
        waiting->timer.cancel();
      },
      asio::detached);
  boost::system::error_code ignored;
  co_await waiting->timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  co_return waiting->how;
}

} // namespace

asio::awaitable<std::string> RuntimeCore::record_death(const std::string& owner,
                                                       const std::string& id,
                                                       std::shared_ptr<vmm::Vm> vm) {
  std::string how = "its VM is gone";
  auto closed = vm ? vm->agent().closed_reason() : std::nullopt;
  if (vm && vm->running() && closed && closed->kind != ErrorKind::guest_died) {
    // hostd itself disconnected the guest (it broke the protocol or stopped
    // answering): QEMU runs on until the registry has it reclaimed, so
    // there is no exit to wait for.
    how = std::string(kind_info(closed->kind).name) + ": " + closed->message();
  } else if (vm) {
    auto exited = co_await exit_within(vm, std::chrono::seconds(3));
    how = exited ? *exited
                 : "the guest agent's channel closed while QEMU still ran (the agent or the "
                   "guest kernel failed); the VM was killed";
  }
  // Recorded before the caller answers, so a lookup right after already
  // shows the sandbox dead.
  co_await ask<done_atom>(system_, registry_, actor_timeout(), vm_exited_atom::value, owner, id,
                          how);
  auto info =
      co_await ask<SandboxInfo>(system_, registry_, actor_timeout(), lookup_atom::value, owner, id);
  co_return info && !info->dead_reason.empty() ? info->dead_reason : how;
}

} // namespace vesicle::hostd
