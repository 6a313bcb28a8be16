// The HTTP/1.1 server: accepts connections, reads requests (keep-alive,
// header size and time limits) and hands each to a RequestHandler. Runs
// on one asio executor, one coroutine per connection.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <cstddef>
#include <functional>
#include <set>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include "common/result.hpp"
#include "hostd/config.hpp"
#include "hostd/http_exchange.hpp"

namespace vesicle::hostd {

using RequestHandler = std::function<asio::awaitable<void>(Exchange&)>;

class HttpServer {
public:
  HttpServer(asio::any_io_executor executor, HttpLimits limits, std::size_t max_connections,
             RequestHandler handler);

  // Binds and starts accepting.
  Result<void> listen(const ListenAddress& address);
  asio::ip::tcp::endpoint local_endpoint() const;

  // Stops accepting new connections (the listening socket closes).
  void stop_accepting();
  // Closes every connection; their coroutines end.
  void close_connections();
  std::size_t connections() const { return streams_.size(); }

private:
  asio::awaitable<void> accept_loop();
  asio::awaitable<void> serve(asio::ip::tcp::socket socket);
  asio::awaitable<void> linger(beast::tcp_stream& stream);

  asio::any_io_executor executor_;
  HttpLimits limits_;
  std::size_t max_connections_;
  RequestHandler handler_;
  asio::ip::tcp::acceptor acceptor_;
  asio::steady_timer slot_freed_;
  std::set<beast::tcp_stream*> streams_;
};

} // namespace vesicle::hostd
