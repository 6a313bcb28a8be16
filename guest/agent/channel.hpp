// The agent's end of the host channel: frames in, an output queue of frames
// out, flow control for the producers that fill that queue.
//
// Two kinds of endpoint:
//  - a socket fd handed over by a test (--channel-fd): end of file or a
//    broken stream ends the agent;
//  - the virtio-serial port named "agent" (PID-1 mode): the host side comes
//    and goes (hostd restarts, the VM is restored), so the port stays open,
//    a disconnect drops the queued output, and the agent waits for the next
//    host connection. A stream that cannot be resynchronised (an oversized
//    frame) closes and reopens the port.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <set>
#include <string>
#include <string_view>

#include "common/unique_fd.hpp"
#include "guest/agent/loop.hpp"
#include "messages/framing.hpp"
#include "messages/guest.pb.h"

namespace vesicle::agent {

class Channel;

// A producer paused because the output queue is full. on_room() is called
// once when the queue has drained below the threshold; the waiter
// re-registers if it fills the queue again.
class RoomWaiter {
public:
  RoomWaiter() = default;
  RoomWaiter(const RoomWaiter&) = delete;
  RoomWaiter& operator=(const RoomWaiter&) = delete;
  virtual ~RoomWaiter();
  virtual void on_room() = 0;

private:
  friend class Channel;
  Channel* waiting_on_ = nullptr;
};

class Channel {
public:
  // Producers stop adding to the queue at this size; it bounds the agent's
  // memory whatever the host's read speed.
  static constexpr std::size_t kRoomBytes = 1u << 20;
  // Above this the agent stops reading requests too, so a host that sends
  // without reading cannot grow the queue (replies to pings and the like).
  static constexpr std::size_t kInputPauseBytes = 8u << 20;

  struct Callbacks {
    std::function<void(std::string_view payload)> on_frame;
    // The host went away (port mode): queued output was dropped; requests in
    // flight have no one to answer to.
    std::function<void()> on_disconnected;
    // Socket mode: the channel ended; `status` is the exit status the agent
    // should use (0 for an orderly end of file, 2 for a broken stream).
    std::function<void(int status)> on_closed;
  };

  enum class Kind { kSocket, kVirtioPort };

  // Socket mode over an already-open fd.
  Channel(Loop& loop, UniqueFd fd, Callbacks callbacks);
  // Port mode: finds /dev/<port> named `port_name` and keeps it open.
  Channel(Loop& loop, std::string port_name, Callbacks callbacks);
  ~Channel();

  void start();

  // Output (stdout and stderr events) waits up to this long before it is
  // written, and any other event ends the wait: a short cell's output and
  // its Exit then leave in one write, which the host reads at once (one
  // wake-up and one reply write in hostd per cell instead of two; measured
  // under TCG, the REPL's reply comes 0.2 to 1 ms after its output).
  // Streaming output is late by at most this.
  static constexpr std::chrono::microseconds kOutputLinger{2000};
  // Frames queued together are joined into writes of up to this size: on a
  // virtio port each write reaches the host as one buffer.
  static constexpr std::size_t kJoinBytes = 64u << 10;

  // Queues one event. Never blocks; the caller keeps the queue bounded by
  // checking has_room() before producing more.
  void send(const guest::Event& event);
  bool has_room() const { return queued_bytes_ < kRoomBytes; }
  std::size_t queued_bytes() const { return queued_bytes_; }
  bool connected() const { return state_ == State::kConnected; }
  void wait_for_room(RoomWaiter* waiter);
  void stop_waiting(RoomWaiter* waiter);

  // Writes out the queue, blocking up to `budget`; for shutdown, when the
  // loop will not run again.
  void flush(std::chrono::milliseconds budget);

private:
  enum class State { kClosed, kWaitingForHost, kConnected };

  void on_events(std::uint32_t events);
  void read_input();
  void write_output();
  void update_interest();
  void notify_room();
  void channel_failed(const std::string& why);
  void lost_host(const std::string& why);
  void broken_stream(const std::string& why);
  void end_socket(int status);
  void try_open_port();
  void poll_for_host();
  void drop_output();
  void end_linger();
  void join_queued_frames();

  Loop& loop_;
  Kind kind_;
  std::string port_name_;
  Callbacks callbacks_;
  UniqueFd fd_;
  Watch watch_;
  Timer retry_timer_;
  Timer linger_timer_;
  bool lingering_ = false; // output queued and held back for kOutputLinger
  State state_ = State::kClosed;
  wire::FrameDecoder decoder_;
  std::deque<std::string> out_;
  std::size_t out_offset_ = 0; // bytes of out_.front() already written
  std::size_t queued_bytes_ = 0;
  std::set<RoomWaiter*> waiters_;
  std::set<RoomWaiter*>* notifying_ = nullptr;
  std::uint64_t open_attempts_ = 0;
};

} // namespace vesicle::agent
