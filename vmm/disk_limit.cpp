#include "vmm/disk_limit.hpp"

#include <system_error>

#include "common/log.hpp"

namespace vesicle {

std::uint32_t root_disk_mib(const std::filesystem::path& images_dir) {
  std::error_code ec;
  auto bytes = std::filesystem::file_size(images_dir / "rootfs.ext4", ec);
  if (ec) return 0;
  return static_cast<std::uint32_t>(bytes >> 20);
}

boost::asio::awaitable<Result<void>> limit_root_disk(std::shared_ptr<vmm::Vm> vm,
                                                     const std::string& id, std::uint32_t disk_mib,
                                                     std::uint32_t root_mib) {
  if (root_mib == 0 || disk_mib >= root_mib) co_return Result<void>{};
  const std::uint64_t max_bytes = std::uint64_t{disk_mib} << 20;
  std::weak_ptr<vmm::Vm> weak = vm;
  vmm::RefreshFailureHandler on_failure = [weak, id, disk_mib](const Error& error) {
    log::error("limiting the sandbox's disk failed; its VM is destroyed",
               {{"sandbox", id}, {"disk_mib", disk_mib}, {"error", error.message()}});
    if (auto held = weak.lock()) held->destroy();
  };
  auto sent = co_await vm->agent().send_disk_limit(max_bytes, std::move(on_failure));
  if (!sent)
    co_return std::move(sent).error().with_context(
        "limiting sandbox " + id + "'s disk to disk_mib " + std::to_string(disk_mib) +
        " (rebuild the guest images if the agent predates disk limits)");
  co_return Result<void>{};
}

} // namespace vesicle
