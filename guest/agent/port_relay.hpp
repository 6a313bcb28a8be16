// PortOpen (messages/guest.proto): a TCP connection to 127.0.0.1:port in the
// guest, its bytes relayed over the host channel, so hostd can reach a web
// app in the sandbox whether or not the guest has a network. Both directions
// are bounded: the socket is read only while the host's window has room and
// the channel's output queue has room, and the host's bytes wait here at
// most kPortWindow at a time.
#pragma once

#include <cstdint>
#include <string>

#include "common/unique_fd.hpp"
#include "guest/agent/agent.hpp"

namespace vesicle::agent {

class PortRelay : public Request, public RoomWaiter {
public:
  // What the host may send beyond what port_ack has acknowledged.
  static constexpr std::uint64_t kPortWindow = 256u << 10;

  PortRelay(Agent& agent, std::uint64_t id) : Request(agent, id) {}
  ~PortRelay() override;

  // Starts the (non-blocking) connect.
  void begin(const guest::PortOpen& open);
  // A PortWrite of this relay: data to write, credit, half-close.
  void take(const guest::PortWrite& write);
  void cancel() override;
  void on_room() override;

private:
  void on_socket(std::uint32_t events);
  void connected();
  void pump_read();
  void pump_write();
  void update_interest();
  void close(guest::Event terminal);

  std::uint16_t port_ = 0;
  UniqueFd fd_;
  Watch watch_;
  bool connecting_ = true;
  // Guest → host: bytes sent as port_data, and how many the host took.
  std::uint64_t window_ = 0;
  std::uint64_t sent_ = 0;
  std::uint64_t acked_ = 0;
  bool waiting_for_room_ = false;
  // The socket reported EPOLLHUP/EPOLLERR: watched again only when it can
  // be read, since epoll repeats a hang-up whatever the interest set.
  bool hung_up_ = false;
  // Host → guest: bytes not yet written into the socket.
  std::string pending_;
  bool close_write_ = false;
  bool write_closed_ = false;
};

} // namespace vesicle::agent
