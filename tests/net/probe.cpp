#include "tests/net/probe.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <random>

namespace vesicle::net::probe {
namespace {

sockaddr_in endpoint(Ipv4 address, uint16_t port) {
  sockaddr_in out{};
  out.sin_family = AF_INET;
  out.sin_port = htons(port);
  out.sin_addr = address.to_network();
  return out;
}

std::string where(Ipv4 address, uint16_t port) {
  return address.str() + ":" + std::to_string(port);
}

void set_timeouts(int fd, milliseconds timeout) {
  timeval tv{static_cast<time_t>(timeout.count() / 1000),
             static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

Result<void> send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return sys_error("send", "");
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

Result<std::string> read_all(int fd, std::string what) {
  std::string out;
  char buffer[16384];
  while (true) {
    ssize_t n = recv(fd, buffer, sizeof buffer, 0);
    if (n == 0) return out;
    if (n < 0) {
      if (!out.empty() && (errno == ECONNRESET)) return out;
      return sys_error("recv", what);
    }
    out.append(buffer, static_cast<size_t>(n));
  }
}

std::string openssl_errors() {
  std::string text;
  while (unsigned long code = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof buffer);
    text += (text.empty() ? "" : "; ") + std::string(buffer);
  }
  return text.empty() ? "no OpenSSL error queued" : text;
}

} // namespace

Result<UniqueFd> tcp_connect(const Netns& netns, Ipv4 address, uint16_t port,
                             milliseconds timeout) {
  auto fd = socket_in(netns, AF_INET, SOCK_STREAM | SOCK_NONBLOCK);
  if (!fd) return fd;
  auto to = endpoint(address, port);
  if (connect(fd->get(), reinterpret_cast<sockaddr*>(&to), sizeof to) != 0 &&
      errno != EINPROGRESS) {
    return sys_error("connect", where(address, port) + " from " + netns.name());
  }
  pollfd waiting{fd->get(), POLLOUT, 0};
  int ready = poll(&waiting, 1, static_cast<int>(timeout.count()));
  if (ready == 0)
    return sys_error("connect", where(address, port) + " from " + netns.name(), ETIMEDOUT);
  int error = 0;
  socklen_t length = sizeof error;
  getsockopt(fd->get(), SOL_SOCKET, SO_ERROR, &error, &length);
  if (error != 0)
    return sys_error("connect", where(address, port) + " from " + netns.name(), error);
  int flags = fcntl(fd->get(), F_GETFL);
  fcntl(fd->get(), F_SETFL, flags & ~O_NONBLOCK);
  set_timeouts(fd->get(), timeout);
  return fd;
}

Result<std::string> http_get(const Netns& netns, Ipv4 address, uint16_t port,
                             const std::string& host, const std::string& path,
                             milliseconds timeout) {
  auto fd = tcp_connect(netns, address, port, timeout);
  if (!fd) return std::move(fd).error();
  std::string request =
      "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n";
  if (auto sent = send_all(fd->get(), request); !sent) return std::move(sent).error();
  return read_all(fd->get(), where(address, port));
}

Result<std::string> https_get(const Netns& netns, Ipv4 address, uint16_t port,
                              const std::string& sni, const std::string& host,
                              const std::filesystem::path& ca, milliseconds timeout) {
  auto fd = tcp_connect(netns, address, port, timeout);
  if (!fd) return std::move(fd).error();
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()),
                                                        SSL_CTX_free);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_load_verify_locations(ctx.get(), ca.c_str(), nullptr) != 1) {
    return make_error("load CA", openssl_errors(), ca.string());
  }
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  SSL_set_fd(ssl.get(), fd->get());
  if (!sni.empty()) {
    SSL_set_tlsext_host_name(ssl.get(), sni.c_str());
    SSL_set1_host(ssl.get(), sni.c_str());
  }
  if (SSL_connect(ssl.get()) != 1) {
    return make_error("TLS handshake", openssl_errors(), where(address, port) + " sni " + sni);
  }
  std::string request = "GET / HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n";
  if (SSL_write(ssl.get(), request.data(), static_cast<int>(request.size())) <= 0) {
    return make_error("TLS write", openssl_errors(), where(address, port));
  }
  std::string response;
  char buffer[16384];
  while (true) {
    int n = SSL_read(ssl.get(), buffer, sizeof buffer);
    if (n <= 0) break;
    response.append(buffer, static_cast<size_t>(n));
  }
  if (response.empty()) return make_error("TLS read", openssl_errors(), where(address, port));
  return response;
}

