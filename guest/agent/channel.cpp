#include "guest/agent/channel.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "guest/agent/log.hpp"
#include "guest/agent/virtio_port.hpp"

namespace vesicle::agent {

namespace {
constexpr std::size_t kReadBytes = 64u << 10;
// How often a closed or host-less port is looked at again. A virtio port
// reports POLLHUP for as long as no host is connected, so it cannot sit in
// epoll meanwhile; a cheap poll(2) every 100 ms notices the host quickly.
constexpr std::chrono::milliseconds kHostPollInterval{100};
} // namespace

RoomWaiter::~RoomWaiter() {
  if (waiting_on_ != nullptr) waiting_on_->stop_waiting(this);
}

Channel::Channel(Loop& loop, UniqueFd fd, Callbacks callbacks)
    : loop_(loop), kind_(Kind::kSocket), callbacks_(std::move(callbacks)), fd_(std::move(fd)),
      retry_timer_(loop), linger_timer_(loop) {}

Channel::Channel(Loop& loop, std::string port_name, Callbacks callbacks)
    : loop_(loop), kind_(Kind::kVirtioPort), port_name_(std::move(port_name)),
      callbacks_(std::move(callbacks)), retry_timer_(loop), linger_timer_(loop) {}

Channel::~Channel() {
  for (RoomWaiter* waiter : waiters_)
    waiter->waiting_on_ = nullptr;
}

void Channel::start() {
  if (kind_ == Kind::kVirtioPort) {
    try_open_port();
    return;
  }
  // Children must not inherit the channel: a bash daemon holding it would
  // keep the host from ever seeing the agent's end of file.
  ::fcntl(fd_.get(), F_SETFD, FD_CLOEXEC);
  ::fcntl(fd_.get(), F_SETFL, ::fcntl(fd_.get(), F_GETFL) | O_NONBLOCK);
  watch_ = Watch(loop_, fd_.get(), [this](std::uint32_t events) { on_events(events); });
  state_ = State::kConnected;
  update_interest();
}

void Channel::try_open_port() {
  ++open_attempts_;
  auto path = find_virtio_port(port_name_);
  if (path.ok()) {
    UniqueFd fd(::open(path->c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
    if (fd) {
      log_line("opened the host channel " + *path);
      fd_ = std::move(fd);
      watch_ = Watch(loop_, fd_.get(), [this](std::uint32_t events) { on_events(events); });
      state_ = State::kWaitingForHost;
      open_attempts_ = 0;
      poll_for_host();
      return;
    }
    if (open_attempts_ == 1 || open_attempts_ % 50 == 0) {
      log_line("cannot open " + *path + ": " + std::strerror(errno) + "; retrying");
    }
  } else if (open_attempts_ == 30 || open_attempts_ % 300 == 0) {
    // The port normally appears within a second of boot; only say something
    // when it is late, and keep trying: as PID 1 there is nothing else to do.
    log_line(path.error().message() + "; still retrying");
  }
  auto armed =
      retry_timer_.arm(open_attempts_ < 50 ? kHostPollInterval : std::chrono::milliseconds(1000),
                       [this] { try_open_port(); });
  if (!armed) log_line(armed.error().message());
}

void Channel::poll_for_host() {
  pollfd p{fd_.get(), POLLIN | POLLOUT, 0};
  if (::poll(&p, 1, 0) < 0) p.revents = POLLHUP;
  if (p.revents & (POLLERR | POLLNVAL)) {
    broken_stream("the port reported an error while waiting for the host");
    return;
  }
  if (p.revents & POLLHUP) {
    // Whatever is still readable came from the previous host connection.
    char scratch[4096];
    while (::read(fd_.get(), scratch, sizeof scratch) > 0) {
    }
    auto armed = retry_timer_.arm(kHostPollInterval, [this] { poll_for_host(); });
    if (!armed) log_line(armed.error().message());
    return;
  }
  state_ = State::kConnected;
  decoder_ = wire::FrameDecoder{};
  log_line("host connected");
  update_interest();
}

void Channel::update_interest() {
  if (state_ != State::kConnected) {
    watch_.set_events(0);
    return;
  }
  std::uint32_t events = 0;
  if (queued_bytes_ < kInputPauseBytes) events |= EPOLLIN;
  if (!out_.empty() && !lingering_) events |= EPOLLOUT;
  watch_.set_events(events);
}

void Channel::on_events(std::uint32_t events) {
  const bool hangup = events & (EPOLLHUP | EPOLLERR);
  if (events & EPOLLIN || hangup) read_input();
  if (state_ != State::kConnected) return;
  if (events & EPOLLOUT) write_output();
  if (state_ != State::kConnected) return;
  if (hangup) {
    if (kind_ == Kind::kSocket) {
      end_socket(0);
    } else {
      lost_host("the host closed the port");
    }
  }
}

void Channel::read_input() {
  static char buffer[kReadBytes];
  // Bounded per wake-up so one busy host cannot starve the children's pipes.
  for (int round = 0; round < 16 && state_ == State::kConnected; ++round) {
    if (queued_bytes_ >= kInputPauseBytes) break;
    const ssize_t n = ::read(fd_.get(), buffer, sizeof buffer);
    if (n == 0) {
      if (kind_ == Kind::kSocket) {
        end_socket(0);
      } else {
        lost_host("the host closed the port");
      }
      return;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      channel_failed(std::string("read from the host channel failed: ") + std::strerror(errno));
      return;
    }
    decoder_.feed(std::string_view(buffer, static_cast<std::size_t>(n)));
    for (;;) {
      auto payload = decoder_.next();
      if (!payload.ok()) {
        broken_stream(payload.error().message());
        return;
      }
      if (!payload.value()) break;
      callbacks_.on_frame(*payload.value());
      if (state_ != State::kConnected) return;
    }
  }
  update_interest();
}

// A read or write error: in test mode (a socket) the agent is done; on a
// virtio port the host went away and may come back.
void Channel::channel_failed(const std::string& why) {
  if (kind_ == Kind::kSocket) {
    log_line(why);
    end_socket(1);
  } else {
    lost_host(why);
  }
}

void Channel::send(const guest::Event& event) {
  if (state_ != State::kConnected) return; // no host: nobody to tell
  std::string frame;
  wire::append_frame(frame, event);
  queued_bytes_ += frame.size();
  const bool was_empty = out_.empty();
  out_.push_back(std::move(frame));
  const bool output =
      event.kind_case() == guest::Event::kStdout || event.kind_case() == guest::Event::kStderr;
  if (output && queued_bytes_ < kJoinBytes) {
    // Output on an idle channel waits for what may follow it; output behind
    // frames already being written just joins them.
    if (!was_empty || lingering_) return;
    auto armed = linger_timer_.arm(kOutputLinger, [this] { end_linger(); });
    if (armed) {
      lingering_ = true;
      return;
    }
    log_line(armed.error().message()); // and write at once
  }
  // The queue is being written already unless it was empty or held.
  if (was_empty || lingering_) end_linger();
}

void Channel::end_linger() {
  lingering_ = false;
  linger_timer_.cancel();
  update_interest();
}

void Channel::join_queued_frames() {
  if (out_offset_ != 0) return; // the front frame is partly written
  while (out_.size() > 1 && out_.front().size() + out_[1].size() <= kJoinBytes) {
    out_.front() += out_[1];
    out_.erase(out_.begin() + 1);
  }
}

void Channel::write_output() {
  while (!out_.empty()) {
    join_queued_frames();
    const std::string& frame = out_.front();
    const ssize_t n = ::write(fd_.get(), frame.data() + out_offset_, frame.size() - out_offset_);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      channel_failed(std::string("write to the host channel failed: ") + std::strerror(errno));
      return;
    }
    out_offset_ += static_cast<std::size_t>(n);
    queued_bytes_ -= static_cast<std::size_t>(n);
    if (out_offset_ == frame.size()) {
      out_.pop_front();
      out_offset_ = 0;
    }
  }
  update_interest();
  notify_room();
}

void Channel::end_socket(int status) {
  state_ = State::kClosed;
  watch_.set_events(0);
  callbacks_.on_closed(status);
}

void Channel::wait_for_room(RoomWaiter* waiter) {
  if (waiter->waiting_on_ == this) return;
  waiters_.insert(waiter);
  waiter->waiting_on_ = this;
}

void Channel::stop_waiting(RoomWaiter* waiter) {
  waiters_.erase(waiter);
  if (notifying_ != nullptr) notifying_->erase(waiter);
  waiter->waiting_on_ = nullptr;
}

void Channel::notify_room() {
  if (!has_room() || notifying_ != nullptr || waiters_.empty()) return;
  // A waiter woken here may refill the queue and wait again, or destroy
  // other waiters; it re-registers into waiters_, never into `pending`, so
  // the loop ends.
  std::set<RoomWaiter*> pending;
  pending.swap(waiters_);
  notifying_ = &pending;
  while (!pending.empty() && has_room()) {
    RoomWaiter* waiter = *pending.begin();
    pending.erase(pending.begin());
    waiter->waiting_on_ = nullptr;
    waiter->on_room();
  }
  notifying_ = nullptr;
  waiters_.insert(pending.begin(), pending.end());
}

void Channel::drop_output() {
  out_.clear();
  out_offset_ = 0;
  queued_bytes_ = 0;
  lingering_ = false;
  linger_timer_.cancel();
}

void Channel::lost_host(const std::string& why) {
  log_line(why + "; dropping " + std::to_string(queued_bytes_) +
           " queued bytes and waiting for the host to reconnect");
  drop_output();
  decoder_ = wire::FrameDecoder{};
  state_ = State::kWaitingForHost;
  watch_.set_events(0);
  if (callbacks_.on_disconnected) callbacks_.on_disconnected();
  // Paused producers are orphaned now and drop what they read; wake them.
  loop_.post([this] { notify_room(); });
  auto armed = retry_timer_.arm(kHostPollInterval, [this] { poll_for_host(); });
  if (!armed) log_line(armed.error().message());
}

void Channel::broken_stream(const std::string& why) {
  if (kind_ == Kind::kSocket) {
    log_line(why + "; the stream cannot be resynchronised, exiting");
    end_socket(2);
    return;
  }
  log_line(why + "; the stream cannot be resynchronised, reopening the port");
  drop_output();
  decoder_ = wire::FrameDecoder{};
  watch_.reset();
  fd_.reset();
  state_ = State::kClosed;
  if (callbacks_.on_disconnected) callbacks_.on_disconnected();
  loop_.post([this] { notify_room(); });
  auto armed = retry_timer_.arm(kHostPollInterval, [this] { try_open_port(); });
  if (!armed) log_line(armed.error().message());
}

void Channel::flush(std::chrono::milliseconds budget) {
  const std::uint64_t deadline = monotonic_us() + static_cast<std::uint64_t>(budget.count()) * 1000;
  while (state_ == State::kConnected && !out_.empty()) {
    const std::uint64_t now = monotonic_us();
    if (now >= deadline) break;
    pollfd p{fd_.get(), POLLOUT, 0};
    const int ready = ::poll(&p, 1, static_cast<int>((deadline - now) / 1000) + 1);
    if (ready < 0 && errno != EINTR) break;
    if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) break;
    if (p.revents & POLLOUT) {
      const std::string& frame = out_.front();
      const ssize_t n = ::write(fd_.get(), frame.data() + out_offset_, frame.size() - out_offset_);
      if (n < 0 && errno != EAGAIN && errno != EINTR) break;
      if (n > 0) {
        out_offset_ += static_cast<std::size_t>(n);
        queued_bytes_ -= static_cast<std::size_t>(n);
        if (out_offset_ == frame.size()) {
          out_.pop_front();
          out_offset_ = 0;
        }
      }
    }
  }
}

} // namespace vesicle::agent
