#include "actors/sandbox/vm_host.hpp"

#include <exception>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <caf/send.hpp>

namespace vesicle {

namespace asio = boost::asio;

VmHost::VmHost(asio::any_io_executor executor, vmm::Driver& driver, VmSettings settings)
    : executor_(std::move(executor)), driver_(driver), settings_(std::move(settings)) {}

vmm::VmConfig VmHost::vm_config(const std::string& id, const SandboxSpec& spec) const {
  vmm::VmConfig config;
  config.id = id;
  config.images.kernel = settings_.images_dir / "vmlinuz";
  config.images.initrd = settings_.images_dir / "initrd.img";
  config.images.base_disk = settings_.images_dir / "rootfs.ext4";
  config.runtime_dir = settings_.runtime_dir;
  config.shm_dir = settings_.shm_dir;
  config.vcpus = spec.vcpus;
  config.memory_mib = spec.memory_mib;
  config.boot_timeout = settings_.boot_timeout;
  config.qemu_binary = settings_.qemu_binary;
  config.tcg_translation_cache_mib = settings_.tcg_translation_cache_mib;
  return config;
}

void VmHost::boot(std::string id, SandboxSpec spec, sandbox_actor sandbox) {
  asio::co_spawn(executor_, run_vm(std::move(id), std::move(spec), std::move(sandbox)),
                 asio::detached);
}

// One coroutine per VM: boot it, publish it, then sit on its exit so the
// actor hears about a death (kill -9, guest panic) as soon as it happens.
asio::awaitable<void> VmHost::run_vm(std::string id, SandboxSpec spec, sandbox_actor sandbox) {
  std::shared_ptr<vmm::Vm> vm;
  // Held until this coroutine ends: after the VM's process has exited (or
  // never started), so the slot's tap is free when it is released.
  std::unique_ptr<net::NetworkLease> network;
  auto config = vm_config(id, spec);
  if (network_) {
    auto leased = co_await network_->acquire(spec.egress, spec.egress_allow);
    if (!leased) {
      caf::anon_send(sandbox, vm_boot_failed_atom::value, leased.error().message());
      co_return;
    }
    network = std::move(leased.value());
    config.network = network->attachment();
  }
  try {
    auto booted = co_await driver_.boot(std::move(config));
    if (!booted) {
      caf::anon_send(sandbox, vm_boot_failed_atom::value, booted.error().message());
      co_return;
    }
    vm = std::move(booted.value());
  } catch (const std::exception& e) {
    caf::anon_send(sandbox, vm_boot_failed_atom::value,
                   std::string("the VMM driver threw: ") + e.what());
    co_return;
  }
  vms_[id] = vm;
  caf::anon_send(sandbox, vm_booted_atom::value, static_cast<std::int32_t>(vm->qemu_pid()));
  std::string how = co_await vm->wait_exit();
  caf::anon_send(sandbox, vm_exited_atom::value, std::move(how));
}

void VmHost::reclaim(std::string id, sandbox_actor sandbox) {
  asio::post(executor_, [this, id = std::move(id), sandbox = std::move(sandbox)] {
    if (auto found = vms_.find(id); found != vms_.end()) {
      auto vm = std::move(found->second);
      vms_.erase(found);
      vm->destroy();
    }
    if (sandbox) caf::anon_send(sandbox, vm_reclaimed_atom::value);
  });
}

std::shared_ptr<vmm::Vm> VmHost::find(const std::string& id) const {
  auto found = vms_.find(id);
  return found == vms_.end() ? nullptr : found->second;
}

void VmHost::destroy_all() {
  auto vms = std::move(vms_);
  vms_.clear();
  for (auto& [id, vm] : vms)
    vm->destroy();
}

} // namespace vesicle
