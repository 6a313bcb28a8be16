// The right to run one operation on a sandbox's VM: taken from the sandbox
// actor through the registry (which refuses it unless the sandbox is ready)
// and handed back when the lease goes out of scope. The REST handlers and
// the embedding API take one around every exec, upload and download.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "actors/sandbox/registry.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::hostd {

class VmLease {
public:
  VmLease(registry_actor registry, std::string owner, std::string id, std::uint64_t lease,
          std::shared_ptr<vmm::Vm> vm)
      : registry_(std::move(registry)), owner_(std::move(owner)), id_(std::move(id)), lease_(lease),
        vm_(std::move(vm)) {}
  VmLease(VmLease&& other) noexcept
      : registry_(std::move(other.registry_)), owner_(std::move(other.owner_)),
        id_(std::move(other.id_)), lease_(std::exchange(other.lease_, 0)),
        vm_(std::move(other.vm_)) {}
  VmLease(const VmLease&) = delete;
  VmLease& operator=(const VmLease&) = delete;
  VmLease& operator=(VmLease&&) = delete;
  ~VmLease();

  // False when the VM is gone, its process ended or its agent's channel
  // broke: the operation cannot run and the sandbox is dead.
  bool usable() const { return vm_ && vm_->running() && vm_->agent().connected(); }

  vmm::Vm& vm() const { return *vm_; }
  const std::shared_ptr<vmm::Vm>& vm_pointer() const { return vm_; }
  const std::string& owner() const { return owner_; }
  const std::string& id() const { return id_; }

private:
  registry_actor registry_;
  std::string owner_;
  std::string id_;
  std::uint64_t lease_ = 0;
  std::shared_ptr<vmm::Vm> vm_;
};

} // namespace vesicle::hostd
