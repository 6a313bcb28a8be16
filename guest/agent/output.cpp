#include "guest/agent/output.hpp"

#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace vesicle::agent {

namespace {
constexpr std::size_t kPipeReadBytes = 64u << 10;
} // namespace

std::string_view OutputBudget::admit(std::string_view data) {
  const std::uint64_t left = cap_ > used_ ? cap_ - used_ : 0;
  if (data.size() > left) {
    truncated_ = true;
    data = data.substr(0, static_cast<std::size_t>(left));
  }
  used_ += data.size();
  return data;
}

PipeReader::PipeReader(Loop& loop, Channel& channel, UniqueFd fd,
                       std::function<void(std::string_view)> deliver,
                       std::function<bool()> wants_bytes)
    : loop_(loop), channel_(channel), fd_(std::move(fd)), deliver_(std::move(deliver)),
      wants_bytes_(std::move(wants_bytes)) {}

PipeReader::~PipeReader() {
  watch_.reset();
}

void PipeReader::start() {
  if (!fd_) return;
  watch_ = Watch(loop_, fd_.get(), [this](std::uint32_t) { on_readable(); });
  watch_.set_events(EPOLLIN);
}

void PipeReader::close() {
  channel_.stop_waiting(this);
  watch_.reset();
  fd_.reset();
}

void PipeReader::drain_now(std::function<void()> done) {
  int available = 0;
  if (!fd_ || ::ioctl(fd_.get(), FIONREAD, &available) != 0) available = 0;
  drain_done_ = std::move(done);
  draining_ = true;
  drain_left_ = static_cast<std::uint64_t>(available);
  if (drain_left_ == 0) {
    // Posted, not called: the caller is still setting up its other pipe.
    loop_.post([this, alive = std::weak_ptr<bool>(alive_)] {
      if (alive.expired()) return;
      if (draining_ && drain_left_ == 0) finish_drain();
    });
    return;
  }
  // The bytes are there; read them now rather than on the next epoll round.
  on_readable();
}

void PipeReader::finish_drain() {
  draining_ = false;
  auto done = std::move(drain_done_);
  drain_done_ = nullptr;
  if (done) done();
}

void PipeReader::on_room() {
  if (!fd_) return;
  watch_.set_events(EPOLLIN);
  on_readable();
}

void PipeReader::on_readable() {
  static char buffer[kPipeReadBytes];
  // Bounded per wake-up so one chatty child cannot starve the rest; epoll is
  // level-triggered and brings the reader back.
  for (int round = 0; round < 8 && fd_; ++round) {
    if (draining_ && drain_left_ == 0) {
      finish_drain();
      return;
    }
    if (wants_bytes_() && !channel_.has_room()) {
      watch_.set_events(0);
      channel_.wait_for_room(this);
      return;
    }
    std::size_t want = kPipeReadBytes;
    if (draining_) want = static_cast<std::size_t>(std::min<std::uint64_t>(want, drain_left_));
    const ssize_t n = ::read(fd_.get(), buffer, want);
    if (n > 0) {
      if (draining_) drain_left_ -= static_cast<std::uint64_t>(n);
      deliver_(std::string_view(buffer, static_cast<std::size_t>(n)));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      // FIONREAD promised more than there was (cannot happen for a pipe only
      // this reader reads); do not wait for bytes that will not come.
      if (draining_) finish_drain();
      return;
    }
    // End of file or a read error: nothing more will come from this pipe.
    close();
    if (draining_) finish_drain();
    return;
  }
  if (draining_ && drain_left_ == 0) finish_drain();
}

} // namespace vesicle::agent
