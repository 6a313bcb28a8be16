// The uids jailed processes run as: one per live VM from a configured
// range, so two QEMUs can never signal, trace or open each other's files.
// The gid is the same number.
#pragma once

#include <sys/types.h>

#include <memory>
#include <mutex>
#include <vector>

#include "common/result.hpp"

namespace vesicle::vmm {

class UidPool;

// A uid (and the gid of the same number) held until the lease is destroyed.
class UidLease {
public:
  UidLease(UidLease&& other) noexcept;
  UidLease& operator=(UidLease&& other) noexcept;
  UidLease(const UidLease&) = delete;
  UidLease& operator=(const UidLease&) = delete;
  ~UidLease(); // gives the uid back

  uid_t uid() const { return id_; }
  gid_t gid() const { return static_cast<gid_t>(id_); }

private:
  friend class UidPool;
  struct State;
  UidLease(std::shared_ptr<State> state, uid_t id) : state_(std::move(state)), id_(id) {}
  void release();

  std::shared_ptr<State> state_; // shared with the pool: a lease may outlive it
  uid_t id_ = 0;
};

// Thread-safe (one mutex); hostd calls it from one actor anyway.
class UidPool {
public:
  // The range [first, first + count): non-empty, without 0, without -1 (the
  // "no change" id of setresuid), not wrapping.
  static Result<UidPool> create(uid_t first, uid_t count);

  // A free uid (round robin); a capacity error when all are leased.
  Result<UidLease> acquire();

  // For a hostd starting after a crash: SIGKILLs every process whose real,
  // effective, saved or filesystem uid is in the range (they can only be
  // jailed processes a predecessor left) and waits, up to a second, until
  // they are gone. Returns how many it killed.
  Result<int> sweep() const;

  uid_t first() const { return first_; }
  uid_t count() const { return count_; }
  std::size_t leased() const;

private:
  UidPool(uid_t first, uid_t count);
  uid_t first_;
  uid_t count_;
  std::shared_ptr<UidLease::State> state_;
};

} // namespace vesicle::vmm
