// hostd: the vesicle host daemon. Serves the REST API, runs each sandbox as
// a microVM. See --help.
#include <utility> // before Boost 1.74 asio, which needs std::exchange

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/program_options.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/send.hpp>

#include "common/log.hpp"
#include "hostd/api_error.hpp"
#include "hostd/cluster_node.hpp"
#include "hostd/config.hpp"
#include "hostd/daemon.hpp"
#include "hostd/runtime_core.hpp"
#include "vmm/vmm.hpp"

namespace po = boost::program_options;
namespace asio = boost::asio;
using namespace vesicle;

namespace {

void print_usage(const po::options_description& options) {
  std::cout << "usage: hostd [options]\n\n"
               "Serves the vesicle REST API and runs each sandbox as a microVM.\n"
               "Make the first API key with hostd --new-key (it is printed once, on your\n"
               "terminal); a first start without any key writes one to\n"
               "<state-dir>/first-key (mode 0600) instead, never to the log.\n"
               "SIGHUP reloads the keys file (so does POST /v1/admin/keys/reload).\n\n"
            << options << "\n";
}

// A first start with no key: hostd runs as a service whose stdout is its
// log, so the key goes to a file only root can read, made new (a file left
// by an earlier first start names a key no longer in the keys file), and
// the log names the file, never the key.
Result<std::filesystem::path> write_first_key(const std::filesystem::path& state_dir,
                                              const std::string& text) {
  auto path = state_dir / "first-key";
  ::unlink(path.c_str());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return sys_error("create", path.string());
  std::string_view rest = text;
  while (!rest.empty()) {
    auto n = ::write(fd, rest.data(), rest.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      auto error = sys_error("write", path.string());
      ::close(fd);
      ::unlink(path.c_str());
      return error;
    }
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
  ::fsync(fd);
  ::close(fd);
  return path;
}

int fail(const Error& error) {
  log::error("hostd cannot go on", {{"error", error.message()}});
  return 1;
}

// Out of memory, the kernel should end a sandbox's QEMU (whose score is
// +500, vmm/qemu.cpp), not hostd: with hostd gone, every sandbox is out of
// reach. -500, not -1000: a hostd that itself leaks must stay killable.
// A lower score already set (systemd's OOMScoreAdjust=) is kept.
void shield_from_oom_killer() {
  constexpr int kHostdOomScoreAdj = -500;
  const char* path = "/proc/self/oom_score_adj";
  int current = 0;
  if (std::ifstream in(path); !(in >> current)) return;
  if (current <= kHostdOomScoreAdj) return;
  std::ofstream out(path);
  out << kHostdOomScoreAdj << std::flush;
  if (!out)
    log::warn("could not lower hostd's OOM score (CAP_SYS_RESOURCE is needed): when memory runs "
              "out, the kernel may end hostd and with it every sandbox",
              {{"oom_score_adj", current}});
}

// Every sandbox costs hostd file descriptors (its agent channel, and two
// for each connection its egress proxy holds), so the usual soft limit of
// 1024 runs out after a few sandboxes. Raise it to the hard limit, and the
// hard limit to 65536 (at most nr_open) when we may; say when
// the network section's budget does not fit.
void raise_fd_limit(const config::HostdConfig& config) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  rlim_t ceiling = 65536; // enough for the budget below, not so many that a child
                          // closing every possible fd at start crawls
  if (std::ifstream nr_open("/proc/sys/fs/nr_open"); nr_open) {
    rlim_t value = 0;
    if (nr_open >> value && value < ceiling) ceiling = value;
  }
  const rlim_t before = limit.rlim_cur;
  rlimit wanted{std::max(limit.rlim_max, ceiling), std::max(limit.rlim_max, ceiling)};
  if (::setrlimit(RLIMIT_NOFILE, &wanted) != 0) {
    limit.rlim_cur = limit.rlim_max; // no CAP_SYS_RESOURCE: the hard limit it is
    (void)::setrlimit(RLIMIT_NOFILE, &limit);
  }
  (void)::getrlimit(RLIMIT_NOFILE, &limit);
  if (limit.rlim_cur != before) {
    log::info("raised the open file limit", {{"from", static_cast<uint64_t>(before)},
                                             {"to", static_cast<uint64_t>(limit.rlim_cur)}});
  }
  if (config.has_network()) {
    // Per slot: the proxy's connections at two fds each, plus a few of
    // its own; then hostd's own (API clients, files, VM channels).
    const uint64_t budget = uint64_t{config.network().max_slots()} *
                                (2 * config.network().proxy_max_connections() + 8) +
                            4096;
    if (budget > limit.rlim_cur) {
      log::warn("the open file limit is below the network budget; a busy host may refuse "
                "connections: raise the hard RLIMIT_NOFILE or lower network.max_slots or "
                "network.proxy_max_connections",
                {{"limit", static_cast<uint64_t>(limit.rlim_cur)}, {"budget", budget}});
    }
  }
}

asio::awaitable<void> reload_keys_on_hangup(hostd::Daemon& daemon) {
  auto reloaded = co_await daemon.reload_keys();
  if (!reloaded)
    log::error("SIGHUP: the keys file was not reloaded; the keys stay as they were",
               {{"error", reloaded.error().message()}});
}

} // namespace

