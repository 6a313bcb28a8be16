// What exec, upload and download share: taking a lease on the VM, and
// turning a failed agent call into the right answer — above all noticing
// that the VM died, recording it, and saying so (410 sandbox_died).
#include "hostd/api.hpp"

#include <cerrno>

namespace vesicle::hostd {

asio::awaitable<ApiResult<VmLease>> Api::begin_op(const std::string& owner, const std::string& id) {
  auto lease = co_await ctx_.core.lease(owner, id);
  if (!lease) co_return api_error(lease.error(), ctx_.system);
  if (!lease->usable()) co_return co_await sandbox_died(owner, id, lease->vm_pointer());
  co_return std::move(*lease);
}

asio::awaitable<ApiError> Api::sandbox_died(const std::string& owner, const std::string& id,
                                            std::shared_ptr<vmm::Vm> vm) {
  auto reason = co_await ctx_.core.record_death(owner, id, std::move(vm));
  co_return ApiError::sandbox_died("sandbox " + id + " died: " + reason +
                                   "; delete it and create a new one");
}

asio::awaitable<ApiError> Api::agent_failure(const VmLease& lease, const Error& error,
                                             const std::string& doing) {
  if (vmm::is_channel_closed(error) || !lease.usable())
    co_return co_await sandbox_died(lease.owner(), lease.id(), lease.vm_pointer());
  auto message = doing + " failed: " + error.message();
  switch (error.errno_value) {
  case ENOENT:
    co_return ApiError::not_found(message);
  case EISDIR:
  case ENOTDIR:
  case ENXIO:
  case ENODEV:
  case EINVAL:
  case ENAMETOOLONG:
  case ELOOP:
  case EACCES:
  case EPERM:
  case EROFS:
  case EEXIST:
  case EBUSY:
    co_return ApiError::invalid_argument(message);
  case ENOSPC:
  case EDQUOT:
  case EFBIG:
    co_return ApiError::too_large(message + "; the sandbox's disk is full");
  default:
    break;
  }
  if (error.detail.find("not a regular file") != std::string::npos)
    co_return ApiError::invalid_argument(message);
  co_return ApiError::internal(message);
}

} // namespace vesicle::hostd
