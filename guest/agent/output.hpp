// Reading a child's stdout or stderr pipe and streaming it to the host, with
// the two bounds that keep the agent's memory flat: a per-call output cap
// (past it, bytes are read and dropped) and the channel's output queue
// (while it is full and bytes are still wanted, the pipe is not read, so the
// child blocks on its own write instead of the agent buffering).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "common/unique_fd.hpp"
#include "guest/agent/channel.hpp"
#include "guest/agent/loop.hpp"

namespace vesicle::agent {

// How many bytes of output a call may still deliver.
class OutputBudget {
public:
  explicit OutputBudget(std::uint64_t cap) : cap_(cap) {}
  // The part of `data` that may be delivered; notes truncation.
  std::string_view admit(std::string_view data);
  bool exhausted() const { return used_ >= cap_; }
  bool truncated() const { return truncated_; }

private:
  std::uint64_t cap_;
  std::uint64_t used_ = 0;
  bool truncated_ = false;
};

class PipeReader : public RoomWaiter {
public:
  // `deliver` gets each chunk (at most 64 KiB) as it is read.
  // `wants_bytes` says whether they will reach the host; when false (cap
  // reached, nobody listening) the reader drains without waiting for room.
  PipeReader(Loop& loop, Channel& channel, UniqueFd fd,
             std::function<void(std::string_view)> deliver, std::function<bool()> wants_bytes);
  ~PipeReader() override;

  void start();

  // Reads what the pipe holds now, not what arrives later, then calls
  // `done`. This is how a call ends without waiting for end of file: a
  // daemon the command started may hold the pipe open for days.
  void drain_now(std::function<void()> done);

  bool at_eof() const { return !fd_; }
  void close();

  void on_room() override;

private:
  void on_readable();
  void finish_drain();

  Loop& loop_;
  Channel& channel_;
  UniqueFd fd_;
  Watch watch_;
  std::function<void(std::string_view)> deliver_;
  std::function<bool()> wants_bytes_;
  bool draining_ = false;
  std::uint64_t drain_left_ = 0;
  std::function<void()> drain_done_;
  // Lets posted tasks notice that the reader is gone.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

} // namespace vesicle::agent
