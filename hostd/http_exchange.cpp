#include "hostd/http_exchange.hpp"

#include <array>
#include <sstream>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_cat.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

namespace vesicle::hostd {

namespace {
constexpr std::size_t kPieceBytes = 64 * 1024;
constexpr const char* kServerName = "vesicle-hostd";
} // namespace

Exchange::Exchange(beast::tcp_stream& stream, beast::flat_buffer& buffer, RequestParser& parser,
                   const HttpLimits& limits)
    : stream_(stream), buffer_(buffer), parser_(parser), limits_(limits),
      keep_alive_(parser.get().keep_alive()) {}

std::string_view Exchange::target() const {
  auto target = parser_.get().target();
  return {target.data(), target.size()};
}

std::string_view Exchange::header(http::field field) const {
  auto value = parser_.get()[field];
  return {value.data(), value.size()};
}

std::string_view Exchange::header(std::string_view name) const {
  auto value = parser_.get()[beast::string_view(name.data(), name.size())];
  return {value.data(), value.size()};
}

bool Exchange::keep_alive() const {
  return keep_alive_ && parser_.is_done();
}

asio::awaitable<bool> Exchange::send_continue_if_expected() {
  auto expect = header(http::field::expect);
  if (continue_sent_ ||
      !beast::iequals(beast::string_view(expect.data(), expect.size()), "100-continue"))
    co_return true;
  continue_sent_ = true;
  http::response<http::empty_body> go_on{http::status::continue_, 11};
  boost::system::error_code ec;
  stream_.expires_after(limits_.write_timeout);
  co_await http::async_write(stream_, go_on, asio::redirect_error(asio::use_awaitable, ec));
  co_return !ec;
}

asio::awaitable<Exchange::BodyOutcome> Exchange::read_body(PieceSink sink) {
  BodyOutcome outcome;
  if (parser_.is_done()) co_return outcome;
  if (!co_await send_continue_if_expected()) {
    outcome.client_failed = true;
    outcome.client_error = "the client went away";
    keep_alive_ = false;
    co_return outcome;
  }
  std::array<char, kPieceBytes> piece;
  while (!parser_.is_done()) {
    auto& body = parser_.get().body();
    body.data = piece.data();
    body.size = piece.size();
    boost::system::error_code ec;
    // The timeout is per read: a slow but steady upload is fine, a stalled
    // one is dropped.
    stream_.expires_after(limits_.request_timeout);
    co_await http::async_read(stream_, buffer_, parser_,
                              asio::redirect_error(asio::use_awaitable, ec));
    if (ec == http::error::need_buffer) ec = {};
    if (ec) {
      outcome.client_failed = true;
      outcome.client_error = ec == beast::error::timeout
                                 ? "the client stopped sending the body for " +
                                       std::to_string(limits_.request_timeout.count()) + " s"
                                 : "reading the body failed: " + ec.message();
      keep_alive_ = false;
      co_return outcome;
    }
    auto size = piece.size() - parser_.get().body().size;
    if (size == 0) continue;
    outcome.bytes += size;
    outcome.sink_result = co_await sink(std::string_view(piece.data(), size));
    if (!outcome.sink_result) {
      keep_alive_ = false;
      co_return outcome;
    }
  }
  co_return outcome;
}

asio::awaitable<Result<std::string>> Exchange::read_json_body() {
  auto limit = limits_.max_json_body;
  auto too_large =
      Error::of(ErrorKind::too_large, "the request body is larger than " + std::to_string(limit) +
                                          " bytes; send a smaller body");
  if (auto length = parser_.content_length(); length && *length > limit) {
    keep_alive_ = false; // the body stays unread
    co_return too_large;
  }
  std::string body;
  auto outcome = co_await read_body([&](std::string_view piece) -> asio::awaitable<Result<void>> {
    if (body.size() + piece.size() > limit) co_return make_error("read body", "too large");
    body.append(piece);
    co_return Result<void>{};
  });
  if (outcome.client_failed) co_return Error::of(ErrorKind::invalid_argument, outcome.client_error);
  if (!outcome.sink_result) co_return too_large;
  co_return body;
}

template <class Message> asio::awaitable<bool> Exchange::write(Message& message) {
  boost::system::error_code ec;
  stream_.expires_after(limits_.write_timeout);
  co_await http::async_write(stream_, message, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) keep_alive_ = false;
  co_return !ec;
}

asio::awaitable<void> Exchange::respond_text(unsigned status, std::string content_type,
                                             std::string body) {
  status_ = status;
  http::response<http::string_body> response{static_cast<http::status>(status), 11};
  response.set(http::field::server, kServerName);
  response.set(http::field::content_type, content_type);
  for (const auto& [name, value] : extra_headers_)
    response.set(name, value);
  response.keep_alive(keep_alive());
  response.body() = std::move(body);
  response.prepare_payload();
  co_await write(response);
}

asio::awaitable<void> Exchange::respond_page_file(std::string content_type, std::string_view body) {
  status_ = 200;
  http::response<http::string_body> response{http::status::ok, 11};
  response.set(http::field::server, kServerName);
  response.set(http::field::content_type, content_type);
  response.set("Content-Security-Policy",
               "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
               "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'");
  response.set("X-Content-Type-Options", "nosniff");
  response.set("Referrer-Policy", "no-referrer");
  response.set(http::field::cache_control, "no-store");
  response.keep_alive(keep_alive());
  response.body() = std::string(body);
  response.prepare_payload();
  co_await write(response);
}

asio::awaitable<void> Exchange::respond(unsigned status, std::string json_body) {
  co_await respond_text(status, "application/json", std::move(json_body));
}

asio::awaitable<void> Exchange::respond_error(const Error& error) {
  error_kind_ = error.kind;
  co_await respond(http_status(error), error_body(error));
}

asio::awaitable<void> Exchange::respond_no_content() {
  co_await respond_empty(204);
}

asio::awaitable<void> Exchange::respond_empty(unsigned status) {
  status_ = status;
  http::response<http::empty_body> response{static_cast<http::status>(status), 11};
  response.set(http::field::server, kServerName);
  for (const auto& [name, value] : extra_headers_)
    response.set(name, value);
  response.keep_alive(keep_alive());
  // 204 has no length by definition; any other empty answer says 0.
  if (status != 204) response.content_length(0);
  co_await write(response);
}

asio::awaitable<bool> Exchange::begin_stream(unsigned status, std::string content_type,
                                             std::string_view first_chunk, bool complete) {
  status_ = status;
  http::response<http::empty_body> response{static_cast<http::status>(status), 11};
  response.set(http::field::server, kServerName);
  response.set(http::field::content_type, content_type);
  // Proxies must pass each chunk on as it comes.
  response.set(http::field::cache_control, "no-store");
  response.set("X-Accel-Buffering", "no");
  for (const auto& [name, value] : extra_headers_)
    response.set(name, value);
  response.keep_alive(keep_alive());
  response.chunked(true);
  std::ostringstream header;
  header << response.base();
  const auto head = header.str();
  const auto first = asio::buffer(first_chunk.data(), first_chunk.size());
  boost::system::error_code ec;
  stream_.expires_after(limits_.write_timeout);
  auto done = asio::redirect_error(asio::use_awaitable, ec);
  // An empty chunk would end the body: it is left out.
  if (first_chunk.empty() && !complete)
    co_await asio::async_write(stream_, asio::buffer(head), done);
  else if (first_chunk.empty())
    co_await asio::async_write(
        stream_, beast::buffers_cat(asio::buffer(head), http::make_chunk_last()), done);
  else if (!complete)
    co_await asio::async_write(
        stream_, beast::buffers_cat(asio::buffer(head), http::make_chunk(first)), done);
  else
    co_await asio::async_write(
        stream_,
        beast::buffers_cat(asio::buffer(head), http::make_chunk(first), http::make_chunk_last()),
        done);
  if (ec) keep_alive_ = false;
  co_return !ec;
}

asio::awaitable<bool> Exchange::write_chunk(std::string_view data) {
  if (data.empty()) co_return true; // an empty chunk would end the body
  boost::system::error_code ec;
  stream_.expires_after(limits_.write_timeout);
  co_await asio::async_write(stream_, http::make_chunk(asio::buffer(data.data(), data.size())),
                             asio::redirect_error(asio::use_awaitable, ec));
  if (ec) keep_alive_ = false;
  co_return !ec;
}

asio::awaitable<bool> Exchange::end_stream(std::string_view last_chunk) {
  boost::system::error_code ec;
  stream_.expires_after(limits_.write_timeout);
  auto done = asio::redirect_error(asio::use_awaitable, ec);
  if (last_chunk.empty())
    co_await asio::async_write(stream_, http::make_chunk_last(), done);
  else
    co_await asio::async_write(
        stream_,
        beast::buffers_cat(http::make_chunk(asio::buffer(last_chunk.data(), last_chunk.size())),
                           http::make_chunk_last()),
        done);
  if (ec) keep_alive_ = false;
  co_return !ec;
}

} // namespace vesicle::hostd
