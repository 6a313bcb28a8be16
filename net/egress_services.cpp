#include "net/egress_services.hpp"

#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <future>
#include <random>
#include <unordered_set>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "net/header_rewrite.hpp"
#include "net/http_gate.hpp"
#include "net/layout.hpp"
#include "net/peek.hpp"
#include "net/ruleset.hpp"

namespace vesicle::net {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using tcp = asio::ip::tcp;
using udp = asio::ip::udp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kMaxInflightQueries = 64;
constexpr auto kUpstreamTimeout = std::chrono::milliseconds(1500);
constexpr int kUpstreamAttempts = 2;
constexpr auto kPeekTimeout = std::chrono::seconds(10);
constexpr auto kConnectTimeout = std::chrono::seconds(10);
constexpr auto kTcpDnsIdle = std::chrono::seconds(10);

asio::ip::address_v4 to_asio(Ipv4 address) {
  return asio::ip::address_v4(address.value);
}

// A TLS alert record, fatal access_denied: what a TLS client sees when the
// proxy refuses its ClientHello.
constexpr std::array<uint8_t, 7> kTlsAccessDenied = {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31};
constexpr uint8_t kTlsHandshakeRecord = 0x16;

std::string http_forbidden(const std::string& reason) {
  std::string body = "vesicle: egress refused: " + reason + "\n";
  return "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
         "Content-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

// What the guest's client gets, over the TLS the proxy terminated, when the
// proxy cannot reach the real host safely (its certificate does not verify,
// or the handshake fails): a 502 that says why, instead of a bare alert.
std::string http_bad_gateway(const std::string& reason) {
  std::string body = "vesicle: egress proxy: " + reason + "\n";
  return "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n"
         "Content-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

} // namespace

// Something with sockets that stop() must close.
struct Tracked {
  virtual ~Tracked() = default;
  virtual void close_sockets() = 0;
};

namespace {
struct ProxyConnection;
}

class SlotService : public std::enable_shared_from_this<SlotService> {
public:
  SlotService(asio::io_context& io, SlotServiceSpec spec)
      : io_(io), spec_(std::move(spec)), dns_udp_(io), dns_tcp_(io), proxy_(io),
        random_(std::random_device{}()) {}

  Result<void> open();
  void start();
  void stop();

  LearnedAddresses& learned() { return learned_; }
  const SlotServiceCounters& counters() const { return counters_; }
  bool stopped() const { return stopped_; }
  void track(Tracked* item) { tracked_.insert(item); }
  void untrack(Tracked* item) { tracked_.erase(item); }
  // Sockets of this slot in use beyond the listeners (proxied connections,
  // TCP DNS, upstream queries): bounded, so a guest cannot make hostd hold
  // unbounded fds. Past it, the guest's connections are refused.
  bool at_capacity() const { return tracked_.size() >= spec_.proxy_max_connections; }
  void learn_inherited();

private:
  awaitable<void> serve_udp(std::shared_ptr<SlotService> self);
  awaitable<void> answer_udp(std::shared_ptr<SlotService> self, std::vector<uint8_t> query,
                             udp::endpoint peer);
  awaitable<void> serve_tcp_dns(std::shared_ptr<SlotService> self);
  awaitable<void> answer_tcp(std::shared_ptr<SlotService> self, tcp::socket socket);
  awaitable<std::optional<std::vector<uint8_t>>> answer(std::vector<uint8_t> query);
  awaitable<Result<dns::Message>> ask_upstream(const dns::Message& query);
  awaitable<void> serve_proxy(std::shared_ptr<SlotService> self);
  awaitable<void> proxy(std::shared_ptr<SlotService> self, tcp::socket client);
  awaitable<void> proxy_tls(std::shared_ptr<ProxyConnection> connection, std::vector<uint8_t> head,
                            tcp::endpoint upstream);
  awaitable<void> proxy_http(std::shared_ptr<ProxyConnection> connection, HttpGate gate,
                             tcp::endpoint upstream);
  awaitable<void> proxy_intercepted(std::shared_ptr<ProxyConnection> connection,
                                    std::vector<uint8_t> head, tcp::endpoint upstream,
                                    std::string name, std::vector<HeaderField> headers);
  awaitable<bool> connect_upstream(std::shared_ptr<ProxyConnection> connection,
                                   tcp::endpoint destination);
  // Why a connection for `name` to `destination` is refused, or empty.
  std::string refusal(const std::string& name, Ipv4 destination);
  void allow_addresses(const std::string& name, const std::vector<Learned>& learned);
  Result<UniqueFd> slot_socket(int type);

  asio::io_context& io_;
  SlotServiceSpec spec_;
  udp::socket dns_udp_;
  tcp::acceptor dns_tcp_;
  tcp::acceptor proxy_;
  LearnedAddresses learned_;
  SlotServiceCounters counters_;
  std::unordered_set<Tracked*> tracked_;
  size_t inflight_queries_ = 0;
  bool stopped_ = false;
  std::mt19937 random_;
};

Result<UniqueFd> SlotService::slot_socket(int type) {
  return socket_in(spec_.netns, AF_INET, type | SOCK_NONBLOCK);
}

Result<void> SlotService::open() {
  auto listener = [&](int type, uint16_t port) -> Result<UniqueFd> {
    auto fd = slot_socket(type);
    if (!fd) return fd;
    int one = 1;
    setsockopt(fd->get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr = layout::kGatewayAddress.to_network();
    if (bind(fd->get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      return sys_error("bind", layout::kGatewayAddress.str() + ":" + std::to_string(port) + " in " +
                                   spec_.netns.name());
    }
    if (type == SOCK_STREAM && listen(fd->get(), 128) != 0) {
      return sys_error("listen", layout::kGatewayAddress.str() + ":" + std::to_string(port));
    }
    return fd;
  };
  auto udp_fd = listener(SOCK_DGRAM, layout::kDnsPort);
  if (!udp_fd) return std::move(udp_fd).error().with_context("opening the DNS forwarder");
  auto tcp_fd = listener(SOCK_STREAM, layout::kDnsPort);
  if (!tcp_fd) return std::move(tcp_fd).error().with_context("opening the DNS forwarder");
  auto proxy_fd = listener(SOCK_STREAM, layout::kProxyPort);
  if (!proxy_fd) return std::move(proxy_fd).error().with_context("opening the egress proxy");
  error_code ec;
  dns_udp_.assign(udp::v4(), udp_fd->release(), ec);
  if (!ec) dns_tcp_.assign(tcp::v4(), tcp_fd->release(), ec);
  if (!ec) proxy_.assign(tcp::v4(), proxy_fd->release(), ec);
  if (ec) return make_error("assign listening socket to asio", ec.message(), spec_.netns.name());
  return {};
}

void SlotService::start() {
  auto self = shared_from_this();
  asio::co_spawn(io_, serve_udp(self), asio::detached);
  asio::co_spawn(io_, serve_tcp_dns(self), asio::detached);
  asio::co_spawn(io_, serve_proxy(self), asio::detached);
}

void SlotService::stop() {
  stopped_ = true;
  error_code ignored;
  dns_udp_.close(ignored);
  dns_tcp_.close(ignored);
  proxy_.close(ignored);
  // close_sockets() may end a coroutine and so untrack itself: iterate a copy.
  auto items = std::vector<Tracked*>(tracked_.begin(), tracked_.end());
  for (auto* item : items) {
    if (tracked_.count(item)) item->close_sockets();
  }
}

void SlotService::learn_inherited() {
  auto now = Clock::now();
  for (const auto& entry : spec_.inherited) {
    if (entry.expires <= now) continue;
    auto lifetime = std::chrono::duration_cast<std::chrono::seconds>(entry.expires - now);
    if (lifetime.count() < 1) continue;
    allow_addresses(entry.name, {Learned{entry.address, lifetime}});
  }
}

// Records the addresses for `name` and opens the slot's firewall for them,
// before the guest gets the answer that names them.
void SlotService::allow_addresses(const std::string& name, const std::vector<Learned>& learned) {
  auto now = Clock::now();
  learned_.expire(now);
  for (const auto& item : learned) {
    bool present = false;
    for (const auto& entry : learned_.entries()) {
      if (entry.address == item.address) present = true;
    }
    std::vector<AllowedElement> element{{item.address, item.lifetime}};
    auto added = spec_.nft->run(allowed_elements(spec_.nft_table, element, present));
    if (!added && present)
      added = spec_.nft->run(allowed_elements(spec_.nft_table, element, false));
    if (!added) {
      // The guest gets the answer but cannot connect: fail closed.
      ++counters_.dns_failed;
      continue;
    }
    learned_.learn(name, item.address, now + item.lifetime);
  }
}

awaitable<void> SlotService::serve_udp(std::shared_ptr<SlotService> self) {
  std::vector<uint8_t> buffer(dns::kMaxMessage);
  while (!stopped_) {
    udp::endpoint peer;
    error_code ec;
    size_t n = co_await dns_udp_.async_receive_from(asio::buffer(buffer), peer,
                                                    asio::redirect_error(use_awaitable, ec));
    if (stopped_) break;
    if (ec) continue;
    if (inflight_queries_ >= kMaxInflightQueries) continue; // shed load: the guest retries
    ++inflight_queries_;
    asio::co_spawn(io_,
                   answer_udp(self, std::vector<uint8_t>(buffer.begin(), buffer.begin() + n), peer),
                   asio::detached);
  }
}

// `self` is never read: the coroutine frame holds it so the service outlives
// the query.
awaitable<void> SlotService::answer_udp([[maybe_unused]] std::shared_ptr<SlotService> self,
                                        std::vector<uint8_t> query, udp::endpoint peer) {
  if (stopped_) {
    --inflight_queries_;
    co_return;
  }
  auto reply = co_await answer(std::move(query));
  --inflight_queries_;
  if (!reply || stopped_) co_return;
  error_code ec;
  co_await dns_udp_.async_send_to(asio::buffer(*reply), peer,
                                  asio::redirect_error(use_awaitable, ec));
}

awaitable<void> SlotService::serve_tcp_dns(std::shared_ptr<SlotService> self) {
  while (!stopped_) {
    error_code ec;
    tcp::socket socket = co_await dns_tcp_.async_accept(asio::redirect_error(use_awaitable, ec));
    if (stopped_) break;
    if (ec) continue;
    if (at_capacity()) continue;
    asio::co_spawn(io_, answer_tcp(self, std::move(socket)), asio::detached);
  }
}

namespace {
struct TcpDnsConnection : Tracked {
  TcpDnsConnection(std::shared_ptr<SlotService> owner, tcp::socket s)
      : service(std::move(owner)), socket(std::move(s)), timer(socket.get_executor()) {
    service->track(this);
  }
  ~TcpDnsConnection() override { service->untrack(this); }
  void close_sockets() override {
    error_code ignored;
    socket.close(ignored);
    timer.cancel();
  }
  std::shared_ptr<SlotService> service;
  tcp::socket socket;
  asio::steady_timer timer;
};
} // namespace

awaitable<void> SlotService::answer_tcp(std::shared_ptr<SlotService> self, tcp::socket socket) {
  if (stopped_) co_return;
  auto connection = std::make_shared<TcpDnsConnection>(self, std::move(socket));
  for (int served = 0; served < 16 && !stopped_; ++served) {
    connection->timer.expires_after(kTcpDnsIdle);
    connection->timer.async_wait([weak = std::weak_ptr(connection)](error_code ec) {
      if (auto c = weak.lock(); c && !ec) c->close_sockets();
    });
    std::array<uint8_t, 2> length_bytes;
    error_code ec;
    co_await asio::async_read(connection->socket, asio::buffer(length_bytes),
                              asio::redirect_error(use_awaitable, ec));
    if (ec || stopped_) break;
    size_t length = size_t{length_bytes[0]} << 8 | length_bytes[1];
    if (length == 0 || length > dns::kMaxMessage) break;
    std::vector<uint8_t> query(length);
    co_await asio::async_read(connection->socket, asio::buffer(query),
                              asio::redirect_error(use_awaitable, ec));
    connection->timer.cancel();
    if (ec || stopped_) break;
    auto reply = co_await answer(std::move(query));
    if (!reply || stopped_) break;
    std::array<uint8_t, 2> reply_length = {static_cast<uint8_t>(reply->size() >> 8),
                                           static_cast<uint8_t>(reply->size())};
    std::array<asio::const_buffer, 2> parts = {asio::buffer(reply_length), asio::buffer(*reply)};
    co_await asio::async_write(connection->socket, parts, asio::redirect_error(use_awaitable, ec));
    if (ec) break;
  }
  connection->close_sockets();
}

awaitable<std::optional<std::vector<uint8_t>>>
SlotService::answer(std::vector<uint8_t> query_bytes) {
  auto reply_with = [](const dns::Message& reply) -> std::optional<std::vector<uint8_t>> {
    auto encoded = dns::encode(reply);
    if (!encoded) return std::nullopt;
    return std::move(*encoded);
  };
  auto query = dns::parse(query_bytes);
  if (!query) {
    auto header = dns::parse_header(query_bytes);
    if (!header || header->qr) co_return std::nullopt;
    dns::Message reply;
    reply.header = *header;
    reply.header.qr = true;
    reply.header.rcode = dns::kFormErr;
    co_return reply_with(reply);
  }
  auto decision = decide_query(*query, spec_.policy);
  switch (decision.action) {
  case QueryAction::formerr:
    if (query->header.qr) co_return std::nullopt;
    co_return reply_with(empty_reply(*query, dns::kFormErr));
  case QueryAction::notimp:
    co_return reply_with(empty_reply(*query, dns::kNotImp));
  case QueryAction::nxdomain:
    ++counters_.dns_refused;
    co_return reply_with(empty_reply(*query, dns::kNxDomain));
  case QueryAction::nodata:
    co_return reply_with(empty_reply(*query, dns::kNoError));
  case QueryAction::forward:
    break;
  }
  auto id = static_cast<uint16_t>(random_());
  auto upstream = co_await ask_upstream(upstream_query(query->questions.front(), id));
  if (stopped_) co_return std::nullopt;
  if (!upstream) {
    ++counters_.dns_failed;
    co_return reply_with(empty_reply(*query, dns::kServFail));
  }
  auto filtered = filter_answer(*query, *upstream, id, spec_.policy);
  if (!filtered) {
    ++counters_.dns_failed;
    co_return reply_with(empty_reply(*query, dns::kServFail));
  }
  counters_.dns_rebind_dropped += filtered->refused.size();
  ++counters_.dns_forwarded;
  allow_addresses(decision.name, filtered->learned);
  co_return reply_with(filtered->reply);
}

namespace {
struct UpstreamExchange : Tracked {
  UpstreamExchange(std::shared_ptr<SlotService> owner, asio::io_context& io)
      : service(std::move(owner)), socket(io), timer(io) {
    service->track(this);
  }
  ~UpstreamExchange() override { service->untrack(this); }
  void close_sockets() override {
    error_code ignored;
    socket.close(ignored);
    timer.cancel();
  }
  std::shared_ptr<SlotService> service;
  udp::socket socket;
  asio::steady_timer timer;
  unsigned attempt = 0;
  bool timed_out = false;
};
} // namespace

awaitable<Result<dns::Message>> SlotService::ask_upstream(const dns::Message& query) {
  auto wire = dns::encode(query);
  if (!wire) co_return std::move(wire).error();
  // Never open a socket in a slot that has been detached (and may already
  // belong to another sandbox).
  if (stopped_) co_return make_error("ask upstream resolver", "the slot was released");
  auto fd = slot_socket(SOCK_DGRAM);
  if (!fd) co_return std::move(fd).error();
  auto exchange = std::make_shared<UpstreamExchange>(shared_from_this(), io_);
  error_code ec;
  exchange->socket.assign(udp::v4(), fd->release(), ec);
  if (ec) co_return make_error("assign upstream DNS socket", ec.message());
  udp::endpoint resolver(to_asio(spec_.upstream_resolver), 53);
  exchange->socket.connect(resolver, ec);
  if (ec) co_return make_error("connect", ec.message(), resolver.address().to_string() + ":53");
  std::vector<uint8_t> buffer(dns::kMaxMessage);
  for (int attempt = 0; attempt < kUpstreamAttempts && !stopped_; ++attempt) {
    co_await exchange->socket.async_send(asio::buffer(*wire),
                                         asio::redirect_error(use_awaitable, ec));
    if (ec) continue;
    exchange->attempt = static_cast<unsigned>(attempt);
    exchange->timed_out = false;
    exchange->timer.expires_after(kUpstreamTimeout);
    exchange->timer.async_wait(
        [weak = std::weak_ptr(exchange), attempt = exchange->attempt](error_code tec) {
          if (auto e = weak.lock(); e && !tec && e->attempt == attempt) {
            e->timed_out = true;
            error_code ignored;
            e->socket.cancel(ignored);
          }
        });
    while (!stopped_) {
      size_t n = co_await exchange->socket.async_receive(asio::buffer(buffer),
                                                         asio::redirect_error(use_awaitable, ec));
      if (ec) break;
      auto reply = dns::parse(std::span<const uint8_t>(buffer.data(), n));
      if (reply && reply->header.qr && reply->header.id == query.header.id) {
        exchange->timer.cancel();
        co_return std::move(*reply);
      }
    }
    exchange->timer.cancel();
    if (!exchange->timed_out && ec == asio::error::operation_aborted) break; // stopped
    if (ec == asio::error::connection_refused) break;
  }
  co_return make_error("ask upstream resolver",
                       ec ? ec.message() : std::string("no answer in time"),
                       spec_.upstream_resolver.str());
}

namespace {
// An accept that failed (EMFILE, ENFILE, ENOBUFS) fails again at once: wait
// a little instead of spinning the I/O thread.
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);

// Refused at accept (over the cap): a reset, so the guest's client fails at
// once instead of seeing a connection that closes without a word.
void reset(tcp::socket& socket) {
  error_code ignored;
  socket.set_option(asio::socket_base::linger(true, 0), ignored);
  socket.close(ignored);
}
} // namespace

awaitable<void> SlotService::serve_proxy(std::shared_ptr<SlotService> self) {
  asio::steady_timer backoff(io_);
  while (!stopped_) {
    error_code ec;
    tcp::socket client = co_await proxy_.async_accept(asio::redirect_error(use_awaitable, ec));
    if (stopped_) break;
    if (ec) {
      backoff.expires_after(kAcceptBackoff);
      co_await backoff.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    if (at_capacity()) {
      ++counters_.proxy_over_capacity;
      reset(client);
      continue;
    }
    asio::co_spawn(io_, proxy(self, std::move(client)), asio::detached);
  }
}

namespace {
struct ProxyConnection : Tracked {
  ProxyConnection(std::shared_ptr<SlotService> owner, tcp::socket c)
      : service(std::move(owner)), client(std::move(c)), upstream(client.get_executor()),
        timer(client.get_executor()), idle_timer(client.get_executor()),
        upstream_done_signal(client.get_executor()) {
    service->track(this);
  }
  ~ProxyConnection() override { service->untrack(this); }
  void close_sockets() override {
    closed = true;
    error_code ignored;
    client.close(ignored);
    upstream.close(ignored);
    timer.cancel();
    idle_timer.cancel();
  }
  void active() { last_active = Clock::now(); }
  std::shared_ptr<SlotService> service;
  tcp::socket client;
  tcp::socket upstream;
  asio::steady_timer timer; // the first bytes, then the upstream connect
  asio::steady_timer idle_timer;
  Clock::time_point last_active = Clock::now();
  bool closed = false;
  int directions_done = 0;
  // A later request head was refused: the upstream is closed, and the
  // upstream-to-client pump must end without closing the client, which
  // still gets the 403.
  bool refusing = false;
  bool upstream_pump_done = false;
  asio::steady_timer upstream_done_signal; // cancelled when that pump ends
};

// Closes the connection when no byte passed either way for `idle`. Holds
// it only weakly, so a connection whose coroutines ended goes away (and
// its timer with it, which ends this wait) without waiting for the timeout.
awaitable<void> watch_idle(std::weak_ptr<ProxyConnection> weak, std::chrono::seconds idle) {
  while (true) {
    asio::steady_timer* timer = nullptr;
    {
      auto connection = weak.lock();
      if (!connection || connection->closed) co_return;
      auto deadline = connection->last_active + idle;
      if (Clock::now() >= deadline) {
        connection->close_sockets();
        co_return;
      }
      connection->idle_timer.expires_at(deadline);
      timer = &connection->idle_timer;
    }
    error_code ec;
    co_await timer->async_wait(asio::redirect_error(use_awaitable, ec));
  }
}

// One direction has ended: pass a clean end on as a half-close; anything
// else ends both directions.
void direction_done(ProxyConnection& connection, error_code ec, tcp::socket& to) {
  error_code ignored;
  if (ec == asio::error::eof) {
    to.shutdown(tcp::socket::shutdown_send, ignored);
  } else if (!connection.refusing) {
    connection.close_sockets();
  }
  if (++connection.directions_done == 2 && !connection.refusing) connection.close_sockets();
}

awaitable<void> pump(std::shared_ptr<ProxyConnection> connection, tcp::socket& from,
                     tcp::socket& to) {
  std::vector<uint8_t> buffer(64 * 1024);
  error_code ec;
  while (true) {
    size_t n = co_await from.async_read_some(asio::buffer(buffer),
                                             asio::redirect_error(use_awaitable, ec));
    if (ec) break;
    connection->active();
    co_await asio::async_write(to, asio::buffer(buffer.data(), n),
                               asio::redirect_error(use_awaitable, ec));
    if (ec) break;
    connection->active();
  }
  direction_done(*connection, ec, to);
}

awaitable<void> pump_upstream_to_client(std::shared_ptr<ProxyConnection> connection) {
  co_await pump(connection, connection->upstream, connection->client);
  connection->upstream_pump_done = true;
  connection->upstream_done_signal.cancel();
}
} // namespace

std::string SlotService::refusal(const std::string& name, Ipv4 destination) {
  if (!spec_.policy.allow.allows(name)) return name + " is not in this sandbox's allowlist";
  if (contains_any(spec_.policy.denied, destination)) {
    return destination.str() + " is in a denied network";
  }
  if (!learned_.allows(name, destination, Clock::now())) {
    return destination.str() + " is not an address DNS returned for " + name;
  }
  return {};
}

awaitable<bool> SlotService::connect_upstream(std::shared_ptr<ProxyConnection> connection,
                                              tcp::endpoint destination) {
  if (stopped_) co_return false;
  auto fd = slot_socket(SOCK_STREAM);
  if (!fd) co_return false;
  error_code ec;
  connection->upstream.assign(tcp::v4(), fd->release(), ec);
  if (ec) co_return false;
  connection->timer.expires_after(kConnectTimeout);
  connection->timer.async_wait([weak = std::weak_ptr(connection)](error_code tec) {
    if (auto c = weak.lock(); c && !tec) c->close_sockets();
  });
  co_await connection->upstream.async_connect(destination, asio::redirect_error(use_awaitable, ec));
  connection->timer.cancel();
  co_return !ec && !stopped_ && !connection->closed;
}

awaitable<void> SlotService::proxy(std::shared_ptr<SlotService> self, tcp::socket client) {
  if (stopped_) co_return;
  auto connection = std::make_shared<ProxyConnection>(self, std::move(client));
  asio::co_spawn(io_, watch_idle(connection, spec_.proxy_idle_timeout), asio::detached);

  sockaddr_in original{};
  socklen_t length = sizeof original;
  if (getsockopt(connection->client.native_handle(), SOL_IP, SO_ORIGINAL_DST, &original, &length) !=
      0) {
    connection->close_sockets();
    co_return;
  }
  Ipv4 destination = Ipv4::from_network(original.sin_addr);
  tcp::endpoint upstream(to_asio(destination), ntohs(original.sin_port));

  // Whatever the port, the first bytes say what the client speaks: a TLS
  // handshake record, or else an HTTP request. A client that waits for the
  // server to speak first (SSH, SMTP) names no host and is refused when the
  // peek times out.
  connection->timer.expires_after(kPeekTimeout);
  connection->timer.async_wait([weak = std::weak_ptr(connection)](error_code ec) {
    if (auto c = weak.lock(); c && !ec) c->close_sockets();
  });
  std::vector<uint8_t> head;
  std::vector<uint8_t> buffer(4096);
  error_code ec;
  size_t n = co_await connection->client.async_read_some(asio::buffer(buffer),
                                                         asio::redirect_error(use_awaitable, ec));
  if (ec || stopped_) {
    connection->close_sockets();
    co_return;
  }
  connection->active();
  if (buffer[0] == kTlsHandshakeRecord) {
    head.assign(buffer.begin(), buffer.begin() + n);
    co_await proxy_tls(connection, std::move(head), upstream);
  } else {
    HttpGate gate;
    gate.append(std::span<const uint8_t>(buffer.data(), n));
    co_await proxy_http(connection, std::move(gate), upstream);
  }
}

awaitable<void> SlotService::proxy_tls(std::shared_ptr<ProxyConnection> connection,
                                       std::vector<uint8_t> head, tcp::endpoint upstream) {
  PeekResult peeked = peek_tls_client_hello(head);
  std::vector<uint8_t> buffer(4096);
  error_code ec;
  while (peeked.status == PeekStatus::need_more && head.size() < kMaxPeekBytes) {
    size_t n = co_await connection->client.async_read_some(asio::buffer(buffer),
                                                           asio::redirect_error(use_awaitable, ec));
    if (ec || stopped_) {
      connection->close_sockets();
      co_return;
    }
    head.insert(head.end(), buffer.begin(), buffer.begin() + n);
    peeked = peek_tls_client_hello(head);
  }
  connection->timer.cancel();
  std::string reason;
  if (peeked.status != PeekStatus::done) {
    reason = peeked.status == PeekStatus::invalid ? peeked.error : "ClientHello too large";
  } else {
    reason = refusal(peeked.name, Ipv4{upstream.address().to_v4().to_uint()});
  }
  if (!reason.empty()) {
    ++counters_.proxy_refused;
    co_await asio::async_write(connection->client, asio::buffer(kTlsAccessDenied),
                               asio::redirect_error(use_awaitable, ec));
    connection->close_sockets();
    co_return;
  }
  if (auto granted = spec_.secrets.find(peeked.name);
      granted != spec_.secrets.end() && spec_.interceptor) {
    co_await proxy_intercepted(connection, std::move(head), upstream, peeked.name, granted->second);
    co_return;
  }
  if (!co_await connect_upstream(connection, upstream)) {
    connection->close_sockets();
    co_return;
  }
  co_await asio::async_write(connection->upstream, asio::buffer(head),
                             asio::redirect_error(use_awaitable, ec));
  if (ec) {
    connection->close_sockets();
    co_return;
  }
  ++counters_.proxy_allowed;
  asio::co_spawn(io_, pump_upstream_to_client(connection), asio::detached);
  co_await pump(connection, connection->client, connection->upstream);
}

// Every request head on the connection is checked before a byte of it goes
// upstream (HttpGate); the upstream is connected for the first one.
awaitable<void> SlotService::proxy_http(std::shared_ptr<ProxyConnection> connection, HttpGate gate,
                                        tcp::endpoint upstream) {
  const Ipv4 destination{upstream.address().to_v4().to_uint()};
  bool connected = false;
  std::vector<uint8_t> buffer(64 * 1024);
  error_code ec;
  while (!stopped_ && !connection->closed) {
    auto step = gate.next();
    if (step.verdict == HttpGate::Verdict::need_more) {
      size_t n = co_await connection->client.async_read_some(
          asio::buffer(buffer), asio::redirect_error(use_awaitable, ec));
      if (ec) break;
      connection->active();
      gate.append(std::span<const uint8_t>(buffer.data(), n));
      continue;
    }
    std::string reason;
    if (step.verdict == HttpGate::Verdict::invalid) {
      reason = step.error;
    } else if (step.verdict == HttpGate::Verdict::head) {
      reason = refusal(step.host, destination);
    }
    if (!reason.empty()) {
      ++counters_.proxy_refused;
      if (connected) {
        // Stop the answers to earlier requests first, so the 403 is not
        // written into the middle of one.
        connection->refusing = true;
        error_code ignored;
        connection->upstream.close(ignored);
        if (!connection->upstream_pump_done) {
          connection->upstream_done_signal.expires_at(Clock::time_point::max());
          co_await connection->upstream_done_signal.async_wait(
              asio::redirect_error(use_awaitable, ignored));
        }
      }
      connection->timer.cancel();
      auto response = http_forbidden(reason);
      co_await asio::async_write(connection->client, asio::buffer(response),
                                 asio::redirect_error(use_awaitable, ec));
      connection->close_sockets();
      co_return;
    }
    if (!connected) {
      connection->timer.cancel();
      if (!co_await connect_upstream(connection, upstream)) {
        connection->close_sockets();
        co_return;
      }
      connected = true;
      asio::co_spawn(io_, pump_upstream_to_client(connection), asio::detached);
    }
    if (step.verdict == HttpGate::Verdict::head) ++counters_.proxy_allowed;
    co_await asio::async_write(connection->upstream,
                               asio::buffer(gate.buffered().data(), step.bytes),
                               asio::redirect_error(use_awaitable, ec));
    if (ec) break;
    connection->active();
    gate.forwarded(step.bytes);
  }
  if (!connected) {
    connection->close_sockets();
    co_return;
  }
  direction_done(*connection, ec, connection->upstream);
}

namespace {
// Both TLS sessions of an intercepted connection, over the connection's own
// sockets (so close_sockets() still ends everything). Holds the connection,
// which must outlive the streams.
struct Intercepted {
  Intercepted(std::shared_ptr<ProxyConnection> c, asio::ssl::context& server,
              asio::ssl::context& client)
      : connection(std::move(c)), guest(connection->client, server),
        host(connection->upstream, client) {}
  std::shared_ptr<ProxyConnection> connection;
  asio::ssl::stream<tcp::socket&> guest;
  asio::ssl::stream<tcp::socket&> host;
};

awaitable<void> pump_host_to_guest(std::shared_ptr<Intercepted> tls) {
  std::vector<uint8_t> buffer(64 * 1024);
  error_code ec;
  while (true) {
    size_t n = co_await tls->host.async_read_some(asio::buffer(buffer),
                                                  asio::redirect_error(use_awaitable, ec));
    if (ec) break;
    tls->connection->active();
    co_await asio::async_write(tls->guest, asio::buffer(buffer.data(), n),
                               asio::redirect_error(use_awaitable, ec));
    if (ec) break;
    tls->connection->active();
  }
  // A TLS session has no half-close worth keeping: the server's end (or a
  // failure) ends the connection, unless a refusal is waiting for this pump
  // to stop so it can write its answer.
  tls->connection->upstream_pump_done = true;
  tls->connection->upstream_done_signal.cancel();
  if (!tls->connection->refusing) tls->connection->close_sockets();
}

// The upstream TLS failure in words the guest's user can act on.
std::string upstream_failure(asio::ssl::stream<tcp::socket&>& host, error_code ec,
                             const std::string& name) {
  long verify = SSL_get_verify_result(host.native_handle());
  if (verify != X509_V_OK) {
    return "the certificate of " + name + " did not verify (" +
           X509_verify_cert_error_string(verify) + "); refusing to send it the secret";
  }
  return "TLS handshake with " + name + " failed: " + ec.message();
}
} // namespace

// A granted name: the proxy is the guest's TLS server (a leaf for `name`
// from the per-install CA), opens its own verified TLS connection to the
// real host, and sets the granted headers on every request head it passes.
// A head for another Host is refused (403), so the secret only ever goes to
// the name it was granted for.
awaitable<void> SlotService::proxy_intercepted(std::shared_ptr<ProxyConnection> connection,
                                               std::vector<uint8_t> head, tcp::endpoint upstream,
                                               std::string name, std::vector<HeaderField> headers) {
  auto server = spec_.interceptor->server_context(name);
  if (!server) {
    ++counters_.proxy_refused;
    connection->close_sockets();
    co_return;
  }
  auto tls =
      std::make_shared<Intercepted>(connection, **server, spec_.interceptor->upstream_context());
  error_code ec;
  connection->timer.expires_after(kPeekTimeout);
  connection->timer.async_wait([weak = std::weak_ptr(connection)](error_code tec) {
    if (auto c = weak.lock(); c && !tec) c->close_sockets();
  });
  co_await tls->guest.async_handshake(asio::ssl::stream_base::server, asio::buffer(head),
                                      asio::redirect_error(use_awaitable, ec));
  connection->timer.cancel();
  if (ec || stopped_) {
    connection->close_sockets();
    co_return;
  }
  ++counters_.proxy_intercepted;

  // The real host, verified, before any request is read.
  std::string failure;
  if (!co_await connect_upstream(connection, upstream)) {
    failure = "could not connect to " + name;
  } else if (auto named = TlsInterceptor::expect_host(tls->host.native_handle(), name); !named) {
    failure = named.error().message();
  } else {
    connection->timer.expires_after(kConnectTimeout);
    connection->timer.async_wait([weak = std::weak_ptr(connection)](error_code tec) {
      if (auto c = weak.lock(); c && !tec) c->close_sockets();
    });
    co_await tls->host.async_handshake(asio::ssl::stream_base::client,
                                       asio::redirect_error(use_awaitable, ec));
    connection->timer.cancel();
    if (ec) failure = upstream_failure(tls->host, ec, name);
  }
  if (connection->closed || stopped_) co_return;
  if (!failure.empty()) ++counters_.proxy_upstream_refused;

  HttpGate gate;
  bool pumping = false; // the host-to-guest pump runs from the first forwarded head
  std::vector<uint8_t> buffer(64 * 1024);
  while (!stopped_ && !connection->closed) {
    auto step = gate.next();
    if (step.verdict == HttpGate::Verdict::need_more) {
      size_t n = co_await tls->guest.async_read_some(asio::buffer(buffer),
                                                     asio::redirect_error(use_awaitable, ec));
      if (ec) break;
      connection->active();
      gate.append(std::span<const uint8_t>(buffer.data(), n));
      continue;
    }
    std::string answer;
    if (!failure.empty()) {
      answer = http_bad_gateway(failure);
    } else if (step.verdict == HttpGate::Verdict::invalid) {
      answer = http_forbidden(step.error);
    } else if (step.verdict == HttpGate::Verdict::head && step.host != name) {
      answer = http_forbidden("Host " + step.host + " on a TLS connection to " + name);
    }
    if (!answer.empty()) {
      if (failure.empty()) ++counters_.proxy_refused;
      error_code ignored;
      // The pump must stop writing to the guest before the answer does (one
      // writer at a time on a TLS stream, and not inside an earlier answer).
      connection->refusing = true;
      connection->upstream.close(ignored);
      if (pumping && !connection->upstream_pump_done) {
        connection->upstream_done_signal.expires_at(Clock::time_point::max());
        co_await connection->upstream_done_signal.async_wait(
            asio::redirect_error(use_awaitable, ignored));
      }
      co_await asio::async_write(tls->guest, asio::buffer(answer),
                                 asio::redirect_error(use_awaitable, ignored));
      break;
    }
    if (!pumping) {
      pumping = true;
      asio::co_spawn(io_, pump_host_to_guest(tls), asio::detached);
    }
    const auto* front = reinterpret_cast<const char*>(gate.buffered().data());
    if (step.verdict == HttpGate::Verdict::head) {
      ++counters_.proxy_allowed;
      auto rewritten = rewrite_request_head(std::string_view(front, step.bytes), headers);
      if (!rewritten) break;
      co_await asio::async_write(tls->host, asio::buffer(*rewritten),
                                 asio::redirect_error(use_awaitable, ec));
      OPENSSL_cleanse(rewritten->data(), rewritten->size());
    } else {
      co_await asio::async_write(tls->host, asio::buffer(front, step.bytes),
                                 asio::redirect_error(use_awaitable, ec));
    }
    if (ec) break;
    connection->active();
    gate.forwarded(step.bytes);
  }
  connection->close_sockets();
}

// ---------------------------------------------------------------------------

EgressServices::EgressServices()
    : work_(std::make_unique<asio::executor_work_guard<asio::io_context::executor_type>>(
          io_.get_executor())) {}

Result<std::unique_ptr<EgressServices>> EgressServices::start() {
  std::unique_ptr<EgressServices> services(new EgressServices());
  services->thread_ = std::thread([raw = services.get()] { raw->io_.run(); });
  return services;
}

EgressServices::~EgressServices() {
  on_io_thread([this] {
    for (auto& [id, slot] : slots_)
      slot->stop();
    slots_.clear();
    return 0;
  });
  work_.reset();
  // Coroutines end once their sockets are closed; give them a moment, then
  // stop the loop regardless.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!io_.stopped() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  io_.stop();
  if (thread_.joinable()) thread_.join();
}

template <class F> auto EgressServices::on_io_thread(F&& fn) -> decltype(fn()) {
  std::packaged_task<decltype(fn())()> task(std::forward<F>(fn));
  auto result = task.get_future();
  asio::post(io_, [&task] { task(); });
  return result.get();
}

Result<void> EgressServices::attach(SlotServiceSpec spec) {
  return on_io_thread([&]() -> Result<void> {
    uint32_t id = spec.slot_id;
    if (slots_.count(id)) {
      return make_error("attach egress services", "already attached", std::to_string(id));
    }
    auto service = std::make_shared<SlotService>(io_, std::move(spec));
    if (auto opened = service->open(); !opened) {
      service->stop();
      return opened;
    }
    service->learn_inherited();
    service->start();
    slots_[id] = std::move(service);
    return {};
  });
}

void EgressServices::detach(uint32_t slot_id) {
  on_io_thread([&] {
    auto found = slots_.find(slot_id);
    if (found == slots_.end()) return 0;
    found->second->stop();
    slots_.erase(found);
    return 0;
  });
}

std::vector<LearnedAddresses::Entry> EgressServices::learned(uint32_t slot_id) {
  return on_io_thread([&] {
    auto found = slots_.find(slot_id);
    if (found == slots_.end()) return std::vector<LearnedAddresses::Entry>{};
    found->second->learned().expire(Clock::now());
    return found->second->learned().entries();
  });
}

SlotServiceCounters EgressServices::counters(uint32_t slot_id) {
  return on_io_thread([&] {
    auto found = slots_.find(slot_id);
    return found == slots_.end() ? SlotServiceCounters{} : found->second->counters();
  });
}

} // namespace vesicle::net
