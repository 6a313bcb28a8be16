#include "hostd/http_server.hpp"

#include <limits>

#include <array>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "common/log.hpp"

namespace vesicle::hostd {

namespace {
constexpr std::uint32_t kMaxHeaderBytes = 16 * 1024;
} // namespace

HttpServer::HttpServer(asio::any_io_executor executor, HttpLimits limits,
                       std::size_t max_connections, RequestHandler handler)
    : executor_(executor), limits_(limits), max_connections_(max_connections),
      handler_(std::move(handler)), acceptor_(executor), slot_freed_(executor) {}

Result<void> HttpServer::listen(const ListenAddress& address) {
  boost::system::error_code ec;
  auto ip = asio::ip::make_address(address.host, ec);
  if (ec)
    return make_error("parse listen address", ec.message() + "; give an IP address", address.host);
  asio::ip::tcp::endpoint endpoint(ip, address.port);
  auto where = address.host + ":" + std::to_string(address.port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (ec)
    return Error{ec.value(),
                 "bind",
                 where,
                 "is another hostd (or something else) listening there? pick another with --listen",
                 {}};
  acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Error{ec.value(), "listen", where, {}, {}};
  asio::co_spawn(executor_, accept_loop(), asio::detached);
  return {};
}

asio::ip::tcp::endpoint HttpServer::local_endpoint() const {
  boost::system::error_code ec;
  return acceptor_.local_endpoint(ec);
}

void HttpServer::stop_accepting() {
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  slot_freed_.cancel();
}

void HttpServer::close_connections() {
  for (auto* stream : streams_)
    stream->close();
}

asio::awaitable<void> HttpServer::accept_loop() {
  while (acceptor_.is_open()) {
    // At the connection cap, wait for one to end; the rest queue in the
    // kernel's backlog meanwhile.
    while (streams_.size() >= max_connections_ && acceptor_.is_open()) {
      slot_freed_.expires_at(asio::steady_timer::time_point::max());
      boost::system::error_code ignored;
      co_await slot_freed_.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    boost::system::error_code ec;
    auto socket = co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (!acceptor_.is_open()) break;
      // EMFILE and the like: back off instead of spinning.
      asio::steady_timer pause(executor_, std::chrono::milliseconds(50));
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    // Exec streams many small chunks; with Nagle each one after the first
    // waits for the client's delayed ACK (~40 ms).
    socket.set_option(asio::ip::tcp::no_delay(true), ec);
    asio::co_spawn(executor_, serve(std::move(socket)), asio::detached);
  }
}

// After answering a request whose body was left unread (413, an early
// error on an upload), close gently: stop sending, then read and drop what
// the client is still sending for a while. Closing at once would reset the
// connection and the client, still writing, might never see the answer.
asio::awaitable<void> HttpServer::linger(beast::tcp_stream& stream) {
  boost::system::error_code ec;
  stream.socket().shutdown(asio::ip::tcp::socket::shutdown_send, ec);
  constexpr std::size_t kMaxDrain = 64u << 20;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  std::size_t drained = 0;
  std::array<char, 64 * 1024> sink;
  while (!ec && drained < kMaxDrain && std::chrono::steady_clock::now() < deadline) {
    stream.expires_at(deadline);
    drained += co_await stream.async_read_some(asio::buffer(sink),
                                               asio::redirect_error(asio::use_awaitable, ec));
  }
}

asio::awaitable<void> HttpServer::serve(asio::ip::tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  streams_.insert(&stream);
  beast::flat_buffer buffer;
  try {
    for (;;) {
      RequestParser parser;
      parser.header_limit(kMaxHeaderBytes);
      // Bodies are limited per route (JSON) or not at all (uploads).
      // Not boost::none: Beast 1.74 then refuses every Content-Length body.
      parser.body_limit(std::numeric_limits<std::uint64_t>::max());
      boost::system::error_code ec;
      stream.expires_after(limits_.request_timeout);
      co_await http::async_read_header(stream, buffer, parser,
                                       asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        bool malformed =
            ec.category() == http::make_error_code(http::error::bad_target).category() &&
            ec != http::error::end_of_stream && ec != http::error::partial_message;
        if (malformed) {
          // A request we cannot even parse: say so, then hang up, since
          // where the next request would start is unknown.
          http::response<http::string_body> response{
              ec == http::error::header_limit ? http::status::request_header_fields_too_large
                                              : http::status::bad_request,
              11};
          // The status is set above (431 for headers over the limit, which no
          // error kind maps to); the body says why in the usual shape.
          Error error =
              ec == http::error::header_limit
                  ? Error::of(ErrorKind::too_large, "the request headers are larger than " +
                                                        std::to_string(kMaxHeaderBytes) + " bytes")
                  : Error::of(ErrorKind::invalid_argument,
                              "malformed HTTP request: " + ec.message());
          response.set(http::field::content_type, "application/json");
          response.keep_alive(false);
          response.body() = error_body(error);
          response.prepare_payload();
          stream.expires_after(limits_.write_timeout);
          co_await http::async_write(stream, response,
                                     asio::redirect_error(asio::use_awaitable, ec));
        }
        break;
      }
      Exchange exchange(stream, buffer, parser, limits_);
      co_await handler_(exchange);
      if (!exchange.keep_alive()) {
        if (!parser.is_done()) co_await linger(stream);
        break;
      }
    }
  } catch (const std::exception& e) {
    log::warn("a connection failed", {{"error", e.what()}});
  }
  boost::system::error_code ignored;
  stream.socket().shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
  stream.close();
  streams_.erase(&stream);
  slot_freed_.cancel();
}

} // namespace vesicle::hostd
