#include "guest/agent/port_relay.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "guest/agent/events.hpp"
#include "messages/framing.hpp"

namespace vesicle::agent {

namespace {
constexpr std::uint64_t kMaxHostWindow = 16u << 20;
} // namespace

PortRelay::~PortRelay() {
  agent_.channel().stop_waiting(this);
}

void PortRelay::begin(const guest::PortOpen& open) {
  if (open.port() == 0 || open.port() > 65535) {
    finish(failure_event(guest::Failure::BAD_REQUEST, EINVAL,
                         "port_open: port " + std::to_string(open.port()) +
                             " is not a TCP port; use 1..65535"));
    return;
  }
  if (open.window() == 0 || open.window() > kMaxHostWindow) {
    finish(failure_event(guest::Failure::BAD_REQUEST, EINVAL,
                         "port_open: window " + std::to_string(open.window()) +
                             " is out of range; use 1 byte to 16 MiB"));
    return;
  }
  port_ = static_cast<std::uint16_t>(open.port());
  window_ = open.window();
  fd_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd_) {
    const int err = errno;
    finish(failure_event(guest::Failure::IO, err,
                         std::string("port_open: socket: ") + std::strerror(err)));
    return;
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port_);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0 &&
      errno != EINPROGRESS) {
    const int err = errno;
    fd_.reset();
    finish(failure_event(guest::Failure::IO, err,
                         "port_open: nothing accepts connections on port " + std::to_string(port_) +
                             " in the sandbox (" + std::strerror(err) +
                             "); start a server listening on it first"));
    return;
  }
  watch_ = Watch(agent_.loop(), fd_.get(), [this](std::uint32_t events) { on_socket(events); });
  watch_.set_events(EPOLLOUT);
}

void PortRelay::on_socket(std::uint32_t events) {
  if (finished()) return;
  if (connecting_) {
    int err = 0;
    socklen_t length = sizeof err;
    if (::getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &length) != 0) err = errno;
    if (err == EINPROGRESS) return;
    if (err != 0) {
      close(failure_event(guest::Failure::IO, err,
                          "port_open: nothing accepts connections on port " +
                              std::to_string(port_) + " in the sandbox (" + std::strerror(err) +
                              "); start a server listening on it first"));
      return;
    }
    connecting_ = false;
  }
  if ((events & (EPOLLHUP | EPOLLERR)) != 0) hung_up_ = true;
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) pump_read();
  if (!finished() && (events & (EPOLLOUT | EPOLLERR)) != 0) pump_write();
  if (!finished()) update_interest();
}

void PortRelay::take(const guest::PortWrite& write) {
  if (finished()) return;
  if (write.ack() > sent_ - acked_) {
    close(failure_event(guest::Failure::BAD_REQUEST, EINVAL,
                        "port_write: ack of " + std::to_string(write.ack()) +
                            " bytes, more than the " + std::to_string(sent_ - acked_) +
                            " sent and not yet acknowledged"));
    return;
  }
  acked_ += write.ack();
  if (close_write_ && !write.data().empty()) {
    close(failure_event(guest::Failure::BAD_REQUEST, EINVAL, "port_write: data after close_write"));
    return;
  }
  if (pending_.size() + write.data().size() > kPortWindow) {
    close(failure_event(guest::Failure::BAD_REQUEST, EINVAL,
                        "port_write: more than " + std::to_string(kPortWindow) +
                            " bytes sent and not yet acknowledged by port_ack"));
    return;
  }
  pending_ += write.data();
  close_write_ = close_write_ || write.close_write();
  if (connecting_) return; // written once connected
  pump_write();
  if (!finished()) pump_read();
  if (!finished()) update_interest();
}

void PortRelay::on_room() {
  waiting_for_room_ = false;
  if (finished()) return;
  pump_read();
  if (!finished()) update_interest();
}

// Reads while the host's window and the channel's queue have room; a socket
// with nothing to read, or either window full, waits for its next turn.
void PortRelay::pump_read() {
  static char buffer[wire::kMaxChunkBytes];
  while (!finished() && !connecting_) {
    if (sent_ - acked_ >= window_) return;
    if (!orphaned() && !agent_.channel().has_room()) {
      if (!waiting_for_room_) {
        waiting_for_room_ = true;
        agent_.channel().wait_for_room(this);
      }
      return;
    }
    const std::size_t want = static_cast<std::size_t>(
        std::min<std::uint64_t>(sizeof buffer, window_ - (sent_ - acked_)));
    const ssize_t n = ::recv(fd_.get(), buffer, want, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
      // The guest's side closed (or reset) the connection: the relay ends.
      close(done_event(sent_));
      return;
    }
    sent_ += static_cast<std::uint64_t>(n);
    guest::Event event;
    event.set_port_data(buffer, static_cast<std::size_t>(n));
    emit(std::move(event));
  }
}

void PortRelay::pump_write() {
  std::size_t written = 0;
  while (written < pending_.size()) {
    const ssize_t n =
        ::send(fd_.get(), pending_.data() + written, pending_.size() - written, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) {
      // The guest's side is gone (EPIPE, ECONNRESET): nothing more to relay.
      close(done_event(sent_));
      return;
    }
    written += static_cast<std::size_t>(n);
  }
  if (written > 0) {
    pending_.erase(0, written);
    guest::Event event;
    event.set_port_ack(written);
    emit(std::move(event));
  }
  if (pending_.empty() && close_write_ && !write_closed_) {
    write_closed_ = true;
    ::shutdown(fd_.get(), SHUT_WR);
  }
}

void PortRelay::update_interest() {
  std::uint32_t events = 0;
  if (connecting_ || !pending_.empty()) events |= EPOLLOUT;
  const bool readable = !connecting_ && sent_ - acked_ < window_ && !waiting_for_room_;
  if (readable) events |= EPOLLIN | EPOLLRDHUP;
  if (hung_up_ && !readable) events = 0;
  watch_.set_events(events);
}

void PortRelay::cancel() {
  if (finished()) return;
  close(done_event(sent_));
}

void PortRelay::close(guest::Event terminal) {
  agent_.channel().stop_waiting(this);
  waiting_for_room_ = false;
  watch_.reset();
  fd_.reset();
  finish(std::move(terminal));
}

} // namespace vesicle::agent
