// hostd: the vesicle host daemon. Serves the REST API, runs each sandbox as
// a microVM. See --help.
#include <sys/stat.h>

#include <utility> // before Boost 1.74 asio, which needs std::exchange

#include <cstdio>
#include <filesystem>
#include <iostream>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/program_options.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

#include "actors/sandbox/space_store.hpp"
#include "common/log.hpp"
#include "vmm/vmm.hpp"
#include "hostd/config.hpp"
#include "hostd/daemon.hpp"
#include "hostd/sweep.hpp"
#include "messages/caf_types.hpp"

namespace po = boost::program_options;
namespace asio = boost::asio;
using namespace vesicle;

namespace {

void print_usage(const po::options_description& options) {
  std::cout << "usage: hostd [options]\n\n"
               "Serves the vesicle REST API and runs each sandbox as a microVM.\n"
               "On first start it creates an API key and prints it once.\n\n"
            << options << "\n";
}

Result<void> make_dir(const std::filesystem::path& dir, std::filesystem::perms perms) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error{ec.value(), "create directory", dir.string(), {}, {}};
  std::filesystem::permissions(dir, perms, ec);
  return {};
}

Result<void> check_images(const std::filesystem::path& dir) {
  for (const char* name : {"vmlinuz", "initrd.img", "rootfs.ext4"}) {
    auto path = dir / name;
    if (::access(path.c_str(), R_OK) != 0)
      return sys_error("read guest image", path.string())
          .with_context("checking images_dir; build the images with images/build.sh or point "
                        "--images-dir at a directory with vmlinuz, initrd.img and rootfs.ext4");
  }
  return {};
}

int fail(const Error& error) {
  log::error("hostd cannot go on", {{"error", error.message()}});
  return 1;
}

} // namespace

int main(int argc, char** argv) {
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
      "print-config", "print the effective configuration (text format) and exit")(
      "log-level", po::value<std::string>(),
      "the least severe events logged to stderr: debug, info, warn or error (default: the "
      "configuration's log_level, info)")("version", "print the version and exit");
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

  using std::filesystem::perms;
  if (auto made = make_dir(config->state_dir(), perms::owner_all); !made) return fail(made.error());
  auto keys = hostd::KeyStore::load(std::filesystem::path(config->state_dir()) / "keys");
  if (!keys) return fail(keys.error());
  if (args.count("new-key") || keys->empty()) {
    std::string tier;
    if (args.count("tier")) tier = args["tier"].as<std::string>();
    auto created = keys->add(tier);
    if (!created) return fail(created.error());
    // Printed once, to stdout only: the keys file keeps its hash alone.
    if (tier.empty()) tier = config->default_key_tier();
    std::printf("vesicle API key %s, tier %s (shown only this once; store it now):\n%s\n",
                created->id.c_str(), tier.c_str(), created->key.c_str());
    std::fflush(stdout);
    if (args.count("new-key")) return 0;
  }
  if (auto made = make_dir(config->runtime_dir(), perms::owner_all); !made)
    return fail(made.error());
  if (auto images = check_images(config->images_dir()); !images) return fail(images.error());
  auto swept = hostd::sweep_leftovers(config->runtime_dir(), config->shm_dir());
  if (!swept)
    return fail(swept.error().with_context("reclaiming what a previous hostd left in " +
                                           config->runtime_dir()));
  if (swept->processes + swept->directories + swept->memory_files > 0)
    log::info("reclaimed from a previous run", {{"qemu_processes", swept->processes},
                                                {"vm_directories", swept->directories},
                                                {"memory_files", swept->memory_files}});

  if (auto made = make_dir(config->spaces_dir(), perms::owner_all); !made)
    return fail(made.error());
  // A freeze interrupted by a crash left a .partial directory: never a
  // Space (a Space exists once its directory is renamed into place).
  if (auto partial = SpaceStore(config->spaces_dir()).sweep_partial(); partial > 0)
    log::warn("removed unfinished Spaces of an interrupted freeze", {{"count", partial}});

  caf::actor_system_config actor_config;
  register_caf_types(actor_config);
  // The actors only decide; the heavy lifting is on the asio thread.
  actor_config.set("scheduler.max-threads", 2);
  // The work-stealing default lets idle workers sleep up to 10 ms between
  // polls (its relaxed phase), a delay a create could pay on each of its
  // actor hops; the sharing policy wakes a worker for each message.
  actor_config.set("scheduler.policy", caf::atom("sharing"));
  actor_config.set("logger.console", caf::atom("none"));
  caf::actor_system system(actor_config);

  asio::io_context io(1);
  auto driver = vmm::make_qemu_driver(io.get_executor());
  hostd::Daemon daemon(io, system, *driver, *config, std::move(keys.value()));
  if (auto started = daemon.start(); !started) return fail(started.error());

  // The handler is in place before the address is printed: whoever waits
  // for that line may stop hostd right away.
  asio::signal_set signals(io, SIGINT, SIGTERM);
  asio::steady_timer deadline(io);
  signals.async_wait([&](const boost::system::error_code& ec, int signal) {
    if (ec) return;
    log::info("shutting down", {{"signal", signal}});
    asio::co_spawn(io, daemon.shutdown(), [&](std::exception_ptr) {
      // Whatever is still running (a handler waiting on a boot) must not
      // keep the process alive once the VMs are gone; a second lets the
      // last answers (503 shutting_down) go out.
      deadline.expires_after(std::chrono::seconds(1));
      deadline.async_wait([&](const boost::system::error_code&) { io.stop(); });
    });
  });
  auto endpoint = daemon.endpoint();
  std::printf("hostd %s listening on http://%s:%u (accel %s, max_sandboxes %u)\n", hostd::kVersion,
              endpoint.address().to_string().c_str(), endpoint.port(),
              vmm::to_string(driver->accel()), config->max_sandboxes());
  std::fflush(stdout);

  io.run();
  log::info("hostd stopped");
  return 0;
}
