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
#include <boost/asio/thread_pool.hpp>

#include "actors/net/bridge_actor.hpp"
#include "actors/sandbox/pool.hpp"
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
  // Template snapshots: templates_dir/<key>/ holds the manifest, device
  // state and disk; the RAM image is shm_dir/vesicle-template-<key>.mem.
  std::filesystem::path templates_dir = "/var/lib/vesicle/templates";
  // A pool restore waits this long before it starts: a refill follows every
  // take, and the restore's start-up (spawning QEMU and qemu-img) would
  // otherwise hold this thread while the create that took the VM is still
  // being answered.
  std::chrono::milliseconds pool_restore_delay{25};
};

// Where a sandbox's VM comes from. The registry fills it in from the pool's
// answer; VmHost falls back down the list when a step is not possible (the
// waiting VM died meanwhile, the template is not built yet).
struct LaunchPlan {
  std::string pool_vm_id;   // adopt this waiting pool VM
  std::string template_key; // else restore from this template
                            // else cold boot
};

class VmHost {
public:
  VmHost(boost::asio::any_io_executor executor, vmm::Driver& driver, VmSettings settings);
  VmHost(const VmHost&) = delete;
  VmHost& operator=(const VmHost&) = delete;

  // -- called from actors (any thread): the work is posted to the executor --

  // Gives sandbox `id` a VM as `plan` says. Answers `sandbox` with
  // vm_booted (QEMU's pid, and "pool", "restore" or "boot") or
  // vm_boot_failed (why), and later, whenever the VM's process exits for
  // any reason, with vm_exited (how).
  void launch(std::string id, SandboxSpec spec, LaunchPlan plan, sandbox_actor sandbox);

  // The name of a template's files: its name, size and a fingerprint of the
  // guest images it is made from.
  std::string template_key(const TemplateSpec& spec) const;

  // Checks the template's snapshot, or builds it when it is missing or
  // fails its check (which is logged). Answers `pool` with template_atom.
  void prepare_template(TemplateSpec spec, pool_actor pool);

  // Restores one VM for the pool from the template `key`. Answers `pool`
  // with vm_booted / vm_boot_failed (carrying `pool_vm_id`), and with
  // vm_exited if it dies while waiting.
  void restore_for_pool(std::string key, std::string pool_vm_id, pool_actor pool);

  // Destroys a waiting pool VM.
  void discard(std::string pool_vm_id);

  // Kills the VM of sandbox `id` if it runs and removes its files; answers
  // `sandbox` with vm_reclaimed (if it is set). Safe for an id without a VM.
  void reclaim(std::string id, sandbox_actor sandbox);

  // -- on the executor only ---------------------------------------------------

  // The running VM of a sandbox, or null. Holders keep it alive (but not
  // running) past a reclaim, so an exec in flight fails cleanly.
  std::shared_ptr<vmm::Vm> find(const std::string& id) const;
  std::size_t size() const { return vms_.size(); }
  std::size_t pool_size() const { return pool_vms_.size(); }
  // Destroys every VM now (hostd's shutdown, after the actors are done).
  void destroy_all();

  vmm::Accel accel() const { return driver_.accel(); }

  // The size of every VM's root disk in MiB (the base image's; 0 if it
  // cannot be read): the most disk_mib can give. A sandbox asking for less
  // gets its filesystem limited to disk_mib by the agent (SetDiskLimit)
  // before it is handed out. Any thread.
  std::uint32_t root_disk_mib() const;

  // With network leases every VM gets a slot (its egress from the spec)
  // before it boots, released after its process has exited. Without, VMs
  // have no network device. Set once, before the first boot and before
  // template_key() (templates with and without a NIC differ).
  void attach_network(std::shared_ptr<net::NetworkLeases> network) {
    network_ = std::move(network);
  }
  const boost::asio::any_io_executor& executor() const { return executor_; }

private:
  // Who hears of a VM's exit: its sandbox once it has one, else its pool.
  struct ExitTarget {
    sandbox_actor sandbox;
    pool_actor pool;
    std::string pool_vm_id;
  };
  struct PoolVm {
    std::shared_ptr<vmm::Vm> vm;
    std::shared_ptr<ExitTarget> target;
    std::shared_ptr<net::NetworkLease> network; // null without networking
  };

  boost::asio::awaitable<void> run_sandbox_vm(std::string id, SandboxSpec spec, LaunchPlan plan,
                                              sandbox_actor sandbox);
  boost::asio::awaitable<void> run_template(TemplateSpec spec, pool_actor pool);
  boost::asio::awaitable<Result<std::shared_ptr<const vmm::Snapshot>>>
  build_template(const TemplateSpec& spec);
  boost::asio::awaitable<void> run_pool_vm(std::string key, std::string pool_vm_id,
                                           pool_actor pool);
  boost::asio::awaitable<void> watch_exit(std::shared_ptr<vmm::Vm> vm,
                                          std::shared_ptr<ExitTarget> target);
  vmm::VmConfig vm_config(const std::string& id, std::uint32_t vcpus, std::uint32_t memory_mib,
                          const net::NetworkLease* network) const;
  // A slot with this egress, or null when hostd runs without networking.
  boost::asio::awaitable<Result<std::shared_ptr<net::NetworkLease>>>
  lease_network(bool egress, std::vector<std::string> allow);

  boost::asio::any_io_executor executor_;
  vmm::Driver& driver_;
  VmSettings settings_;
  std::string images_fingerprint_;
  std::map<std::string, std::shared_ptr<vmm::Vm>> vms_;
  std::map<std::string, PoolVm> pool_vms_;
  std::map<std::string, std::shared_ptr<const vmm::Snapshot>> templates_;
  // Runs the blocking template checks.
  boost::asio::thread_pool checker_{1};
  std::shared_ptr<net::NetworkLeases> network_;
};

} // namespace vesicle
