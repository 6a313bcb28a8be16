// The right to run one operation on a sandbox's VM: one entry through the
// sandbox's gate (actors/sandbox/op_gate.hpp), taken there directly while
// the sandbox is ready, else through the registry (which waits out a fork
// or says why not), and left when the lease goes out of scope. The REST
// handlers and the embedding API take one around every exec, upload and
// download.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "actors/sandbox/op_gate.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::hostd {

class VmLease {
public:
  // `gate` entered for this lease (null: nothing to leave).
  VmLease(std::shared_ptr<OpGate> gate, std::string owner, std::string id,
          std::shared_ptr<vmm::Vm> vm)
      : gate_(std::move(gate)), owner_(std::move(owner)), id_(std::move(id)), vm_(std::move(vm)) {}
  // A moved-from lease holds no gate: only the last owner leaves it.
  VmLease(VmLease&& other) noexcept = default;
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
  std::shared_ptr<OpGate> gate_;
  std::string owner_;
  std::string id_;
  std::shared_ptr<vmm::Vm> vm_;
};

} // namespace vesicle::hostd
