// The worker threads for blocking work: removing a tree, waiting out a
// cgroup leaf that is still being emptied, reaping a killed process, big
// file work. None of that may run on an asio or CAF thread, where it would
// stall every other sandbox's traffic; callers hand it here and await the
// result on their own executor.
#pragma once

#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace vesicle::vmm {

namespace asio = boost::asio;

// The process-wide blocking pool: two threads, started on first use.
asio::thread_pool& blocking_pool();

// Runs `work` (which must not throw) on the blocking pool and returns at
// once.
template <class Work> void post_blocking(Work work) {
  asio::post(blocking_pool(), std::move(work));
}

// Runs `work` on the blocking pool, then `then` (with its result, if any)
// on `executor`, whose io_context counts it as outstanding work meanwhile
// (so its run() does not return, nor the context go, before `then` ran).
template <class Work, class Then>
void post_blocking(Work work, asio::any_io_executor executor, Then then) {
  asio::any_io_executor tracked = asio::prefer(executor, asio::execution::outstanding_work.tracked);
  post_blocking([work = std::move(work), executor = std::move(tracked),
                 then = std::move(then)]() mutable {
    if constexpr (std::is_void_v<std::invoke_result_t<Work&>>) {
      work();
      asio::post(executor, std::move(then));
    } else {
      asio::post(executor,
                 [then = std::move(then), result = work()]() mutable { then(std::move(result)); });
    }
  });
}

// Runs `work` on the blocking pool and resumes the caller on its own
// executor with the result; the caller's thread keeps serving meanwhile.
template <class Work> auto run_blocking(Work work) -> asio::awaitable<std::invoke_result_t<Work&>> {
  using T = std::invoke_result_t<Work&>;
  auto executor = co_await asio::this_coro::executor;
  // The timer is only a wake-up, touched on the caller's executor alone.
  struct Waiting {
    explicit Waiting(asio::any_io_executor executor)
        : wake(std::move(executor), asio::steady_timer::time_point::max()) {}
    asio::steady_timer wake;
    bool done = false;
    std::conditional_t<std::is_void_v<T>, bool, std::optional<T>> result{};
  };
  auto waiting = std::make_shared<Waiting>(executor);
  if constexpr (std::is_void_v<T>) {
    post_blocking(std::move(work), executor, [waiting] {
      waiting->done = true;
      waiting->wake.cancel();
    });
  } else {
    post_blocking(std::move(work), executor, [waiting](T result) {
      waiting->result.emplace(std::move(result));
      waiting->done = true;
      waiting->wake.cancel();
    });
  }
  while (!waiting->done) {
    boost::system::error_code ignored;
    co_await waiting->wake.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }
  if constexpr (!std::is_void_v<T>) co_return std::move(*waiting->result);
}

} // namespace vesicle::vmm
