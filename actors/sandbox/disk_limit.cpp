#include "actors/sandbox/disk_limit.hpp"

#include <system_error>

namespace vesicle {

std::uint32_t root_disk_mib(const std::filesystem::path& images_dir) {
  std::error_code ec;
  auto bytes = std::filesystem::file_size(images_dir / "rootfs.ext4", ec);
  if (ec) return 0;
  return static_cast<std::uint32_t>(bytes >> 20);
}

boost::asio::awaitable<Result<void>> limit_root_disk(vmm::Vm& vm, const std::string& id,
                                                     std::uint32_t disk_mib,
                                                     std::uint32_t root_mib) {
  if (root_mib == 0 || disk_mib >= root_mib) co_return Result<void>{};
  const std::uint64_t max_bytes = std::uint64_t{disk_mib} << 20;
  auto applied = co_await vm.agent().set_disk_limit(max_bytes);
  if (!applied)
    co_return std::move(applied).error().with_context(
        "limiting sandbox " + id + "'s disk to disk_mib " + std::to_string(disk_mib) +
        " (rebuild the guest images if the agent predates disk limits)");
  co_return Result<void>{};
}

} // namespace vesicle
