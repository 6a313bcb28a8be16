#include "net/http_gate.hpp"

#include <array>
#include <limits>
#include <optional>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>

#include "net/peek.hpp"

namespace vesicle::net {

namespace http = boost::beast::http;

// Beast's parser frames the body (Content-Length, chunked) into a scratch
// buffer that is thrown away: only how many bytes it consumed matters.
struct HttpGate::Parser {
  Parser() {
    parser.header_limit(static_cast<std::uint32_t>(kMaxPeekBytes));
    // Uploads may be any size (boost::none would refuse every body in
    // Boost 1.74: it compares the length with an empty optional).
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    parser.eager(false); // stop after the head, so it is checked first
  }
  http::request_parser<http::buffer_body> parser;
  std::array<char, 16 * 1024> scratch;
};

HttpGate::HttpGate() = default;
HttpGate::~HttpGate() = default;
HttpGate::HttpGate(HttpGate&&) noexcept = default;
HttpGate& HttpGate::operator=(HttpGate&&) noexcept = default;

void HttpGate::append(std::span<const uint8_t> bytes) {
  pending_.insert(pending_.end(), bytes.begin(), bytes.end());
}

HttpGate::Step HttpGate::next() {
  if (outstanding_) return *outstanding_;
  Step step;
  switch (state_) {
  case State::opaque:
    if (!pending_.empty()) step = {Verdict::forward, pending_.size(), {}, {}};
    break;
  case State::body:
    step = parse_body();
    break;
  case State::head: {
    if (pending_.empty()) break;
    if (!parser_) parser_ = std::make_unique<Parser>();
    // The parser keeps what it consumed of an incomplete head (the start
    // line, say) and wants only the rest next time.
    boost::beast::error_code ec;
    size_t used = parser_->parser.put(
        boost::asio::buffer(pending_.data() + parsed_, pending_.size() - parsed_), ec);
    parsed_ += used;
    if (ec == http::error::need_more) {
      if (pending_.size() >= kMaxPeekBytes) {
        step = {Verdict::invalid, 0, {}, "request head too large"};
      }
      break;
    }
    if (ec || !parser_->parser.is_header_done()) {
      step = {Verdict::invalid, 0, {}, "not an HTTP/1.x request: " + ec.message()};
      break;
    }
    const size_t head = parsed_;
    auto host = peek_http_host(std::span<const uint8_t>(pending_.data(), head));
    if (host.status != PeekStatus::done) {
      step = {Verdict::invalid,
              0,
              {},
              host.status == PeekStatus::invalid ? host.error : "incomplete head"};
      break;
    }
    const auto& request = parser_->parser.get();
    switches_ = parser_->parser.upgrade() || request.method() == http::verb::connect;
    step = {Verdict::head, head, std::move(host.name), {}};
    break;
  }
  }
  if (step.verdict == Verdict::forward || step.verdict == Verdict::head) outstanding_ = step;
  return step;
}

HttpGate::Step HttpGate::parse_body() {
  auto& parser = parser_->parser;
  size_t used = 0;
  while (used < pending_.size() && !parser.is_done()) {
    parser.get().body().data = parser_->scratch.data();
    parser.get().body().size = parser_->scratch.size();
    boost::beast::error_code ec;
    size_t n = parser.put(boost::asio::buffer(pending_.data() + used, pending_.size() - used), ec);
    used += n;
    if (ec == http::error::need_buffer) continue; // the scratch was full
    if (ec == http::error::need_more) break;
    if (ec) return {Verdict::invalid, 0, {}, "bad HTTP request body framing: " + ec.message()};
    if (n == 0) break;
  }
  if (used == 0) return {};
  return {Verdict::forward, used, {}, {}};
}

void HttpGate::forwarded(size_t bytes) {
  const bool was_head = outstanding_ && outstanding_->verdict == Verdict::head;
  outstanding_.reset();
  parsed_ = 0;
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(bytes));
  if (state_ == State::opaque) return;
  if (was_head && switches_) {
    state_ = State::opaque;
    parser_.reset();
    return;
  }
  if (parser_ && parser_->parser.is_done()) {
    state_ = State::head; // the next request gets a fresh parser and a check
    parser_.reset();
    return;
  }
  if (was_head) state_ = State::body;
}

} // namespace vesicle::net
