// Fork snapshots and their reference counts. At a fork the parent's RAM file
// and disk become a snapshot that its children (and the parent's own
// continuation) are restored from, copy-on-write; it is read-only from then
// on. Every VM restored from it holds it, and so does a later snapshot whose
// disk is an overlay on this one's; the last holder to go removes the files,
// after the VMs that mapped them are dead (whoever holds a VM destroys it
// before dropping its snapshot).
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>

#include "vmm/snapshot.hpp"

namespace vesicle::vmm {

class ForkSnapshot {
public:
  ForkSnapshot(std::string id, Snapshot snapshot, std::shared_ptr<ForkSnapshot> parent,
               std::shared_ptr<std::size_t> count);
  ForkSnapshot(const ForkSnapshot&) = delete;
  ForkSnapshot& operator=(const ForkSnapshot&) = delete;
  ~ForkSnapshot();

  const std::string& id() const { return id_; }
  const Snapshot& snapshot() const { return snapshot_; }

private:
  std::string id_;
  Snapshot snapshot_;
  std::shared_ptr<ForkSnapshot> parent_; // its disk backs this one's
  std::shared_ptr<std::size_t> count_;
};

// The snapshots of forks in progress, by id, and how many exist in all.
class ForkSnapshots {
public:
  // A new snapshot, findable by id until release(id).
  std::shared_ptr<ForkSnapshot> add(std::string id, Snapshot snapshot,
                                    std::shared_ptr<ForkSnapshot> parent);
  // The snapshot of a fork whose children are still being launched, or null.
  std::shared_ptr<ForkSnapshot> find(const std::string& id) const;
  // Every child is launched: from here on the snapshot lives exactly as long
  // as its holders.
  void release(const std::string& id) { launching_.erase(id); }
  void clear() { launching_.clear(); }
  // Snapshots that exist (held by a VM, or by a fork in progress).
  std::size_t count() const { return *count_; }

private:
  std::map<std::string, std::shared_ptr<ForkSnapshot>> launching_;
  std::shared_ptr<std::size_t> count_ = std::make_shared<std::size_t>(0);
};

} // namespace vesicle::vmm
