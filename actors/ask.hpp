// Where CAF meets asio: ask<R>(...) sends a request to an actor and suspends
// the calling coroutine until the reply (or an error, or the timeout) comes
// back. The reply arrives on a CAF thread and is posted to the coroutine's
// executor, so the coroutine always resumes on its own thread.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <memory>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/expected.hpp>

namespace vesicle {

namespace asio = boost::asio;

template <class R, class Handle, class... Ts>
asio::awaitable<caf::expected<R>> ask(caf::actor_system& system, Handle destination,
                                      caf::timespan timeout, Ts... args) {
  auto executor = co_await asio::this_coro::executor;
  auto initiate = [&](auto handler) {
    // The handler is move-only and CAF's callbacks must be copyable: share
    // it; exactly one of the two callbacks runs.
    using Handler = decltype(handler);
    auto shared = std::make_shared<Handler>(std::move(handler));
    auto resume = [executor, shared](caf::expected<R> outcome) {
      asio::post(executor, [shared, outcome = std::move(outcome)]() mutable {
        auto handler = std::move(*shared);
        handler(std::move(outcome));
      });
    };
    // A short-lived actor per request: a CAF request needs a requester, and
    // a scoped_actor would block this thread. It takes the timeout as its
    // argument: CAF 0.17 binds an actor function spawned with no arguments
    // to a null tuple pointer (UBSan reports it), not so with one.
    system.spawn(
        [=](caf::event_based_actor* self, caf::timespan limit) {
          self->request(destination, limit, args...)
              .then([=](R& reply) { resume(std::move(reply)); },
                    [=](caf::error& failure) { resume(std::move(failure)); });
        },
        timeout);
  };
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(caf::expected<R>)>(
      initiate, asio::use_awaitable);
}

// Fire and forget, for messages that need no answer.
template <class Handle, class... Ts> void tell(Handle destination, Ts... args) {
  caf::anon_send(destination, std::move(args)...);
}

} // namespace vesicle