Result<std::string> read_banner(const Netns& netns, Ipv4 address, uint16_t port,
                                milliseconds timeout) {
  auto fd = tcp_connect(netns, address, port, timeout);
  if (!fd) return std::move(fd).error();
  auto text = read_all(fd->get(), where(address, port));
  if (text && text->empty())
    return make_error("read banner", "closed without a word", where(address, port));
  return text;
}

Result<DnsAnswer> dns_query(const Netns& netns, Ipv4 server, const std::string& name, uint16_t type,
                            bool over_tcp, milliseconds timeout) {
  dns::Message query;
  query.header.id = static_cast<uint16_t>(std::random_device{}());
  query.header.rd = true;
  query.questions.push_back({name, type, dns::kClassIN});
  auto wire = dns::encode(query);
  if (!wire) return std::move(wire).error();
  std::vector<uint8_t> reply(dns::kMaxMessage);
  size_t length = 0;
  if (over_tcp) {
    auto fd = tcp_connect(netns, server, 53, timeout);
    if (!fd) return std::move(fd).error();
    std::string framed = {static_cast<char>(wire->size() >> 8), static_cast<char>(wire->size())};
    framed.append(wire->begin(), wire->end());
    if (auto sent = send_all(fd->get(), framed); !sent) return std::move(sent).error();
    // The server keeps the connection for more queries: read one framed reply.
    auto read_exactly = [&](uint8_t* into, size_t count) -> Result<void> {
      while (count > 0) {
        ssize_t n = recv(fd->get(), into, count, 0);
        if (n == 0) return make_error("DNS over TCP", "closed mid-reply", where(server, 53));
        if (n < 0) return sys_error("recv DNS over TCP", where(server, 53));
        into += n;
        count -= static_cast<size_t>(n);
      }
      return {};
    };
    uint8_t prefix[2];
    if (auto got = read_exactly(prefix, 2); !got) return std::move(got).error();
    length = size_t{prefix[0]} << 8 | prefix[1];
    if (length > reply.size())
      return make_error("DNS over TCP", "reply too long", where(server, 53));
    if (auto got = read_exactly(reply.data(), length); !got) return std::move(got).error();
  } else {
    auto fd = socket_in(netns, AF_INET, SOCK_DGRAM);
    if (!fd) return std::move(fd).error();
    auto to = endpoint(server, 53);
    if (connect(fd->get(), reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
      return sys_error("connect", where(server, 53));
    }
    set_timeouts(fd->get(), timeout);
    if (send(fd->get(), wire->data(), wire->size(), 0) < 0)
      return sys_error("send", where(server, 53));
    ssize_t n = recv(fd->get(), reply.data(), reply.size(), 0);
    if (n < 0) return sys_error("DNS query " + name, where(server, 53));
    length = static_cast<size_t>(n);
  }
  auto parsed = dns::parse(std::span<const uint8_t>(reply.data(), length));
  if (!parsed) return std::move(parsed).error();
  if (parsed->header.id != query.header.id)
    return make_error("DNS query", "reply id mismatch", name);
  DnsAnswer answer;
  answer.rcode = parsed->header.rcode;
  for (const auto& record : parsed->answers) {
    if (auto address = dns::a_address(record)) {
      answer.addresses.push_back(*address);
    } else if (record.type != dns::kTypeCNAME) {
      ++answer.other_records;
    }
  }
  return answer;
}

Result<std::string> udp_echo(const Netns& netns, Ipv4 address, uint16_t port,
                             const std::string& payload, milliseconds timeout) {
  auto fd = socket_in(netns, AF_INET, SOCK_DGRAM);
  if (!fd) return fd.error();
  auto to = endpoint(address, port);
  if (connect(fd->get(), reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    return sys_error("connect", where(address, port));
  }
  set_timeouts(fd->get(), timeout);
  if (send(fd->get(), payload.data(), payload.size(), 0) < 0)
    return sys_error("send", where(address, port));
  char buffer[2048];
  ssize_t n = recv(fd->get(), buffer, sizeof buffer, 0);
  if (n < 0) return sys_error("UDP echo", where(address, port));
  return std::string(buffer, static_cast<size_t>(n));
}

Result<void> ping(const Netns& netns, Ipv4 address, milliseconds timeout) {
  auto fd = socket_in(netns, AF_INET, SOCK_RAW, IPPROTO_ICMP);
  if (!fd) return fd.error();
  uint16_t id = static_cast<uint16_t>(std::random_device{}());
  uint8_t packet[16] = {};
  auto* header = reinterpret_cast<icmphdr*>(packet);
  header->type = ICMP_ECHO;
  header->un.echo.id = htons(id);
  header->un.echo.sequence = htons(1);
  uint32_t sum = 0;
  for (size_t i = 0; i < sizeof packet; i += 2)
    sum += uint32_t{packet[i]} << 8 | packet[i + 1];
  while (sum >> 16)
    sum = (sum & 0xFFFF) + (sum >> 16);
  uint16_t checksum = static_cast<uint16_t>(~sum);
  packet[2] = static_cast<uint8_t>(checksum >> 8);
  packet[3] = static_cast<uint8_t>(checksum);
  auto to = endpoint(address, 0);
  if (sendto(fd->get(), packet, sizeof packet, 0, reinterpret_cast<sockaddr*>(&to), sizeof to) <
      0) {
    return sys_error("ping", address.str());
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto left =
        std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return sys_error("ping", address.str(), ETIMEDOUT);
    pollfd waiting{fd->get(), POLLIN, 0};
    if (poll(&waiting, 1, static_cast<int>(left.count())) <= 0) continue;
    uint8_t reply[1500];
    ssize_t n = recv(fd->get(), reply, sizeof reply, 0);
    if (n < static_cast<ssize_t>(sizeof(iphdr) + sizeof(icmphdr))) continue;
    auto* ip = reinterpret_cast<iphdr*>(reply);
    auto* icmp = reinterpret_cast<icmphdr*>(reply + ip->ihl * 4);
    if (ip->saddr != address.to_network().s_addr) continue;
    if (icmp->type == ICMP_ECHOREPLY && ntohs(icmp->un.echo.id) == id) return {};
    if (icmp->type == ICMP_DEST_UNREACH) {
      return make_error("ping", "destination unreachable", address.str());
    }
  }
}

Result<std::unique_ptr<Listener>> Listener::open(const Netns& netns, Ipv4 address, uint16_t port) {
  auto fd = socket_in(netns, AF_INET, SOCK_STREAM);
  if (!fd) return std::move(fd).error();
  int one = 1;
  setsockopt(fd->get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  auto at = endpoint(address, port);
  if (bind(fd->get(), reinterpret_cast<sockaddr*>(&at), sizeof at) != 0) {
    return sys_error("bind", where(address, port) + " in " + netns.name());
  }
  if (listen(fd->get(), 16) != 0) return sys_error("listen", where(address, port));
  socklen_t length = sizeof at;
  getsockname(fd->get(), reinterpret_cast<sockaddr*>(&at), &length);
  std::unique_ptr<Listener> listener(new Listener());
  listener->fd_ = std::move(*fd);
  listener->port_ = ntohs(at.sin_port);
  listener->thread_ = std::thread([raw = listener.get()] {
    while (!raw->stop_) {
      pollfd waiting{raw->fd_.get(), POLLIN, 0};
      if (poll(&waiting, 1, 50) <= 0) continue;
      int client = accept4(raw->fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (client >= 0) {
        ++raw->accepted_;
        close(client);
      }
    }
  });
  return listener;
}

Listener::~Listener() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

} // namespace vesicle::net::probe
