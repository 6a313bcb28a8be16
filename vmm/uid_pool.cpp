#include "vmm/uid_pool.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "common/unique_fd.hpp"

namespace vesicle::vmm {

struct UidLease::State {
  std::mutex mutex;
  uid_t first = 0;
  std::vector<bool> in_use;
  std::size_t next = 0; // where the search for a free uid starts
  std::size_t leased = 0;
};

UidLease::UidLease(UidLease&& other) noexcept
    : state_(std::move(other.state_)), id_(std::exchange(other.id_, 0)) {}

UidLease& UidLease::operator=(UidLease&& other) noexcept {
  if (this != &other) {
    release();
    state_ = std::move(other.state_);
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

UidLease::~UidLease() {
  release();
}

void UidLease::release() {
  if (!state_) return;
  std::lock_guard lock(state_->mutex);
  state_->in_use[id_ - state_->first] = false;
  --state_->leased;
  state_.reset();
}

UidPool::UidPool(uid_t first, uid_t count)
    : first_(first), count_(count), state_(std::make_shared<UidLease::State>()) {
  state_->first = first;
  state_->in_use.assign(count, false);
}

Result<UidPool> UidPool::create(uid_t first, uid_t count) {
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
  return UidPool(first, count);
}

Result<UidLease> UidPool::acquire() {
  std::lock_guard lock(state_->mutex);
  // Round robin rather than the lowest free uid, so a uid just given back
  // (whose process may still be dying) is the last to be handed out again.
  for (std::size_t tried = 0; tried < count_; ++tried) {
    const std::size_t index = (state_->next + tried) % count_;
    if (state_->in_use[index]) continue;
    state_->in_use[index] = true;
    state_->next = (index + 1) % count_;
    ++state_->leased;
    return UidLease(state_, first_ + static_cast<uid_t>(index));
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

// The four uids of /proc/<pid>/status ("Uid:\treal\teffective\tsaved\tfs").
bool uids_of(const std::string& pid, uid_t out[4]) {
  std::ifstream in("/proc/" + pid + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Uid:", 0) != 0) continue;
    std::istringstream fields(line.substr(4));
    return static_cast<bool>(fields >> out[0] >> out[1] >> out[2] >> out[3]);
  }
  return false;
}

} // namespace

Result<int> UidPool::sweep() const {
  const std::uint64_t end = std::uint64_t{first_} + count_;
  auto in_range = [&](const std::string& pid) {
    uid_t ids[4];
    if (!uids_of(pid, ids)) return false;
    for (uid_t id : ids) {
      if (id >= first_ && id < end) return true;
    }
    return false;
  };
  std::vector<UniqueFd> killed;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string pid = entry.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos || !in_range(pid)) continue;
    // Checked again through a pidfd, so a pid reused meanwhile is spared.
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, std::atoi(pid.c_str()), 0)));
    if (!pidfd || !in_range(pid)) continue;
    if (::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0) != 0) continue;
    killed.push_back(std::move(pidfd));
  }
  if (ec) return sys_error("list", "/proc", ec.value()).with_context("sweeping jail uids");
  // A pidfd polls readable once its process has exited.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (const auto& pidfd : killed) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd gone{pidfd.get(), POLLIN, 0};
    ::poll(&gone, 1, static_cast<int>(std::max<std::int64_t>(0, left.count())));
  }
  return static_cast<int>(killed.size());
}

} // namespace vesicle::vmm