int main(int argc, char** argv) {
  // Everything hostd creates (keys, Spaces, VM files, memory images) is
  // private unless a step opens it up on purpose: a file another user could
  // read may hold a sandbox's memory.
  ::umask(077);
  po::options_description options("options");
  options.add_options()("help,h", "show this help")(
      "config,c", po::value<std::string>(),
      "configuration file: protobuf text format, or JSON if it ends in .json "
      "(messages/config.proto documents every field)")(
      "listen,l", po::value<std::string>(), "address:port to serve on (default 127.0.0.1:7070)")(
      "state-dir", po::value<std::string>(), "state directory (default /var/lib/vesicle)")(
      "images-dir", po::value<std::string>(),
      "guest images directory (default <state-dir>/images)")(
      "new-key", "create another API key, print it, and exit")(
      "tier", po::value<std::string>(),
      "the tier of the key --new-key (or the first start) creates: free, pro, scale or "
      "enterprise (default: the configuration's default_key_tier)")(
      "admin", "make the key --new-key creates an admin key: it may also use the operator's page "
               "(/ui) and /v1/admin, which see and end every key's sandboxes")(
      "print-config", "print the effective configuration (text format) and exit")(
      "log-level", po::value<std::string>(),
      "the least severe events logged to stderr: debug, info, warn or error (default: the "
      "configuration's log_level, info)")("version", "print the version and exit")(
      "error-table",
      "print the error kinds with their HTTP status, API code and SDK exception (JSON lines) "
      "and exit");
  po::variables_map args;
  try {
    po::store(po::parse_command_line(argc, argv, options), args);
    po::notify(args);
  } catch (const po::error& e) {
    // Answers to the command line are plain text, not log events.
    std::fprintf(stderr, "hostd: %s (see hostd --help)\n", e.what());
    return 2;
  }
  hostd::ConfigOverrides overrides;
  if (args.count("log-level")) {
    overrides.log_level = args["log-level"].as<std::string>();
    if (!log::parse_level(*overrides.log_level)) {
      std::fprintf(stderr, "hostd: unknown --log-level \"%s\": use %s\n",
                   overrides.log_level->c_str(), log::kLevelNames);
      return 1;
    }
  }
  if (args.count("help")) {
    print_usage(options);
    return 0;
  }
  if (args.count("version")) {
    std::printf("hostd %s\n", hostd::kVersion);
    return 0;
  }

  if (args.count("error-table")) {
    // For the SDKs' tests: every kind as the REST API answers it.
    for (const auto& kind : error_kinds())
      std::cout << hostd::error_table_row(kind) << "\n";
    return 0;
  }

  std::optional<std::filesystem::path> config_file;
  if (args.count("config")) config_file = args["config"].as<std::string>();
  if (args.count("listen")) overrides.listen = args["listen"].as<std::string>();
  if (args.count("state-dir")) overrides.state_dir = args["state-dir"].as<std::string>();
  if (args.count("images-dir")) overrides.images_dir = args["images-dir"].as<std::string>();
  auto config = hostd::load_config(config_file, overrides);
  if (!config) return fail(config.error());
  // validate() checked the name (--log-level's, or else the file's).
  log::set_level(*log::parse_level(config->log_level()));
  if (args.count("print-config")) {
    std::cout << config->DebugString();
    return 0;
  }

  const hostd::KeyRequest key_request{args.count("new-key") > 0,
                                      args.count("tier") ? args["tier"].as<std::string>() : "",
                                      args.count("admin") > 0};
  auto keys =
      hostd::open_keys_at_start(config->state_dir(), key_request, config->default_key_tier());
  if (!keys) return fail(keys.error());
  if (keys->made) {
    const auto& text = keys->made_text;
    if (args.count("new-key")) {
      // Asked for on a terminal (or by install.sh): printed once, to stdout
      // only; the keys file keeps its hash alone.
      std::fputs(text.c_str(), stdout);
      std::fflush(stdout);
      return 0;
    }
    auto written = write_first_key(config->state_dir(), text);
    if (!written) return fail(written.error().with_context("saving the first API key"));
    log::warn("no API keys yet: made one and wrote it to a file only root can read; read it, "
              "store it and delete the file (hostd --new-key makes more)",
              {{"file", written->string()}, {"key", keys->made->id}});
  }
  raise_fd_limit(*config);
  shield_from_oom_killer();
  if (auto prepared = hostd::prepare_host(*config); !prepared) return fail(prepared.error());

  caf::actor_system_config actor_config;
  hostd::configure_actor_system(actor_config);
  // Cluster mode (docs/cluster.md): a node of a cluster behind gateways.
  std::string cluster_secret;
  if (!config->cluster().node_name().empty()) {
    auto secret = hostd::prepare_cluster_node(*config, actor_config);
    if (!secret) return fail(secret.error());
    cluster_secret = std::move(*secret);
  }
  caf::actor_system system(actor_config);

  asio::io_context io(1);
  auto driver = vmm::make_qemu_driver(io.get_executor());
  hostd::Daemon daemon(io, system, *driver, *config, std::move(keys->store));
  if (auto started = daemon.start(); !started) return fail(started.error());

  // The handler is in place before the address is printed: whoever waits
  // for that line may stop hostd right away.
  // SIGHUP reloads the keys file; sandboxes run on (Api::reload_keys).
  asio::signal_set hangup(io, SIGHUP);
  std::function<void()> await_hangup = [&] {
    hangup.async_wait([&](const boost::system::error_code& ec, int) {
      if (ec) return;
      asio::co_spawn(io, reload_keys_on_hangup(daemon), asio::detached);
      await_hangup();
    });
  };
  await_hangup();
  asio::signal_set signals(io, SIGINT, SIGTERM);
  asio::steady_timer deadline(io);
  signals.async_wait([&](const boost::system::error_code& ec, int signal) {
    if (ec) return;
    log::info("shutting down", {{"signal", signal}});
    hangup.cancel();
    asio::co_spawn(io, daemon.shutdown(), [&](std::exception_ptr) {
      // Whatever is still running (a handler waiting on a boot) must not
      // keep the process alive once the VMs are gone; a second lets the
      // last answers (503 shutting_down) go out.
      deadline.expires_after(std::chrono::seconds(1));
      deadline.async_wait([&](const boost::system::error_code&) { io.stop(); });
    });
  });
  auto endpoint = daemon.endpoint();
  std::vector<caf::actor> cluster_links;
  if (!cluster_secret.empty())
    cluster_links = hostd::start_cluster_node(system, *config, cluster_secret, endpoint,
                                              daemon.registry(), daemon.pools());
  std::printf("hostd %s listening on http://%s:%u (accel %s, max_sandboxes %u)\n", hostd::kVersion,
              endpoint.address().to_string().c_str(), endpoint.port(),
              vmm::to_string(driver->accel()), config->max_sandboxes());
  std::fflush(stdout);

  io.run();
  // The links run until told to stop, and the actor system waits for every
  // actor before it goes.
  for (const auto& link : cluster_links)
    caf::anon_send_exit(link, caf::exit_reason::user_shutdown);
  log::info("hostd stopped");
  return 0;
}
