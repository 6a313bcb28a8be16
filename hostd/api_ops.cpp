// What exec, upload and download share: taking a lease on the VM, and
// turning a failed agent call into the right answer — above all noticing
// that the VM died, recording it, and saying so (410 sandbox_died).
#include "hostd/api.hpp"

#include <cerrno>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "actors/ask.hpp"

namespace vesicle::hostd {

namespace {

// How the VM's process ended, if it ends within `limit`. A broken agent
// channel is usually seen a moment before the process is reaped.
asio::awaitable<std::optional<std::string>> exit_within(std::shared_ptr<vmm::Vm> vm,
                                                        std::chrono::milliseconds limit) {
  if (!vm->running()) co_return co_await vm->wait_exit();
  struct Waiting {
    explicit Waiting(asio::any_io_executor executor) : timer(executor) {}
    asio::steady_timer timer;
    std::optional<std::string> how;
  };
  auto executor = co_await asio::this_coro::executor;
  auto waiting = std::make_shared<Waiting>(executor);
  waiting->timer.expires_after(limit);
  asio::co_spawn(
      executor,
      [vm, waiting]() -> asio::awaitable<void> {
        auto how = co_await vm->wait_exit();
        waiting->how = std::move(how);
        waiting->timer.cancel();
      },
      asio::detached);
  boost::system::error_code ignored;
  co_await waiting->timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  co_return waiting->how;
}

} // namespace

VmLease::~VmLease() {
  if (lease_ != 0 && registry_) caf::anon_send(registry_, end_op_atom::value, owner_, id_, lease_);
}

asio::awaitable<Result<VmLease>> Api::begin_op(const std::string& owner, const std::string& id) {
  auto lease = co_await ask<std::uint64_t>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                           begin_op_atom::value, owner, id);
  if (!lease) co_return to_error(lease.error());
  auto vm = ctx_.vms.find(id);
  VmLease held(ctx_.registry, owner, id, *lease, vm);
  if (!vm || !vm->running() || !vm->agent().connected())
    co_return co_await sandbox_died(owner, id, vm);
  co_return std::move(held);
}

asio::awaitable<Error> Api::sandbox_died(const std::string& owner, const std::string& id,
                                            std::shared_ptr<vmm::Vm> vm) {
  std::string how = "its VM is gone";
  if (vm) {
    auto exited = co_await exit_within(vm, std::chrono::seconds(3));
    how = exited ? *exited
                 : "the guest agent's channel closed while QEMU still ran (the agent or the "
                   "guest kernel failed); the VM was killed";
  }
  // Record the death before answering, so a GET right after this answer
  // already shows the sandbox dead.
  co_await ask<done_atom>(ctx_.system, ctx_.registry, ctx_.actor_timeout, vm_exited_atom::value,
                          owner, id, how);
  auto info = co_await ask<SandboxInfo>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                        lookup_atom::value, owner, id);
  std::string reason = info && !info->dead_reason.empty() ? info->dead_reason : how;
  co_return Error::of(ErrorKind::guest_died, "sandbox " + id + " died: " + reason +
                                   "; delete it and create a new one");
}

asio::awaitable<Error> Api::agent_failure(const VmLease& lease, const Error& error,
                                             const std::string& doing) {
  if (vmm::is_channel_closed(error) || !lease.vm().running() || !lease.vm().agent().connected())
    co_return co_await sandbox_died(lease.owner(), lease.id(), lease.vm_pointer());
  // The agent client gave the failure its kind where it arose (vmm's
  // failure_error); only the words depend on it here.
  auto message = doing + " failed: " + error.message();
  if (error.kind == ErrorKind::too_large) message += "; the sandbox's disk is full";
  co_return Error::of(error.kind, std::move(message), error.subject);
}

} // namespace vesicle::hostd
