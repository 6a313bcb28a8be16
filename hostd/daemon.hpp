// hostd assembled: the runtime (RuntimeCore: VMs, network, pools, registry)
// with the REST API and its HTTP server on top. main.cpp runs one; the API
// tests run one in-process with a fake driver.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <memory>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <caf/actor_system.hpp>

#include "hostd/api.hpp"
#include "hostd/http_server.hpp"
#include "hostd/keys.hpp"
#include "hostd/runtime_core.hpp"
#include "messages/config.pb.h"

namespace vesicle::hostd {

class Daemon {
public:
  // `config` must have its defaults applied (load_config does).
  Daemon(asio::io_context& io, caf::actor_system& system, vmm::Driver& driver,
         config::HostdConfig config, KeyStore keys);

  // Starts the runtime (network, pools, registry) and starts listening.
  Result<void> start();
  asio::ip::tcp::endpoint endpoint() const { return server_.local_endpoint(); }
  registry_actor registry() const { return core_.registry(); }
  const std::vector<pool_actor>& pools() const { return core_.pools(); }
  VmHost& vms() { return core_.vms(); }

  // Reads the keys file again (SIGHUP): Api::reload_keys. Run on the
  // io_context.
  asio::awaitable<Result<KeysReload>> reload_keys() { return api_->reload_keys(); }

  // Stops accepting, destroys every sandbox (their VMs and files), closes
  // the connections. Run on the io_context; safe to call twice.
  asio::awaitable<void> shutdown();

private:
  RuntimeCore core_;
  KeyStore keys_;
  std::unique_ptr<Api> api_;
  HttpServer server_;
  bool shut_down_ = false;
};

} // namespace vesicle::hostd
