#include "hostd/port_proxy.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <memory>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/string.hpp>

#include "vmm/async.hpp"

namespace vesicle::hostd {

namespace {

// The most of the guest server's answer header hostd reads before giving up.
constexpr std::size_t kMaxAnswerHead = 64u << 10;
constexpr std::size_t kClientPiece = 64u << 10;

// Hop-by-hop headers (RFC 9110 7.6.1) and Expect (hostd answers the
// 100-continue itself): never passed on.
constexpr std::array<std::string_view, 9> kHopByHop = {
    "connection",          "keep-alive", "proxy-connection",
    "proxy-authorization", "te",         "trailer",
    "transfer-encoding",   "upgrade",    "expect"};

std::string lowercase(std::string_view text) {
  std::string out(text);
  for (char& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool dropped(const std::string& name, const std::vector<std::string>& drop) {
  return std::find(kHopByHop.begin(), kHopByHop.end(), name) != kHopByHop.end() ||
         std::find(drop.begin(), drop.end(), name) != drop.end();
}

std::string request_head(const Exchange& exchange, const PortRequest& request, bool upgrade) {
  const auto& header = exchange.request_header();
  const auto method = header.method_string();
  std::string head(method.data(), method.size());
  head += " " + request.target + " HTTP/1.1\r\n";
  for (const auto& field : header) {
    const auto name = field.name_string();
    if (dropped(lowercase({name.data(), name.size()}), request.drop_headers)) continue;
    const auto value = field.value();
    head.append(name.data(), name.size());
    head += ": ";
    head.append(value.data(), value.size());
    head += "\r\n";
  }
  if (upgrade) {
    const auto value = exchange.header(http::field::upgrade);
    head += "Connection: Upgrade\r\nUpgrade: " + std::string(value) + "\r\n";
  } else {
    head += "Connection: close\r\n";
  }
  if (exchange.chunked()) head += "Transfer-Encoding: chunked\r\n";
  head += "\r\n";
  return head;
}

// The answer's header with its Connection and Keep-Alive lines replaced by
// `Connection: close`; `head` ends with the blank line.
std::string closing_head(std::string_view head) {
  std::string out;
  std::size_t start = 0;
  bool first = true;
  while (start < head.size()) {
    auto end = head.find("\r\n", start);
    if (end == std::string_view::npos) end = head.size();
    const auto line = head.substr(start, end - start);
    start = end + 2;
    if (line.empty()) break;
    if (!first) {
      const auto colon = line.find(':');
      const auto name = lowercase(line.substr(0, colon));
      if (name == "connection" || name == "keep-alive") continue;
    }
    first = false;
    out.append(line);
    out += "\r\n";
  }
  out += "Connection: close\r\n\r\n";
  return out;
}

// "HTTP/1.1 200 OK" → 200; 0 when the line is not an HTTP/1 status line.
unsigned status_of_line(std::string_view head) {
  if (head.substr(0, 7) != "HTTP/1." || head.size() < 12 || head[8] != ' ') return 0;
  unsigned status = 0;
  for (std::size_t i = 9; i < 12; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(head[i]))) return 0;
    status = status * 10 + static_cast<unsigned>(head[i] - '0');
  }
  return status;
}

asio::awaitable<bool> write_client(Exchange& exchange, std::string_view data,
                                   std::chrono::seconds timeout) {
  boost::system::error_code ec;
  exchange.stream().expires_after(timeout);
  co_await asio::async_write(exchange.stream(), asio::buffer(data.data(), data.size()),
                             asio::redirect_error(asio::use_awaitable, ec));
  co_return !ec;
}

// Client → guest after an upgrade: what the HTTP reader had already taken
// past the header, then whatever comes, until either side ends.
asio::awaitable<void> pump_client(Exchange& exchange, std::shared_ptr<vmm::PortStream> guest,
                                  std::shared_ptr<vmm::detail::Event> done) {
  auto& buffer = exchange.buffer();
  if (buffer.size() > 0) {
    const std::string early(static_cast<const char*>(buffer.data().data()), buffer.size());
    buffer.consume(buffer.size());
    if (!co_await guest->write(early)) {
      done->set();
      co_return;
    }
  }
  std::string piece(kClientPiece, '\0');
  for (;;) {
    boost::system::error_code ec;
    exchange.stream().expires_never();
    const std::size_t n = co_await exchange.stream().async_read_some(
        asio::buffer(piece), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
    if (auto written = co_await guest->write(std::string_view(piece.data(), n)); !written) break;
  }
  done->set();
  guest->close();
}

} // namespace

Result<std::uint16_t> parse_port(std::string_view text) {
  unsigned value = 0;
  bool ok = !text.empty() && text.size() <= 5;
  for (char c : text) {
    if (!std::isdigit(static_cast<unsigned char>(c))) ok = false;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (!ok || value == 0 || value > 65535)
    return Error::of(ErrorKind::invalid_argument,
                     "port \"" + std::string(text.substr(0, 16)) +
                         "\" is not a TCP port; use a number from 1 to 65535");
  return static_cast<std::uint16_t>(value);
}

std::optional<PortHost> parse_port_host(std::string_view host, std::string_view domain) {
  if (domain.empty()) return std::nullopt;
  // hostd's own port, if the client named it.
  if (auto colon = host.rfind(':'); colon != std::string_view::npos) host = host.substr(0, colon);
  const auto dash = host.find('-');
  const auto dot = host.find('.');
  if (dash == std::string_view::npos || dot == std::string_view::npos || dash > dot)
    return std::nullopt;
  if (!beast::iequals(beast::string_view(host.data() + dot + 1, host.size() - dot - 1),
                      beast::string_view(domain.data(), domain.size())))
    return std::nullopt;
  auto port = parse_port(host.substr(0, dash));
  if (!port) return std::nullopt;
  PortHost out;
  out.port = *port;
  out.sandbox_id = lowercase(host.substr(dash + 1, dot - dash - 1));
  if (out.sandbox_id.empty()) return std::nullopt;
  return out;
}

namespace {

struct BodyState {
  explicit BodyState(const asio::any_io_executor& executor) : done(executor) {}
  Exchange::BodyOutcome outcome;
  vmm::detail::Event done;
};

// Client → guest: the request's body as it arrives (a chunked body
// re-chunked). Runs beside the answer's relay, so a server that answers
// while it still reads (or before it reads) is not held up by it.
asio::awaitable<void> send_body(Exchange& exchange, std::shared_ptr<vmm::PortStream> guest,
                                std::shared_ptr<BodyState> state) {
  const bool chunked = exchange.chunked();
  state->outcome = co_await exchange.read_body(
      [&guest, chunked](std::string_view piece) -> asio::awaitable<Result<void>> {
        if (!chunked) co_return co_await guest->write(piece);
        char size[24];
        const int length = std::snprintf(size, sizeof size, "%zx\r\n", piece.size());
        const std::string_view size_line(size, static_cast<std::size_t>(length));
        const std::string_view crlf("\r\n");
        if (auto sent = co_await guest->write(size_line); !sent) co_return sent;
        if (auto sent = co_await guest->write(piece); !sent) co_return sent;
        co_return co_await guest->write(crlf);
      });
  if (state->outcome.client_failed) {
    // The server would wait for the rest of the body forever.
    guest->close();
  } else if (state->outcome.sink_result && chunked) {
    const std::string_view last_chunk("0\r\n\r\n");
    (void)co_await guest->write(last_chunk);
  }
  state->done.set();
}

// Guest → client: the answer's header, then the rest as it comes (or both
// ways after an upgrade). An Error only while nothing was written.
asio::awaitable<Result<void>> relay_answer(Exchange& exchange,
                                           const std::shared_ptr<vmm::PortStream>& guest,
                                           PortRequest& request, bool upgrade,
                                           const std::shared_ptr<BodyState>& body) {
  const std::string what = "port " + std::to_string(request.port) + " in the sandbox";
  std::string head;
  std::size_t head_end = std::string::npos;
  while (head_end == std::string::npos) {
    auto chunk = co_await guest->read();
    if (!chunk) co_return std::move(chunk).error();
    if (chunk->empty())
      co_return Error::of(ErrorKind::unavailable,
                          "the server on " + what + " closed the connection without an answer");
    head += *chunk;
    head_end = head.find("\r\n\r\n");
    if (head_end == std::string::npos && head.size() > kMaxAnswerHead)
      co_return Error::of(ErrorKind::unavailable, "the server on " + what +
                                                      " sent no HTTP header end within " +
                                                      std::to_string(kMaxAnswerHead) + " bytes");
  }
  const unsigned status = status_of_line(head);
  if (status == 0)
    co_return Error::of(ErrorKind::unavailable,
                        "the server on " + what + " did not answer with HTTP/1");
  const auto timeout = std::chrono::seconds(60);
  exchange.taken_over(status);

  if (status == 101 && upgrade) {
    // An upgrade request has no body; its reader has ended (or ends now)
    // before the client's stream is read for the upgraded protocol.
    (void)co_await body->done.wait();
    const std::string_view answer_head(head);
    if (!co_await write_client(exchange, answer_head, timeout)) co_return Result<void>{};
    if (request.on_upgraded) request.on_upgraded();
    // Not inside the calls below: g++ 12 mishandles co_await in arguments.
    auto executor = co_await asio::this_coro::executor;
    auto done = std::make_shared<vmm::detail::Event>(executor);
    asio::co_spawn(executor, pump_client(exchange, guest, done), asio::detached);
    for (;;) {
      auto chunk = co_await guest->read();
      if (!chunk || chunk->empty()) break;
      const std::string_view data(*chunk);
      if (!co_await write_client(exchange, data, timeout)) break;
    }
    guest->close();
    // The client pump holds `exchange`'s stream: it must end before the
    // connection (and the exchange) is gone.
    boost::system::error_code ignored;
    exchange.stream().socket().cancel(ignored);
    (void)co_await done->wait();
    co_return Result<void>{};
  }

  std::string first = closing_head(std::string_view(head).substr(0, head_end + 4));
  first.append(head, head_end + 4);
  const std::string_view first_view(first);
  if (!co_await write_client(exchange, first_view, timeout)) co_return Result<void>{};
  for (;;) {
    auto chunk = co_await guest->read();
    if (!chunk || chunk->empty()) break;
    const std::string_view data(*chunk);
    if (!co_await write_client(exchange, data, timeout)) break;
  }
  co_return Result<void>{};
}

} // namespace

asio::awaitable<Result<void>> relay_http(Exchange& exchange, vmm::AgentClient& agent,
                                         PortRequest request) {
  const bool upgrade = exchange.upgrade();
  auto opened = co_await agent.open_port(request.port);
  if (!opened) co_return std::move(opened).error();
  std::shared_ptr<vmm::PortStream> guest = std::move(*opened);

  // Named, not built inside the awaited call: g++ 12 destroys some such
  // temporaries twice.
  const std::string head_out = request_head(exchange, request, upgrade);
  if (auto sent = co_await guest->write(head_out); !sent) co_return std::move(sent).error();
  auto executor = co_await asio::this_coro::executor;
  auto body = std::make_shared<BodyState>(executor);
  asio::co_spawn(executor, send_body(exchange, guest, body), asio::detached);
  auto relayed = co_await relay_answer(exchange, guest, request, upgrade, body);
  // The body's reader holds the exchange: it ends before the exchange does.
  // Still reading once the answer is over (or failed): the rest of the body
  // is not wanted, and the connection closes.
  const bool cut_short = !body->done.is_set();
  if (cut_short) {
    guest->close();
    boost::system::error_code ignored;
    exchange.stream().socket().cancel(ignored);
  }
  (void)co_await body->done.wait();
  if (!relayed && body->outcome.client_failed && !cut_short)
    co_return Error::of(ErrorKind::invalid_argument, body->outcome.client_error);
  co_return relayed;
}

} // namespace vesicle::hostd
