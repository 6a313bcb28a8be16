// One request/response on a connection, for the API handlers: the request's
// header, its body read whole (JSON, capped) or piece by piece (uploads),
// and the response written whole or streamed in chunks. It tracks whether
// the connection can carry another request afterwards.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>

#include "common/result.hpp"
#include "hostd/api_error.hpp"

namespace vesicle::hostd {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;

struct HttpLimits {
  std::size_t max_json_body = 1u << 20;
  std::chrono::seconds request_timeout{30};
  std::chrono::seconds write_timeout{60};
};

using RequestParser = http::request_parser<http::buffer_body>;

class Exchange {
public:
  Exchange(beast::tcp_stream& stream, beast::flat_buffer& buffer, RequestParser& parser,
           const HttpLimits& limits);

  http::verb method() const { return parser_.get().method(); }
  std::string_view target() const;
  std::string_view header(http::field field) const;
  std::string_view header(std::string_view name) const;
  // The whole request header and its framing (content length, chunked), for
  // the cluster gateway, which passes requests on (gateway_proxy.hpp).
  const RequestParser& request() const { return parser_; }

  // The whole body, at most limits.max_json_body bytes (else 413).
  asio::awaitable<Result<std::string>> read_json_body();

  // Feeds the body to `sink` piece by piece as it arrives (never all of it
  // in memory). Stops at the first error from `sink` and returns it; the
  // connection then closes after the response, as the rest is unread.
  using PieceSink = std::function<asio::awaitable<Result<void>>(std::string_view)>;
  struct BodyOutcome {
    std::uint64_t bytes = 0;
    bool client_failed = false; // timeout, disconnect, malformed chunking
    std::string client_error;
    Result<void> sink_result;
  };
  asio::awaitable<BodyOutcome> read_body(PieceSink sink);

  asio::awaitable<void> respond(unsigned status, std::string json_body);
  asio::awaitable<void> respond_error(const Error& error);
  asio::awaitable<void> respond_text(unsigned status, std::string content_type, std::string body);
  asio::awaitable<void> respond_no_content();
  // A file of the operator's page: like respond_text, with headers that keep
  // it from being framed, sniffed or loading anything but its own files.
  asio::awaitable<void> respond_page_file(std::string content_type, std::string_view body);
  // A response without a body: 202 Accepted, 204...
  asio::awaitable<void> respond_empty(unsigned status);
  // A header for the response still to be written (Mcp-Session-Id, Allow).
  void add_response_header(std::string name, std::string value) {
    extra_headers_.emplace_back(std::move(name), std::move(value));
  }

  // A streamed response: chunked transfer encoding, each write_chunk sent
  // as it comes. Each returns false once the client is gone. What is ready
  // when the stream begins or ends goes in the same write as the header or
  // the final chunk: one send (and one wake-up of the client) fewer each.
  // begin_stream with `complete` writes the whole response: no end_stream.
  asio::awaitable<bool> begin_stream(unsigned status, std::string content_type,
                                     std::string_view first_chunk = {}, bool complete = false);
  asio::awaitable<bool> write_chunk(std::string_view data);
  asio::awaitable<bool> end_stream(std::string_view last_chunk = {});
  // Ends a stream that cannot finish properly: the connection is closed
  // without the final chunk, so the client sees a truncated response.
  void abandon_stream() { keep_alive_ = false; }

  // For the port proxy (hostd/port_proxy.cpp), which relays the request's
  // bytes and the guest's answer itself: the request's header, the
  // client's stream and the bytes read past the header.
  const http::request_header<>& request_header() const { return parser_.get().base(); }
  std::optional<std::uint64_t> content_length() const {
    auto length = parser_.content_length();
    return length ? std::optional<std::uint64_t>(*length) : std::nullopt;
  }
  bool chunked() const { return parser_.chunked(); }
  bool upgrade() const { return parser_.upgrade(); }
  beast::tcp_stream& stream() { return stream_; }
  beast::flat_buffer& buffer() { return buffer_; }
  // The caller wrote a response with this status on stream() itself; the
  // connection closes after it (nothing says where a next request starts).
  void taken_over(unsigned status) {
    status_ = status;
    keep_alive_ = false;
  }

  bool responded() const { return status_ != 0; }
  unsigned status() const { return status_; }
  // The kind of the error this exchange was answered with, if it was.
  std::optional<ErrorKind> error_kind() const { return error_kind_; }
  // Whether the connection may carry another request.
  bool keep_alive() const;

private:
  asio::awaitable<bool> send_continue_if_expected();
  template <class Message> asio::awaitable<bool> write(Message& message);

  beast::tcp_stream& stream_;
  beast::flat_buffer& buffer_;
  RequestParser& parser_;
  const HttpLimits& limits_;
  unsigned status_ = 0;
  std::optional<ErrorKind> error_kind_;
  bool keep_alive_;
  bool continue_sent_ = false;
  std::vector<std::pair<std::string, std::string>> extra_headers_;
};

} // namespace vesicle::hostd
