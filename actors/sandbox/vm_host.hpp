// VmHost: the asio side of the sandboxes. It owns every VM (the driver's Vm
// objects and their agent clients live on one asio executor) and does the
// work the sandbox actors must not do on CAF threads: booting, watching for
// the VM's exit, destroying. Results go back to the actor as messages.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "actors/net/bridge_actor.hpp"
#include "actors/sandbox/sandbox.hpp"
#include "actors/vmm/vmm.hpp"
#include "messages/caf_types.hpp"

namespace vesicle {

// What every VM shares; the per-sandbox part comes from its SandboxSpec.
struct VmSettings {
  std::filesystem::path images_dir;
  std::filesystem::path runtime_dir = "/run/vesicle";
  std::filesystem::path shm_dir = "/dev/shm";
  std::chrono::milliseconds boot_timeout{90'000};
  std::string qemu_binary = "qemu-system-x86_64";
  unsigned tcg_translation_cache_mib = 64;
};

class VmHost {
public:
  VmHost(boost::asio::any_io_executor executor, vmm::Driver& driver, VmSettings settings);
  VmHost(const VmHost&) = delete;
  VmHost& operator=(const VmHost&) = delete;

  // -- called from actors (any thread): the work is posted to the executor --

  // Boots the VM of sandbox `id`. Answers `sandbox` with vm_booted (QEMU's
  // pid) or vm_boot_failed (why), and later, whenever the VM's process
  // exits for any reason, with vm_exited (how).
  void boot(std::string id, SandboxSpec spec, sandbox_actor sandbox);

  // Kills the VM of sandbox `id` if it runs and removes its files; answers
  // `sandbox` with vm_reclaimed (if it is set). Safe for an id without a VM.
  void reclaim(std::string id, sandbox_actor sandbox);

  // -- on the executor only ---------------------------------------------------

  // The running VM of a sandbox, or null. Holders keep it alive (but not
  // running) past a reclaim, so an exec in flight fails cleanly.
  std::shared_ptr<vmm::Vm> find(const std::string& id) const;
  std::size_t size() const { return vms_.size(); }
  // Destroys every VM now (hostd's shutdown, after the actors are done).
  void destroy_all();

  vmm::Accel accel() const { return driver_.accel(); }

  // With network leases every VM gets a slot (its egress from the spec)
  // before it boots, released after its process has exited. Without, VMs
  // have no network device. Set once, before the first boot.
  void attach_network(std::shared_ptr<net::NetworkLeases> network) {
    network_ = std::move(network);
  }
  const boost::asio::any_io_executor& executor() const { return executor_; }

private:
  boost::asio::awaitable<void> run_vm(std::string id, SandboxSpec spec, sandbox_actor sandbox);
  vmm::VmConfig vm_config(const std::string& id, const SandboxSpec& spec) const;

  boost::asio::any_io_executor executor_;
  vmm::Driver& driver_;
  VmSettings settings_;
  std::map<std::string, std::shared_ptr<vmm::Vm>> vms_;
  std::shared_ptr<net::NetworkLeases> network_;
};

} // namespace vesicle
