// Small coroutine primitives for one asio executor (Boost 1.74 has no
// channels): a broadcast event, a FIFO async mutex and a mailbox. All of them
// assume their users run on the same single-threaded executor or strand, so
// "check state, then wait" cannot race with "change state, then wake".
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/result.hpp"

namespace vesicle::vmm::detail {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

// A timer used only for its cancellation: waiting on it parks one coroutine,
// notify() wakes it. The waiter re-checks its condition after each wake-up.
// One waiter at a time: a second wait() would re-arm the timer and so wake
// the first (use Event for several waiters).
class Wakeup {
public:
  explicit Wakeup(asio::any_io_executor executor) : timer_(std::move(executor)) {}

  // Parks until notify() or `deadline`. Returns false when the deadline
  // passed (the caller decides whether that matters).
  asio::awaitable<bool> wait(Clock::time_point deadline = Clock::time_point::max()) {
    timer_.expires_at(deadline);
    boost::system::error_code ec;
    co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    co_return ec == asio::error::operation_aborted;
  }
  void notify() { timer_.cancel(); }

private:
  asio::steady_timer timer_;
};

// A flag set once; any number of coroutines wait for it, each with its own
// deadline.
class Event {
public:
  explicit Event(asio::any_io_executor executor) : executor_(std::move(executor)) {}

  bool is_set() const { return set_; }
  void set() {
    if (set_) return;
    set_ = true;
    for (auto* timer : waiters_)
      timer->cancel();
  }
  // True when set, false when the deadline passed first.
  asio::awaitable<bool> wait(Clock::time_point deadline = Clock::time_point::max()) {
    if (set_) co_return true;
    asio::steady_timer timer(executor_, deadline);
    waiters_.push_back(&timer);
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    std::erase(waiters_, &timer);
    co_return set_;
  }

private:
  asio::any_io_executor executor_;
  bool set_ = false;
  std::vector<asio::steady_timer*> waiters_;
};

// A mutex whose lock() is awaited; handed over in arrival order so a writer
// streaming a large upload cannot starve a ping.
class AsyncMutex {
public:
  explicit AsyncMutex(asio::any_io_executor executor) : executor_(std::move(executor)) {}

  asio::awaitable<void> lock() {
    if (!locked_) {
      locked_ = true;
      co_return;
    }
    auto turn = std::make_shared<Wakeup>(executor_);
    waiters_.push_back(turn);
    // unlock() hands the lock over by waking the first waiter; locked_ stays
    // true across the hand-over.
    for (;;) {
      const bool woken = co_await turn->wait();
      if (woken) break;
    }
  }

  void unlock() {
    if (waiters_.empty()) {
      locked_ = false;
      return;
    }
    auto next = std::move(waiters_.front());
    waiters_.pop_front();
    next->notify();
  }

private:
  asio::any_io_executor executor_;
  bool locked_ = false;
  std::deque<std::shared_ptr<Wakeup>> waiters_;
};

// A queue of items for one consumer, closed once with an Error that every
// later receive returns (after the items already queued). Each item carries
// a weight (its size in bytes, say) so the producer can see how much waits
// and refuse to queue more: the queue itself never drops or blocks.
template <class T> class Mailbox {
public:
  explicit Mailbox(asio::any_io_executor executor) : wakeup_(std::move(executor)) {}

  void push(T item, std::size_t weight = 0) {
    if (error_) return;
    items_.emplace_back(std::move(item), weight);
    queued_weight_ += weight;
    wakeup_.notify();
  }
  void close(Error error) {
    if (error_) return;
    error_ = std::move(error);
    wakeup_.notify();
  }
  bool closed() const { return error_.has_value(); }
  std::size_t size() const { return items_.size(); }
  // The weights of the items waiting, summed.
  std::size_t queued_weight() const { return queued_weight_; }

  // The next item or the close Error if either is there now; else nullopt.
  std::optional<Result<T>> try_receive() {
    if (!items_.empty()) return Result<T>(take());
    if (error_) return Result<T>(*error_);
    return std::nullopt;
  }

  // The next item; the close Error once drained; std::nullopt at the deadline.
  asio::awaitable<std::optional<Result<T>>>
  receive(Clock::time_point deadline = Clock::time_point::max()) {
    for (;;) {
      if (!items_.empty()) co_return Result<T>(take());
      if (error_) co_return Result<T>(*error_);
      // g++ 12 miscompiles co_await inside && and || (temporaries destroyed
      // twice), so the result is taken into a variable first.
      const bool woken = co_await wakeup_.wait(deadline);
      if (!woken && Clock::now() >= deadline) co_return std::nullopt;
    }
  }

private:
  T take() {
    auto [item, weight] = std::move(items_.front());
    items_.pop_front();
    queued_weight_ -= weight;
    return std::move(item);
  }

  Wakeup wakeup_;
  std::deque<std::pair<T, std::size_t>> items_;
  std::size_t queued_weight_ = 0;
  std::optional<Error> error_;
};

// Guards a lock held across co_awaits.
class AsyncLockGuard {
public:
  explicit AsyncLockGuard(AsyncMutex& mutex) : mutex_(&mutex) {}
  AsyncLockGuard(const AsyncLockGuard&) = delete;
  AsyncLockGuard& operator=(const AsyncLockGuard&) = delete;
  ~AsyncLockGuard() { mutex_->unlock(); }

private:
  AsyncMutex* mutex_;
};

} // namespace vesicle::vmm::detail
