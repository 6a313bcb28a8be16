#include "vmm/disk_rebase.hpp"

#include "vmm/process.hpp"
#include "vmm/snapshot.hpp"

namespace vesicle::vmm {

namespace fs = std::filesystem;

boost::asio::awaitable<Result<bool>> rebase_onto(boost::asio::any_io_executor executor,
                                                 const fs::path& disk, const fs::path& base) {
  auto backing = snapshot::qcow2_backing_file(disk);
  if (!backing) co_return std::move(backing).error();
  if (backing->empty() || fs::absolute(*backing) == fs::absolute(base)) co_return false;
  const fs::path log = disk.parent_path() / "rebase.log";
  detail::SpawnOptions rebase;
  rebase.argv = {"qemu-img", "rebase",      "-q", "-f",  "qcow2",
                 "-b",       base.string(), "-F", "raw", disk.string()};
  rebase.output = log;
  auto rebased = co_await detail::run_helper(std::move(executor), std::move(rebase));
  if (!rebased)
    co_return std::move(rebased).error().with_context("rebasing " + disk.string() + " onto " +
                                                      base.string());
  std::error_code ignored;
  fs::remove(log, ignored);
  co_return true;
}

} // namespace vesicle::vmm
