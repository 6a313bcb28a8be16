// hostd assembled: the VMs (VmHost, on the asio executor), the registry
// actor, the REST API and its HTTP server. main.cpp runs one; the API tests
// run one in-process with a fake driver.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <memory>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <caf/actor_system.hpp>

#include "actors/sandbox/registry.hpp"
#include "actors/sandbox/vm_host.hpp"
#include "hostd/api.hpp"
#include "hostd/http_server.hpp"
#include "hostd/keys.hpp"
#include "messages/config.pb.h"

namespace vesicle::hostd {

class Daemon {
public:
  // `config` must have its defaults applied (load_config does).
  Daemon(asio::io_context& io, caf::actor_system& system, vmm::Driver& driver,
         config::HostdConfig config, KeyStore keys);
  ~Daemon();

  // Spawns the registry and starts listening.
  Result<void> start();
  asio::ip::tcp::endpoint endpoint() const { return server_.local_endpoint(); }
  registry_actor registry() const { return registry_; }
  VmHost& vms() { return vms_; }

  // Stops accepting, destroys every sandbox (their VMs and files), closes
  // the connections. Run on the io_context; safe to call twice.
  asio::awaitable<void> shutdown();

private:
  asio::io_context& io_;
  caf::actor_system& system_;
  config::HostdConfig config_;
  KeyStore keys_;
  VmHost vms_;
  registry_actor registry_;
  std::vector<pool_actor> pools_;
  net::bridge_actor bridge_; // null without a network section
  std::unique_ptr<Api> api_;
  HttpServer server_;
  bool shut_down_ = false;

  Result<void> start_network();
};

// The VM settings a configuration implies.
VmSettings vm_settings(const config::HostdConfig& config);

} // namespace vesicle::hostd
