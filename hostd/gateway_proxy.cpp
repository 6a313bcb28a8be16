#include "hostd/gateway_proxy.hpp"

#include <array>
#include <limits>

#include <netinet/tcp.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "common/log.hpp"
#include "hostd/json.hpp"
#include "messages/api.pb.h"

namespace vesicle::hostd {

namespace {

constexpr std::size_t kPieceBytes = 64 * 1024;
constexpr auto kConnectTimeout = std::chrono::seconds(5);
// A node's answer may take as long as an exec runs; a node that stops
// answering is caught by the heartbeats, which abort the call.
constexpr auto kNodeSilence = std::chrono::hours(25);
// Answers up to this size are read whole and sent with a length; longer
// or unsized ones stream.
constexpr std::uint64_t kWholeAnswerBytes = 256 * 1024;

using tcp = asio::ip::tcp;

// Hop-by-hop headers (RFC 9110 7.6.1) and those the writer sets itself.
bool passes_through(http::field field, beast::string_view name) {
  switch (field) {
  case http::field::connection:
  case http::field::keep_alive:
  case http::field::proxy_connection:
  case http::field::te:
  case http::field::trailer:
  case http::field::transfer_encoding:
  case http::field::upgrade:
  case http::field::content_length:
  case http::field::host:
  case http::field::expect:
  case http::field::server:
  case http::field::date:
  case http::field::content_type:
  case http::field::cache_control:
    return false;
  default:
    return !beast::iequals(name, "X-Accel-Buffering");
  }
}

Error unreachable(const ProxyTarget& target, const std::string& what) {
  return Error::of(ErrorKind::unavailable, "node \"" + target.node + "\" (region \"" +
                                               target.region + "\") cannot be reached (" + what +
                                               "); retry when it is back");
}

// A connection to the node whose abort Members can trigger.
class NodeConnection {
public:
  NodeConnection(asio::any_io_executor executor, const ProxyTarget& target, Members& members)
      : stream_(executor), target_(target), members_(members) {
    ticket_ = members_.on_down(target_.node, [this] {
      aborted_ = true;
      boost::system::error_code ignored;
      stream_.socket().close(ignored);
    });
  }
  ~NodeConnection() { members_.forget(target_.node, ticket_); }
  NodeConnection(const NodeConnection&) = delete;
  NodeConnection& operator=(const NodeConnection&) = delete;

