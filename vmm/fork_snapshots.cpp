#include "vmm/fork_snapshots.hpp"

#include <filesystem>
#include <system_error>

namespace vesicle::vmm {

ForkSnapshot::ForkSnapshot(std::string id, Snapshot snapshot, std::shared_ptr<ForkSnapshot> parent,
                           std::shared_ptr<std::size_t> count)
    : id_(std::move(id)), snapshot_(std::move(snapshot)), parent_(std::move(parent)),
      count_(std::move(count)) {
  ++*count_;
}

ForkSnapshot::~ForkSnapshot() {
  std::error_code ignored;
  std::filesystem::remove_all(snapshot_.dir, ignored);
  // The RAM is a memfd (Snapshot::memory), freed with its last holder.
  --*count_;
}

std::shared_ptr<ForkSnapshot> ForkSnapshots::add(std::string id, Snapshot snapshot,
                                                 std::shared_ptr<ForkSnapshot> parent) {
  auto made = std::make_shared<ForkSnapshot>(id, std::move(snapshot), std::move(parent), count_);
  launching_[std::move(id)] = made;
  return made;
}

std::shared_ptr<ForkSnapshot> ForkSnapshots::find(const std::string& id) const {
  auto found = launching_.find(id);
  return found == launching_.end() ? nullptr : found->second;
}

} // namespace vesicle::vmm
