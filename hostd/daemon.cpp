#include "hostd/daemon.hpp"

namespace vesicle::hostd {

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
    : core_(io.get_executor(), system, driver, std::move(config)), keys_(std::move(keys)),
      server_(io.get_executor(), http_limits(core_.config()), core_.config().max_connections(),
              [this](Exchange& exchange) { return api_->handle(exchange); }) {}

Result<void> Daemon::start() {
  if (auto started = core_.start(); !started) return started;
  api_ = std::make_unique<Api>(ApiContext{core_, core_.system(), core_.registry(), core_.vms(),
                                          keys_, core_.config(), core_.pools(),
                                          core_.actor_timeout(), core_.create_timeout()});
  auto address = parse_listen_address(core_.config().listen());
  if (!address) return std::move(address).error();
  return server_.listen(*address);
}

asio::awaitable<void> Daemon::shutdown() {
  if (shut_down_) co_return;
  shut_down_ = true;
  server_.stop_accepting();
  if (api_) api_->stop_e2b();
  co_await core_.shutdown();
  server_.close_connections();
}

} // namespace vesicle::hostd
