#include "vmm/root_disk.hpp"

#include <system_error>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/this_coro.hpp>

#include "common/log.hpp"

namespace vesicle {

std::uint32_t root_disk_mib(const std::filesystem::path& images_dir) {
  std::error_code ec;
  auto bytes = std::filesystem::file_size(images_dir / "rootfs.ext4", ec);
  if (ec) return 0;
  return static_cast<std::uint32_t>((bytes + (1u << 20) - 1) >> 20);
}

namespace vmm {

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
  std::weak_ptr<vmm::Vm> weak = vm;
  auto give_up = [weak, id, disk_mib](const char* what, const Error& error) {
    auto held = weak.lock();
    if (!held || !held->running()) return; // reclaimed meanwhile: nothing to say
    log::error(what, {{"sandbox", id}, {"disk_mib", disk_mib}, {"error", error.message()}});
    held->destroy();
  };
  // The agent's request first: it is in the channel before the create
  // answers, so every later request waits for the grown filesystem.
  vmm::RefreshFailureHandler on_failure = [give_up](const Error& error) {
    give_up("growing the sandbox's filesystem to its disk failed; its VM is destroyed", error);
  };
  auto sent = co_await vm->agent().send_grow_root_fs(bytes, std::move(on_failure));
  if (!sent)
    co_return std::move(sent).error().with_context(
        "growing sandbox " + id + "'s filesystem to disk_mib " + std::to_string(disk_mib) +
        " (rebuild the guest images if the agent predates GrowRootFs)");
  // Then the disk, without holding up the create: block_resize makes
  // qcow2 write (and flush) a larger L1 table, tens of ms on a busy disk.
  auto grow = [vm, bytes, give_up]() mutable -> boost::asio::awaitable<void> {
    auto grown = co_await vm->grow_disk(bytes);
    vm.reset();
    if (!grown) give_up("growing the sandbox's disk failed; its VM is destroyed", grown.error());
  };
  boost::asio::co_spawn(co_await boost::asio::this_coro::executor, std::move(grow),
                        boost::asio::detached);
  co_return Result<void>{};
}

} // namespace vesicle
