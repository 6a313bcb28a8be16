#include "guest/agent/loop.hpp"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <string>
#include <utility>

#include "guest/agent/log.hpp"

namespace vesicle::agent {

std::uint64_t monotonic_us() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000u +
         static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
}

Watch::Watch(Loop& loop, int fd, std::function<void(std::uint32_t)> handler)
    : loop_(&loop), fd_(fd), token_(loop.add_handler(std::move(handler))) {}

Watch::Watch(Watch&& other) noexcept
    : loop_(std::exchange(other.loop_, nullptr)), fd_(std::exchange(other.fd_, -1)),
      token_(std::exchange(other.token_, 0)), events_(std::exchange(other.events_, 0)) {}

Watch& Watch::operator=(Watch&& other) noexcept {
  if (this != &other) {
    reset();
    loop_ = std::exchange(other.loop_, nullptr);
    fd_ = std::exchange(other.fd_, -1);
    token_ = std::exchange(other.token_, 0);
    events_ = std::exchange(other.events_, 0);
  }
  return *this;
}

void Watch::set_events(std::uint32_t events) {
  if (loop_ == nullptr || events == events_) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token_;
  int op = EPOLL_CTL_MOD;
  if (events_ == 0) op = EPOLL_CTL_ADD;
  if (events == 0) op = EPOLL_CTL_DEL;
  if (::epoll_ctl(loop_->epoll_.get(), op, fd_, &ev) != 0) {
    // Only ENOMEM/ENOSPC can get here for a valid fd; the caller's fd simply
    // goes unwatched, which its timeout (if any) will surface.
    log_line("epoll_ctl on fd " + std::to_string(fd_) + " failed: " + std::strerror(errno));
    return;
  }
  events_ = events;
}

void Watch::reset() {
  if (loop_ == nullptr) return;
  if (events_ != 0) ::epoll_ctl(loop_->epoll_.get(), EPOLL_CTL_DEL, fd_, nullptr);
  loop_->handlers_.erase(token_);
  loop_ = nullptr;
  fd_ = -1;
  token_ = 0;
  events_ = 0;
}

Result<std::unique_ptr<Loop>> Loop::create() {
  std::unique_ptr<Loop> loop(new Loop());
  loop->epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  if (!loop->epoll_) return sys_error("epoll_create1");

  sigset_t mask;
  ::sigemptyset(&mask);
  ::sigaddset(&mask, SIGCHLD);
  if (::sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) return sys_error("sigprocmask", "SIGCHLD");
  loop->signal_fd_ = UniqueFd(::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!loop->signal_fd_) return sys_error("signalfd", "SIGCHLD");
  Loop* self = loop.get();
  loop->signal_watch_ =
      Watch(*loop, loop->signal_fd_.get(), [self](std::uint32_t) { self->reap_children(); });
  loop->signal_watch_.set_events(EPOLLIN);
  return loop;
}

std::uint64_t Loop::add_handler(std::function<void(std::uint32_t)> handler) {
  const std::uint64_t token = next_token_++;
  handlers_.emplace(token,
                    std::make_shared<std::function<void(std::uint32_t)>>(std::move(handler)));
  return token;
}

void Loop::post(std::function<void()> task) {
  posted_.push_back(std::move(task));
}

void Loop::on_child_exit(pid_t pid, std::function<void(int)> handler) {
  child_handlers_[pid] = std::move(handler);
}

void Loop::reap_children() {
  signalfd_siginfo info[16];
  // Drain the signalfd; SIGCHLDs coalesce, so the waitpid loop below is what
  // finds every exited child.
  while (::read(signal_fd_.get(), info, sizeof info) > 0) {
  }
  for (;;) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    auto it = child_handlers_.find(pid);
    if (it == child_handlers_.end()) continue;
    auto handler = std::move(it->second);
    child_handlers_.erase(it);
    handler(status);
  }
}

void Loop::run() {
  constexpr int kMaxEvents = 64;
  epoll_event events[kMaxEvents];
  while (!stopped_) {
    const int timeout = posted_.empty() ? -1 : 0;
    const int n = ::epoll_wait(epoll_.get(), events, kMaxEvents, timeout);
    if (n < 0 && errno != EINTR) {
      log_line(std::string("epoll_wait failed: ") + std::strerror(errno));
      ::usleep(10000);
    }
    for (int i = 0; i < n && !stopped_; ++i) {
      auto it = handlers_.find(events[i].data.u64);
      // A handler earlier in this batch may have removed this one.
      if (it == handlers_.end()) continue;
      auto handler = it->second;
      try {
        (*handler)(events[i].events);
      } catch (const std::exception& e) {
        log_line(std::string("event handler failed: ") + e.what());
      }
    }
    std::vector<std::function<void()>> tasks;
    tasks.swap(posted_);
    for (auto& task : tasks) {
      if (stopped_) break;
      try {
        task();
      } catch (const std::exception& e) {
        log_line(std::string("posted task failed: ") + e.what());
      }
    }
  }
}

Result<void> Timer::arm(std::chrono::microseconds after, std::function<void()> fire) {
  if (!fd_) {
    fd_ = UniqueFd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!fd_) return sys_error("timerfd_create");
    watch_ = Watch(*loop_, fd_.get(), [this](std::uint32_t) {
      std::uint64_t expirations = 0;
      if (::read(fd_.get(), &expirations, sizeof expirations) <= 0) return;
      if (!armed_) return;
      armed_ = false;
      auto fire_now = std::move(fire_);
      fire_ = nullptr;
      fire_now();
    });
    watch_.set_events(EPOLLIN);
  }
  itimerspec spec{};
  const auto us = std::max<std::int64_t>(after.count(), 1); // 0 would disarm
  spec.it_value.tv_sec = us / 1000000;
  spec.it_value.tv_nsec = (us % 1000000) * 1000;
  if (::timerfd_settime(fd_.get(), 0, &spec, nullptr) != 0) return sys_error("timerfd_settime");
  fire_ = std::move(fire);
  armed_ = true;
  return {};
}

void Timer::cancel() {
  if (!armed_) return;
  armed_ = false;
  fire_ = nullptr;
  itimerspec spec{};
  if (fd_) ::timerfd_settime(fd_.get(), 0, &spec, nullptr);
}

} // namespace vesicle::agent
