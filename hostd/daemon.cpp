#include "hostd/daemon.hpp"

#include <cstdio>

#include <caf/send.hpp>

#include "actors/ask.hpp"
#include "hostd/network.hpp"

namespace vesicle::hostd {

VmSettings vm_settings(const config::HostdConfig& config) {
  VmSettings settings;
  settings.images_dir = config.images_dir();
  settings.runtime_dir = config.runtime_dir();
  settings.shm_dir = config.shm_dir();
  settings.boot_timeout = std::chrono::seconds(config.boot_timeout_s());
  settings.qemu_binary = config.qemu_binary();
  settings.tcg_translation_cache_mib = config.tcg_translation_cache_mib();
  settings.templates_dir = config.templates_dir();
  settings.spaces_dir = config.spaces_dir();
  return settings;
}

namespace {
HttpLimits http_limits(const config::HostdConfig& config) {
  HttpLimits limits;
  limits.max_json_body = config.max_json_body_bytes();
  limits.request_timeout = std::chrono::seconds(config.request_timeout_s());
  limits.write_timeout = std::chrono::seconds(config.write_timeout_s());
  return limits;
}
} // namespace

Daemon::Daemon(asio::io_context& io, caf::actor_system& system, vmm::Driver& driver,
               config::HostdConfig config, KeyStore keys)
    : io_(io), system_(system), config_(std::move(config)), keys_(std::move(keys)),
      vms_(io.get_executor(), driver, vm_settings(config_)),
      server_(io.get_executor(), http_limits(config_), config_.max_connections(),
              [this](Exchange& exchange) { return api_->handle(exchange); }) {}

Daemon::~Daemon() {
  if (registry_) caf::anon_send_exit(registry_, caf::exit_reason::user_shutdown);
  for (auto& pool : pools_)
    caf::anon_send_exit(pool, caf::exit_reason::user_shutdown);
  // The bridge destroys every slot as it stops (its own thread).
  if (bridge_) caf::anon_send_exit(bridge_, caf::exit_reason::user_shutdown);
}

Result<void> Daemon::start_network() {
  auto network = bridge_config(config_);
  if (!network) return std::move(network).error();
  if (!*network) return {};
  // Reclaims what a killed hostd with the same prefix left, then builds the
  // egress namespace and host plumbing: blocking, but once, before serving.
  auto manager = net::BridgeManager::create(std::move(**network));
  if (!manager)
    return std::move(manager).error().with_context(
        "setting up sandbox networking (the network section of the configuration)");
  if (const auto& reclaimed = (*manager)->reclaimed_at_start(); !reclaimed.empty())
    std::fprintf(stderr, "hostd: removed network leftovers of an earlier run: %s\n",
                 reclaimed.describe().c_str());
  bridge_ = net::spawn_bridge(system_, std::move(manager.value()));
  vms_.attach_network(std::make_shared<net::NetworkLeases>(system_, bridge_));
  return {};
}

Result<void> Daemon::start() {
  if (auto network = start_network(); !network) return network;
  auto boot = std::chrono::seconds(config_.boot_timeout_s());
  RegistrySettings settings;
  settings.max_sandboxes = config_.max_sandboxes();
  // The driver gives up on a boot after boot_timeout; the registry and the
  // HTTP handler wait a little longer so the driver's error is what the
  // client sees.
  settings.ready_timeout = boot + std::chrono::seconds(15);
  settings.spaces_dir = config_.spaces_dir();
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
  ApiContext context{system_, registry_, vms_, keys_, config_, pools_};
  context.create_timeout = boot + std::chrono::seconds(30);
  api_ = std::make_unique<Api>(context);
  auto address = parse_listen_address(config_.listen());
  if (!address) return std::move(address).error();
  return server_.listen(*address);
}

asio::awaitable<void> Daemon::shutdown() {
  if (shut_down_) co_return;
  shut_down_ = true;
  server_.stop_accepting();
  for (auto& pool : pools_) {
    auto stopped =
        co_await ask<done_atom>(system_, pool, std::chrono::seconds(10), shutdown_atom::value);
    if (!stopped)
      std::fprintf(stderr, "hostd: a pool did not stop (%s)\n",
                   system_.render(stopped.error()).c_str());
  }
  auto done =
      co_await ask<done_atom>(system_, registry_, std::chrono::seconds(120), shutdown_atom::value);
  if (!done)
    std::fprintf(stderr, "hostd: the registry did not finish shutting down (%s); killing VMs\n",
                 system_.render(done.error()).c_str());
  vms_.destroy_all();
  server_.close_connections();
}

} // namespace vesicle::hostd
