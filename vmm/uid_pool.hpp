// The uids jailed processes run as: one per live VM from a configured
// range, so two QEMUs can never signal, trace or open each other's files.
// The gid is the same number.
//
// Several hostds may share a host and a range (the test suites start many),
// so a uid is held by a lock the kernel keeps: an flock on a file named
// after it in a lock directory (/run/vesicle-uids by default), held through
// the lease's open descriptor. The kernel drops it when the holder dies,
// however it dies, so a crashed hostd's uids come free by themselves; what
// it left running under them is what sweep() kills.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <vector>

#include "common/result.hpp"
#include "common/unique_fd.hpp"

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
  UidLease(std::shared_ptr<State> state, uid_t id, UniqueFd lock)
      : state_(std::move(state)), id_(id), lock_(std::move(lock)) {}
  void release();

  std::shared_ptr<State> state_; // shared with the pool: a lease may outlive it
  uid_t id_ = 0;
  UniqueFd lock_; // the uid's lock file, flocked: closing it frees the uid
};

inline constexpr const char* kDefaultUidLockDir = "/run/vesicle-uids";

// Thread-safe (one mutex); hostd calls it from one actor anyway.
class UidPool {
public:
  // The range [first, first + count): non-empty, without 0, without -1 (the
  // "no change" id of setresuid), not wrapping. `lock_dir` is made (0700) if
  // missing; an existing one must be a directory owned by this user that
  // nobody else may write to (anyone who could create a lock file there could
  // hold uids or make two VMs share one).
  static Result<UidPool> create(uid_t first, uid_t count,
                                const std::filesystem::path& lock_dir = kDefaultUidLockDir);

  // A uid no lease of any pool over the same lock directory holds, searched
  // from a random point of the range (so hostds starting together do not
  // contend for the same few); a capacity error when all are held.
  Result<UidLease> acquire();

  // For a hostd starting (after a crash, or beside other hostds): for each
  // uid of the range that no live holder has locked, SIGKILLs every process
  // whose real, effective, saved or filesystem uid it is (a dead holder's
  // leftovers), waits up to a second until they are gone, and removes its
  // stale lock file. Processes under a uid that another pool (in this or
  // another process) holds are spared. Returns how many it killed.
  Result<int> sweep() const;

  uid_t first() const { return first_; }
  uid_t count() const { return count_; }
  std::size_t leased() const;

private:
  UidPool(uid_t first, uid_t count, UniqueFd lock_dir);
  uid_t first_;
  uid_t count_;
  std::shared_ptr<UidLease::State> state_;
};

} // namespace vesicle::vmm