  asio::awaitable<boost::system::error_code> connect() {
    boost::system::error_code ec;
    tcp::resolver resolver(stream_.get_executor());
    auto endpoints = co_await resolver.async_resolve(
        target_.host, target_.port, tcp::resolver::numeric_host | tcp::resolver::numeric_service,
        asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return ec;
    stream_.expires_after(kConnectTimeout);
    co_await stream_.async_connect(endpoints, asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) ::setsockopt(stream_.socket().native_handle(), IPPROTO_TCP, TCP_NODELAY, &one_, 4);
    co_return ec;
  }

  std::string why(const boost::system::error_code& ec) const {
    return aborted_ ? "it went down" : ec.message();
  }

  beast::tcp_stream& stream() { return stream_; }

private:
  beast::tcp_stream stream_;
  const ProxyTarget& target_;
  Members& members_;
  std::uint64_t ticket_ = 0;
  bool aborted_ = false;
  int one_ = 1;
};

} // namespace

asio::awaitable<void> respond_gateway_error(Exchange& exchange, const Error& error) {
  if (error.kind != ErrorKind::unavailable) co_return co_await exchange.respond_error(error);
  api::ErrorResponse body;
  body.mutable_error()->set_code(kNodeUnavailableCode);
  body.mutable_error()->set_message(error.message());
  co_await exchange.respond(503, to_json(body));
}

ProxyTarget proxy_target(const Member& member) {
  return {member.report.name, member.report.region, member.host, member.port};
}

asio::awaitable<void> proxy_call(Exchange& exchange, const ProxyTarget& target, Members& members,
                                 std::optional<std::string> body) {
  NodeConnection node(co_await asio::this_coro::executor, target, members);
  if (auto ec = co_await node.connect(); ec)
    co_return co_await respond_gateway_error(exchange, unreachable(target, node.why(ec)));
  auto& stream = node.stream();

  // The request line and headers, framed like the client's body (or the
  // body already read).
  const auto& client = exchange.request();
  http::request<http::empty_body> request{client.get().method(), client.get().target(), 11};
  for (const auto& field : client.get())
    if (passes_through(field.name(), field.name_string()) ||
        field.name() == http::field::content_type)
      request.insert(field.name_string(), field.value());
  request.set(http::field::host, target.host + ":" + target.port);
  request.keep_alive(false);
  const bool chunked = !body && client.chunked();
  if (body)
    request.content_length(body->size());
  else if (chunked)
    request.chunked(true);
  else if (auto length = client.content_length())
    request.content_length(*length);
  boost::system::error_code ec;
  http::request_serializer<http::empty_body> serializer{request};
  stream.expires_after(kConnectTimeout);
  co_await http::async_write_header(stream, serializer,
                                    asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return co_await respond_gateway_error(exchange, unreachable(target, node.why(ec)));

  // The body: a node that stops reading early (it answered already) is
  // not an error here; its answer is read below.
  bool request_sent = true;
  stream.expires_never();
  if (body) {
    co_await asio::async_write(stream, asio::buffer(*body),
                               asio::redirect_error(asio::use_awaitable, ec));
    request_sent = !ec;
  } else if (chunked || client.content_length().value_or(0) > 0) {
    auto outcome =
        co_await exchange.read_body([&](std::string_view piece) -> asio::awaitable<Result<void>> {
          boost::system::error_code write_ec;
          if (chunked)
            co_await asio::async_write(stream,
                                       http::make_chunk(asio::buffer(piece.data(), piece.size())),
                                       asio::redirect_error(asio::use_awaitable, write_ec));
          else
            co_await asio::async_write(stream, asio::buffer(piece.data(), piece.size()),
                                       asio::redirect_error(asio::use_awaitable, write_ec));
          if (write_ec) co_return make_error("pass the body on", write_ec.message());
          co_return Result<void>{};
        });
    if (outcome.client_failed) co_return; // the client is gone or broke the framing
    request_sent = bool(outcome.sink_result);
    if (request_sent && chunked) {
      co_await asio::async_write(stream, http::make_chunk_last(),
                                 asio::redirect_error(asio::use_awaitable, ec));
      request_sent = !ec;
    }
  }

  // The answer's header...
  beast::flat_buffer buffer;
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  stream.expires_after(kNodeSilence);
  co_await http::async_read_header(stream, buffer, parser,
                                   asio::redirect_error(asio::use_awaitable, ec));
  if (ec)
    co_return co_await respond_gateway_error(
        exchange,
        unreachable(target, request_sent ? node.why(ec) : "it stopped reading the request"));
  const auto& answer = parser.get();
  const unsigned status = answer.result_int();
  for (const auto& field : answer)
    if (passes_through(field.name(), field.name_string()))
      exchange.add_response_header(std::string(field.name_string()), std::string(field.value()));
  const std::string content_type(answer[http::field::content_type]);
  if (parser.is_done()) {
    co_return co_await exchange.respond_empty(status);
  }

  // ...then its body, whole when it is small and sized, else piece by piece.
  std::array<char, kPieceBytes> piece;
  auto read_piece = [&]() -> asio::awaitable<std::size_t> {
    auto& body = parser.get().body();
    body.data = piece.data();
    body.size = piece.size();
    co_await http::async_read_some(stream, buffer, parser,
                                   asio::redirect_error(asio::use_awaitable, ec));
    if (ec == http::error::need_buffer) ec = {};
    co_return piece.size() - parser.get().body().size;
  };
  const auto length = parser.content_length();
  if (length && *length <= kWholeAnswerBytes) {
    std::string whole;
    whole.reserve(*length);
    while (!parser.is_done()) {
      auto n = co_await read_piece();
      if (ec)
        co_return co_await respond_gateway_error(
            exchange, unreachable(target, "its answer broke off: " + node.why(ec)));
      whole.append(piece.data(), n);
    }
    co_return co_await exchange.respond_text(status, content_type, std::move(whole));
  }
  if (!co_await exchange.begin_stream(status, content_type)) co_return;
  while (!parser.is_done()) {
    auto n = co_await read_piece();
    if (ec) {
      log::warn("cluster: a node's answer broke off mid-stream",
                {{"node", target.node}, {"error", node.why(ec)}});
      exchange.abandon_stream();
      co_return;
    }
    // No co_await in a `&&` operand (g++ 12: see e2b_process.cpp's stream_error).
    if (n == 0) continue;
    if (!co_await exchange.write_chunk(std::string_view(piece.data(), n))) co_return;
  }
  co_await exchange.end_stream();
}

asio::awaitable<Result<NodeAnswer>> node_get(const ProxyTarget& target, Members& members,
                                             std::string target_path, std::string authorization,
                                             std::size_t max_bytes) {
  NodeConnection node(co_await asio::this_coro::executor, target, members);
  if (auto ec = co_await node.connect(); ec) co_return unreachable(target, node.why(ec));
  auto& stream = node.stream();
  http::request<http::empty_body> request{http::verb::get, target_path, 11};
  request.set(http::field::host, target.host + ":" + target.port);
  request.set(http::field::authorization, authorization);
  request.keep_alive(false);
  boost::system::error_code ec;
  stream.expires_after(std::chrono::seconds(30));
  co_await http::async_write(stream, request, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return unreachable(target, node.why(ec));
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(max_bytes);
  co_await http::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) co_return unreachable(target, node.why(ec));
  co_return NodeAnswer{parser.get().result_int(), std::move(parser.get().body())};
}

} // namespace vesicle::hostd
