// vesicle-gateway: the front of a cluster of hostd nodes (docs/cluster.md).
// Serves the REST API, authenticates, places creates by region and passes
// every call on to the node that holds its sandbox; learns the nodes from
// their registrations over CAF's remote actors. See --help.
#include <utility> // before Boost 1.74 asio, which needs std::exchange

#include <sys/stat.h>

#include <cstdio>
#include <iostream>
#include <memory>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/program_options.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/send.hpp>

#include "common/log.hpp"
#include "hostd/api.hpp"
#include "hostd/cluster_identity.hpp"
#include "hostd/cluster_protocol.hpp"
#include "hostd/config.hpp"
#include "hostd/gateway_api.hpp"
#include "hostd/gateway_members.hpp"
#include "hostd/http_server.hpp"
#include "hostd/keys.hpp"
#include "hostd/runtime_core.hpp"

namespace po = boost::program_options;
namespace asio = boost::asio;
using namespace vesicle;

namespace {

int fail(const Error& error) {
  log::error("vesicle-gateway cannot go on", {{"error", error.message()}});
  return 1;
}

} // namespace

int main(int argc, char** argv) {
  ::umask(077);
  po::options_description options("options");
  options.add_options()("help,h", "show this help")(
      "config,c", po::value<std::string>(),
      "configuration file, as hostd's (messages/config.proto); the gateway reads listen, "
      "state_dir, the HTTP limits and the cluster section")(
      "listen,l", po::value<std::string>(),
      "address:port of the REST API (default 127.0.0.1:7070)")(
      "actor-listen", po::value<std::string>(),
      "address:port of the actor port nodes register at (default 127.0.0.1:7171); loopback or "
      "a private network only")("secret-file", po::value<std::string>(),
                                "the cluster secret's file (cluster.secret_file)")(
      "state-dir", po::value<std::string>(),
      "where the API keys file is (default /var/lib/vesicle)")(
      "new-key", "create another API key, print it, and exit (copy the keys file to the nodes)")(
      "tier", po::value<std::string>(), "the tier of the key --new-key creates")(
      "admin", "make the key --new-key creates an admin key")(
      "log-level", po::value<std::string>(),
      "debug, info, warn or error (default info)")("version", "print the version and exit");
  po::variables_map args;
  try {
    po::store(po::parse_command_line(argc, argv, options), args);
    po::notify(args);
  } catch (const po::error& e) {
    std::fprintf(stderr, "vesicle-gateway: %s (see --help)\n", e.what());
    return 2;
  }
  if (args.count("help")) {
    std::cout << "usage: vesicle-gateway [options]\n\n"
                 "The front of a vesicle cluster: serves the REST API and passes each call on to "
                 "the node that holds its sandbox.\n\n"
              << options << "\n";
    return 0;
  }
  if (args.count("version")) {
    std::printf("vesicle-gateway %s\n", hostd::kVersion);
    return 0;
  }
  hostd::ConfigOverrides overrides;
  if (args.count("listen")) overrides.listen = args["listen"].as<std::string>();
  if (args.count("state-dir")) overrides.state_dir = args["state-dir"].as<std::string>();
  if (args.count("log-level")) overrides.log_level = args["log-level"].as<std::string>();
  std::optional<std::filesystem::path> config_file;
  if (args.count("config")) config_file = args["config"].as<std::string>();
  auto config = hostd::load_config(config_file, overrides);
  if (!config) return fail(config.error());
  log::set_level(*log::parse_level(config->log_level()));
  auto& cluster = *config->mutable_cluster();
  if (args.count("actor-listen")) cluster.set_actor_listen(args["actor-listen"].as<std::string>());
  if (args.count("secret-file")) cluster.set_secret_file(args["secret-file"].as<std::string>());

  const hostd::KeyRequest key_request{args.count("new-key") > 0,
                                      args.count("tier") ? args["tier"].as<std::string>() : "",
                                      args.count("admin") > 0};
  auto keys =
      hostd::open_keys_at_start(config->state_dir(), key_request, config->default_key_tier());
  if (!keys) return fail(keys.error());
  if (keys->made) {
    std::fputs(keys->made_text.c_str(), stdout);
    std::fflush(stdout);
    if (args.count("new-key")) return 0;
  }
  if (auto checked = hostd::check_gateway_cluster_config(*config); !checked)
    return fail(checked.error());
  auto secret = hostd::read_cluster_secret(cluster.secret_file());
  if (!secret) return fail(secret.error());
  auto actor_address = hostd::parse_listen_address(cluster.actor_listen());
  if (!actor_address) return fail(actor_address.error());
  auto listen = hostd::parse_listen_address(config->listen());
  if (!listen) return fail(listen.error());

  // The io_context outlives the actor system: the gateway actor posts to
  // it until the system has stopped it.
  asio::io_context io(1);
  caf::actor_system_config actor_config;
  hostd::configure_actor_system(actor_config);
  hostd::configure_cluster_actor_system(actor_config);
  caf::actor_system system(actor_config);

  auto members = std::make_shared<hostd::Members>();
  const std::chrono::milliseconds heartbeat(cluster.heartbeat_ms());
  const std::chrono::milliseconds down_after(cluster.down_after_ms());
  // Nodes reconnect within a second or two of a gateway's start.
  members->set_settle(down_after + 2 * heartbeat);
  auto gateway = hostd::spawn_gateway_actor(
      system, {*secret, heartbeat, down_after, io.get_executor(), members});
  auto actor_port =
      system.middleman().publish(gateway, actor_address->port, actor_address->host.c_str(), true);
  if (!actor_port)
    return fail(make_error("publish the gateway actor", system.render(actor_port.error()),
                           cluster.actor_listen()));

  hostd::HttpLimits limits;
  limits.max_json_body = config->max_json_body_bytes();
  limits.request_timeout = std::chrono::seconds(config->request_timeout_s());
  limits.write_timeout = std::chrono::seconds(config->write_timeout_s());
  hostd::GatewayApi api(keys->store, *members, *config);
  hostd::HttpServer server(io.get_executor(), limits, config->max_connections(),
                           [&](hostd::Exchange& exchange) { return api.handle(exchange); });
  if (auto listening = server.listen(*listen); !listening) return fail(listening.error());

  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int signal) {
    if (ec) return;
    log::info("shutting down", {{"signal", signal}});
    server.stop_accepting();
    server.close_connections();
    io.stop();
  });
  auto endpoint = server.local_endpoint();
  std::printf("vesicle-gateway %s listening on http://%s:%u (actor port %s:%u)\n", hostd::kVersion,
              endpoint.address().to_string().c_str(), endpoint.port(), actor_address->host.c_str(),
              static_cast<unsigned>(*actor_port));
  std::fflush(stdout);
  io.run();
  caf::anon_send_exit(gateway, caf::exit_reason::user_shutdown);
  log::info("vesicle-gateway stopped");
  return 0;
}
