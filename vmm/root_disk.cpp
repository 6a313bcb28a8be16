#include "vmm/root_disk.hpp"

#include <system_error>

#include "common/log.hpp"

namespace vesicle {

std::uint32_t root_disk_mib(const std::filesystem::path& images_dir) {
  std::error_code ec;
  auto bytes = std::filesystem::file_size(images_dir / "rootfs.ext4", ec);
  if (ec) return 0;
  return static_cast<std::uint32_t>((bytes + (1u << 20) - 1) >> 20);
}

namespace vmm {

std::vector<std::string> overlay_command(const std::string& backing, const std::string& format,
                                         const std::filesystem::path& overlay,
                                         std::uint32_t disk_mib) {
  std::vector<std::string> argv = {"qemu-img", "create", "-q", "-f",   "qcow2",
                                   "-b",       backing,  "-F", format, overlay.string()};
  if (disk_mib != 0) argv.push_back(std::to_string(disk_mib) + "M");
  return argv;
}

Result<std::uint64_t> disk_bytes_in(const json::Value& query_block, const std::string& device) {
  for (const auto& block : query_block.as_array()) {
    if (block["device"].as_string() != device) continue;
    const auto& size = block["inserted"]["image"]["virtual-size"];
    if (!size.is_int() || size.as_int() <= 0)
      return make_error("read the disk's size", "query-block shows no image size", device);
    return static_cast<std::uint64_t>(size.as_int());
  }
  return make_error("read the disk's size", "query-block lists no such device", device);
}

} // namespace vmm

boost::asio::awaitable<Result<void>> fit_root_disk(std::shared_ptr<vmm::Vm> vm,
                                                   const std::string& id, std::uint32_t disk_mib) {
  const std::uint64_t bytes = std::uint64_t{disk_mib} << 20;
  auto grown = co_await vm->grow_disk(bytes);
  if (!grown)
    co_return std::move(grown).error().with_context("giving sandbox " + id + " its disk_mib of " +
                                                    std::to_string(disk_mib));
  if (!*grown) co_return Result<void>{};
  std::weak_ptr<vmm::Vm> weak = vm;
  vmm::RefreshFailureHandler on_failure = [weak, id, disk_mib](const Error& error) {
    log::error("growing the sandbox's filesystem to its disk failed; its VM is destroyed",
               {{"sandbox", id}, {"disk_mib", disk_mib}, {"error", error.message()}});
    if (auto held = weak.lock()) held->destroy();
  };
  auto sent = co_await vm->agent().send_grow_root_fs(bytes, std::move(on_failure));
  if (!sent)
    co_return std::move(sent).error().with_context(
        "growing sandbox " + id + "'s filesystem to disk_mib " + std::to_string(disk_mib) +
        " (rebuild the guest images if the agent predates GrowRootFs)");
  co_return Result<void>{};
}

} // namespace vesicle
