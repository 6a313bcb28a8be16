// What exec, upload and download share: taking a lease on the VM, and
// turning a failed agent call into the right answer — above all noticing
// that the VM died, recording it, and saying so (410 sandbox_died).
#include "hostd/api.hpp"

#include <cerrno>

namespace vesicle::hostd {

asio::awaitable<Result<VmLease>> Api::begin_op(const std::string& owner, const std::string& id) {
  auto lease = co_await ctx_.core.lease(owner, id);
  if (!lease) co_return to_error(lease.error());
  if (!lease->usable()) co_return co_await sandbox_died(owner, id, lease->vm_pointer());
  co_return std::move(*lease);
}

asio::awaitable<Error> Api::sandbox_died(const std::string& owner, const std::string& id,
                                         std::shared_ptr<vmm::Vm> vm) {
  // A guest that broke the protocol was disconnected by hostd: the error
  // says so by its kind, not only in words.
  auto kind = ErrorKind::guest_died;
  if (vm) {
    auto closed = vm->agent().closed_reason();
    if (closed && closed->kind == ErrorKind::guest_protocol_violation) kind = closed->kind;
  }
  auto reason = co_await ctx_.core.record_death(owner, id, std::move(vm));
  co_return Error::of(kind,
                      "sandbox " + id + " died: " + reason + "; delete it and create a new one");
}

asio::awaitable<Error> Api::agent_failure(const VmLease& lease, const Error& error,
                                          const std::string& doing) {
  if (vmm::is_channel_closed(error) || !lease.usable()) {
    auto died = co_await sandbox_died(lease.owner(), lease.id(), lease.vm_pointer());
    // A call that ran out of time says so; its message says the sandbox is
    // ended.
    if (error.kind != ErrorKind::timeout) co_return died;
  }
  // The agent client gave the failure its kind where it arose (vmm's
  // failure_error, a host-side deadline); only the words depend on it here.
  auto message = doing + " failed: " + error.message();
  if (error.kind == ErrorKind::too_large) message += "; the sandbox's disk is full";
  co_return Error::of(error.kind, std::move(message), error.subject);
}

} // namespace vesicle::hostd
