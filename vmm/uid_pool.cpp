#include "vmm/uid_pool.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

namespace vesicle::vmm {

struct UidLease::State {
  std::mutex mutex;
  uid_t first = 0;
  UniqueFd lock_dir; // O_DIRECTORY: the lock files are opened relative to it
  std::filesystem::path lock_dir_path;
  std::vector<bool> in_use; // by this pool's leases (others' show as locked files)
  std::size_t leased = 0;
};

namespace {

// Locks `id`'s file in `dir` (made 0600 if missing). An empty descriptor
// when a live holder (any process, this one included) has it.
Result<UniqueFd> try_lock(int dir, uid_t id) {
  const std::string name = std::to_string(id);
  // A holder unlinks its file just before it lets go of the lock (so no
  // empty files pile up). A lock taken on a file that was unlinked between
  // our open and our flock is worth nothing (the next acquirer creates a new
  // file under the name), so it is checked that the name still leads to the
  // locked file, and tried again if not; each retry needs another holder's
  // whole release to interleave, so a few suffice.
  for (int attempt = 0; attempt < 16; ++attempt) {
    UniqueFd fd(::openat(dir, name.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd) return sys_error("open", "uid lock file " + name);
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) return UniqueFd{};
      return sys_error("flock", "uid lock file " + name);
    }
    struct stat held {
    }, named{};
    if (::fstat(fd.get(), &held) != 0) return sys_error("stat", "uid lock file " + name);
    if (::fstatat(dir, name.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 &&
        named.st_dev == held.st_dev && named.st_ino == held.st_ino) {
      return fd;
    }
  }
  return make_error("lock", "its lock file kept being replaced while it was locked", "uid " + name);
}

// Gives up a lock taken by try_lock: the file goes first, while it is still
// held, so nobody can be left holding a lock on a file no longer named.
void unlock(int dir, uid_t id, UniqueFd& fd) {
  if (!fd) return;
  ::unlinkat(dir, std::to_string(id).c_str(), 0);
  fd.reset();
}

} // namespace

UidLease::UidLease(UidLease&& other) noexcept
    : state_(std::move(other.state_)), id_(std::exchange(other.id_, 0)),
      lock_(std::move(other.lock_)) {}

UidLease& UidLease::operator=(UidLease&& other) noexcept {
  if (this != &other) {
    release();
    state_ = std::move(other.state_);
    id_ = std::exchange(other.id_, 0);
    lock_ = std::move(other.lock_);
  }
  return *this;
}

UidLease::~UidLease() {
  release();
}

void UidLease::release() {
  if (!state_) return;
  std::lock_guard lock(state_->mutex);
  unlock(state_->lock_dir.get(), id_, lock_);
  state_->in_use[id_ - state_->first] = false;
  --state_->leased;
  state_.reset();
}

UidPool::UidPool(uid_t first, uid_t count, UniqueFd lock_dir)
    : first_(first), count_(count), state_(std::make_shared<UidLease::State>()) {
  state_->first = first;
  state_->lock_dir = std::move(lock_dir);
  state_->in_use.assign(count, false);
}

Result<UidPool> UidPool::create(uid_t first, uid_t count, const std::filesystem::path& lock_dir) {
  const std::uint64_t end = std::uint64_t{first} + count;
  if (count == 0 || first == 0 || end > std::uint64_t{static_cast<uid_t>(-1)}) {
    return Error::of(ErrorKind::invalid_argument,
                     "the jail uid range must be non-empty and lie within [1, 4294967294]: got " +
                         std::to_string(first) + " + " + std::to_string(count),
                     "uid range");
  }
  // Over a million uids is a configuration mistake (and a large bitmap).
  if (count > (1u << 20)) {
    return Error::of(ErrorKind::invalid_argument,
                     "the jail uid range may hold at most 1048576 uids: got " +
                         std::to_string(count),
                     "uid range");
  }
  if (::mkdir(lock_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return sys_error("mkdir", lock_dir.string()).with_context("making the uid lock directory");
  }
  // O_NOFOLLOW: a symlink planted in its place is refused, not followed.
  UniqueFd dir(::open(lock_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  if (!dir) return sys_error("open", lock_dir.string()).with_context("the uid lock directory");
  struct stat st {};
  if (::fstat(dir.get(), &st) != 0) return sys_error("stat", lock_dir.string());
  if (st.st_uid != ::geteuid() || (st.st_mode & 022) != 0) {
    return Error::of(ErrorKind::invalid_argument,
                     "the uid lock directory must be owned by uid " + std::to_string(::geteuid()) +
                         " and writable by nobody else (it decides which VM gets which uid): "
                         "remove it or fix its owner and mode (0700)",
                     lock_dir.string());
  }
  UidPool pool(first, count, std::move(dir));
  pool.state_->lock_dir_path = lock_dir;
  return pool;
}

Result<UidLease> UidPool::acquire() {
  std::lock_guard lock(state_->mutex);
  std::uint32_t start = 0;
  if (::getrandom(&start, sizeof start, 0) != sizeof start) return sys_error("getrandom");
  for (std::size_t tried = 0; tried < count_; ++tried) {
    const std::size_t index = (start + tried) % count_;
    if (state_->in_use[index]) continue;
    const uid_t id = first_ + static_cast<uid_t>(index);
    auto held = try_lock(state_->lock_dir.get(), id);
    if (!held) return std::move(held).error().with_context("leasing a jail uid");
    if (!held.value()) continue; // another pool's
    state_->in_use[index] = true;
    ++state_->leased;
    return UidLease(state_, id, std::move(held.value()));
  }
  return Error::of(ErrorKind::capacity,
                   "all " + std::to_string(count_) +
                       " jail uids are in use: stop a sandbox or widen the uid range",
                   "uid range");
}

std::size_t UidPool::leased() const {
  std::lock_guard lock(state_->mutex);
  return state_->leased;
}

namespace {

// The four uids of /proc/<pid>/status ("Uid:\treal\teffective\tsaved\tfs");
// false for a process that is gone or already dead (a zombie: nothing to
// kill, only its parent's to reap).
bool uids_of(const std::string& pid, uid_t out[4]) {
  std::ifstream in("/proc/" + pid + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("State:", 0) == 0 && line.find_first_of("ZX", 6) != std::string::npos) {
      return false;
    }
    if (line.rfind("Uid:", 0) != 0) continue;
    std::istringstream fields(line.substr(4));
    return static_cast<bool>(fields >> out[0] >> out[1] >> out[2] >> out[3]);
  }
  return false;
}

bool runs_as(const std::string& pid, uid_t id) {
  uid_t ids[4];
  if (!uids_of(pid, ids)) return false;
  for (uid_t each : ids) {
    if (each == id) return true;
  }
  return false;
}

bool is_number(const std::string& text) {
  return !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
}

} // namespace

Result<int> UidPool::sweep() const {
  const std::uint64_t end = std::uint64_t{first_} + count_;
  auto in_range = [&](std::uint64_t id) { return id >= first_ && id < end; };
  // What may be left: processes running under a uid of the range, and lock
  // files (released ones are unlinked, so a file is a holder's, live or dead).
  std::map<uid_t, std::vector<std::string>> running;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string pid = entry.path().filename().string();
    uid_t ids[4];
    if (!is_number(pid) || !uids_of(pid, ids)) continue;
    for (uid_t id : std::set<uid_t>(ids, ids + 4)) {
      if (in_range(id)) running[id].push_back(pid);
    }
  }
  if (ec) return sys_error("list", "/proc", ec.value()).with_context("sweeping jail uids");
  for (const auto& entry : std::filesystem::directory_iterator(state_->lock_dir_path, ec)) {
    const std::string name = entry.path().filename().string();
    if (is_number(name) && name.size() <= 10 && in_range(std::stoull(name))) {
      running.try_emplace(static_cast<uid_t>(std::stoull(name)));
    }
  }
  if (ec) {
    return sys_error("list", state_->lock_dir_path.string(), ec.value())
        .with_context("sweeping jail uids");
  }

  // A uid whose lock we get has no live holder: whatever still runs under it
  // belongs to a dead one. We hold the lock until they are gone, so no pool
  // hands the uid out meanwhile.
  const int dir = state_->lock_dir.get();
  std::vector<std::pair<uid_t, UniqueFd>> locks;
  std::vector<UniqueFd> killed;
  for (const auto& [id, pids] : running) {
    auto held = try_lock(dir, id);
    if (!held) return std::move(held).error().with_context("sweeping jail uids");
    if (!held.value()) continue; // a live holder's
    for (const std::string& pid : pids) {
      // Checked again through a pidfd, so a pid reused meanwhile is spared.
      UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, std::atoi(pid.c_str()), 0)));
      if (!pidfd || !runs_as(pid, id)) continue;
      if (::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0) != 0) continue;
      killed.push_back(std::move(pidfd));
    }
    locks.emplace_back(id, std::move(held.value()));
  }
  // A pidfd polls readable once its process has exited.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (const auto& pidfd : killed) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd gone{pidfd.get(), POLLIN, 0};
    ::poll(&gone, 1, static_cast<int>(std::max<std::int64_t>(0, left.count())));
  }
  for (auto& [id, fd] : locks)
    unlock(dir, id, fd);
  return static_cast<int>(killed.size());
}

} // namespace vesicle::vmm
