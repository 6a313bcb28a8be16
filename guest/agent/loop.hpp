// The agent's single-threaded event loop: epoll over non-blocking fds, a
// signalfd that reaps every child (the agent may be PID 1, so orphans of the
// whole machine land here), timerfds, and tasks posted to run after the
// current batch of events.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "common/result.hpp"
#include "common/unique_fd.hpp"

namespace vesicle::agent {

class Loop;

// An fd registered with the loop, unregistered when destroyed (destroy it
// before closing the fd). Events 0 takes the fd out of epoll entirely,
// because epoll reports EPOLLHUP even for an empty interest set and a hung-up
// pipe would spin the loop.
class Watch {
public:
  Watch() = default;
  Watch(Loop& loop, int fd, std::function<void(std::uint32_t events)> handler);
  Watch(Watch&& other) noexcept;
  Watch& operator=(Watch&& other) noexcept;
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;
  ~Watch() { reset(); }

  void set_events(std::uint32_t events);
  std::uint32_t events() const { return events_; }
  bool active() const { return loop_ != nullptr; }
  void reset();

private:
  Loop* loop_ = nullptr;
  int fd_ = -1;
  std::uint64_t token_ = 0;
  std::uint32_t events_ = 0;
};

class Loop {
public:
  // Blocks SIGCHLD for the calling thread (children must unblock it, see
  // spawn.cpp) and opens the epoll and signal fds.
  static Result<std::unique_ptr<Loop>> create();

  // Runs until stop(). A handler that throws is logged and the loop goes on:
  // as PID 1 the agent must keep serving.
  void run();
  void stop() { stopped_ = true; }

  // Runs `task` after the events of the current iteration.
  void post(std::function<void()> task);

  // Calls `handler` with the wait status once `pid` has been reaped. Children
  // without a handler (orphans reparented to PID 1) are reaped silently.
  void on_child_exit(pid_t pid, std::function<void(int status)> handler);
  void forget_child(pid_t pid) { child_handlers_.erase(pid); }

private:
  friend class Watch;
  Loop() = default;
  void reap_children();
  std::uint64_t add_handler(std::function<void(std::uint32_t)> handler);

  UniqueFd epoll_;
  UniqueFd signal_fd_;
  Watch signal_watch_;
  std::uint64_t next_token_ = 1;
  std::unordered_map<std::uint64_t, std::shared_ptr<std::function<void(std::uint32_t)>>> handlers_;
  std::unordered_map<pid_t, std::function<void(int)>> child_handlers_;
  std::vector<std::function<void()>> posted_;
  bool stopped_ = false;
};

// A one-shot timer on a timerfd, created on first use so idle requests hold
// no fd.
class Timer {
public:
  explicit Timer(Loop& loop) : loop_(&loop) {}
  Result<void> arm(std::chrono::microseconds after, std::function<void()> fire);
  void cancel();
  bool armed() const { return armed_; }

private:
  Loop* loop_;
  UniqueFd fd_;
  Watch watch_;
  std::function<void()> fire_;
  bool armed_ = false;
};

std::uint64_t monotonic_us();

} // namespace vesicle::agent
