// The runtime assembled: the VMs (VmHost, on an asio executor), the network
// (bridge actor), the warm pools and the registry actor, from one
// config::HostdConfig. hostd's Daemon puts the REST API on top of one; the
// embedding API (include/vesicle/runtime.hpp) wraps one for a program that
// wants sandboxes without HTTP. Both prepare the host and lease VMs the same
// way, through the functions here.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/expected.hpp>

#include "actors/sandbox/registry.hpp"
#include "actors/sandbox/vm_host.hpp"
#include "common/result.hpp"
#include "hostd/vm_lease.hpp"
#include "messages/config.pb.h"

namespace vesicle::hostd {

namespace asio = boost::asio;

// The VM settings a configuration implies, with how QEMUs are confined
// (hostd/confinement.hpp; null: not at all).
VmSettings vm_settings(const config::HostdConfig& config,
                       std::shared_ptr<const vmm::VmConfinement> confinement);

// The actor system settings the runtime wants: vesicle's message types,
// two scheduler threads with the sharing policy, no console logger.
void configure_actor_system(caf::actor_system_config& config);

// Creates `dir` (and its parents) readable by its owner only.
Result<void> make_private_dir(const std::filesystem::path& dir);

// What must hold before a runtime starts, done once per start: the state,
// runtime and Spaces directories exist, the guest images are readable,
// what a killed earlier run left (QEMU processes, VM directories, memory
// files, unfinished Spaces, processes running as VM uids, cgroup leaves) is
// reclaimed. Says on stderr what it reclaimed.
Result<void> prepare_host(const config::HostdConfig& config);

class RuntimeCore {
public:
  // `config` must have its defaults applied (load_config and apply_defaults
  // do). VmHost lives on `executor`, which must be single-threaded.
  RuntimeCore(asio::any_io_executor executor, caf::actor_system& system, vmm::Driver& driver,
              config::HostdConfig config);
  // Stops the actors it spawned (exit messages; see wait_for_actors).
  ~RuntimeCore();
  RuntimeCore(const RuntimeCore&) = delete;
  RuntimeCore& operator=(const RuntimeCore&) = delete;

  // Sets up the network (when configured), spawns the pools and the registry.
  Result<void> start();

  // Destroys every sandbox (or freezes the persistent ones into Spaces),
  // stops the pools, kills what is left. Run on the executor; safe to call
  // twice.
  asio::awaitable<void> shutdown();

  // Blocks until every actor it spawned has stopped, after telling them to
  // (for an embedder whose actor system outlives this core: the actors
  // refer to VmHost). Not on a CAF thread.
  void stop_actors_and_wait();

  // A lease for one operation on sandbox `id`'s VM. The registry's refusal
  // (not found, wrong state) comes back as its caf::error. The VM may have
  // died meanwhile: check VmLease::usable() and, if not, record_death().
  asio::awaitable<caf::expected<VmLease>> lease(const std::string& owner, const std::string& id);

  // The VM of a sandbox died (or its agent's channel broke): waits a little
  // for its process to end, has the registry record the sandbox dead, and
  // returns why it died, as GET will show it.
  asio::awaitable<std::string> record_death(const std::string& owner, const std::string& id,
                                            std::shared_ptr<vmm::Vm> vm);

  caf::actor_system& system() { return system_; }
  registry_actor registry() const { return registry_; }
  const std::vector<pool_actor>& pools() const { return pools_; }
  VmHost& vms() { return vms_; }
  const config::HostdConfig& config() const { return config_; }
  // How long a create, fork or resume may take before its caller gives up
  // (the boot timeout and a margin so the driver's error arrives first).
  caf::timespan create_timeout() const;
  // How long a short question to an actor may take.
  caf::timespan actor_timeout() const { return std::chrono::seconds(30); }

private:
  caf::actor_system& system_;
  config::HostdConfig config_;
  // Before vms_, which is built with it; start() refuses to run with an
  // error here rather than run QEMUs unconfined.
  Result<std::shared_ptr<const vmm::VmConfinement>> confinement_;
  VmHost vms_;
  registry_actor registry_;
  std::vector<pool_actor> pools_;
  net::bridge_actor bridge_; // null without a network section
  bool shut_down_ = false;

  Result<void> start_network();
};

} // namespace vesicle::hostd
