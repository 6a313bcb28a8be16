// Clients that run "inside" a namespace (a stand-in guest, a slot, the
// test internet): each makes its socket there, then talks from the test's
// own thread. Every call has a timeout; a refused or unanswered attempt is
// an Error, which is what the negative tests expect.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/unique_fd.hpp"
#include "net/dns.hpp"
#include "net/ipv4.hpp"
#include "net/netns.hpp"

namespace vesicle::net::probe {

using std::chrono::milliseconds;
inline constexpr milliseconds kShort{1500};

Result<UniqueFd> tcp_connect(const Netns& netns, Ipv4 address, uint16_t port,
                             milliseconds timeout = kShort);
// GET `path` with the given Host header; returns the whole response.
Result<std::string> http_get(const Netns& netns, Ipv4 address, uint16_t port,
                             const std::string& host, const std::string& path = "/",
                             milliseconds timeout = kShort);
// The same over TLS with `sni` (none when empty), verifying the server's
// certificate against `ca`.
Result<std::string> https_get(const Netns& netns, Ipv4 address, uint16_t port,
                              const std::string& sni, const std::string& host,
                              const std::filesystem::path& ca, milliseconds timeout = kShort);
// Reads what a server sends first (the banner servers).
Result<std::string> read_banner(const Netns& netns, Ipv4 address, uint16_t port,
                                milliseconds timeout = kShort);

struct DnsAnswer {
  uint8_t rcode = 0;
  std::vector<Ipv4> addresses; // A records
  size_t other_records = 0;    // AAAA and anything else in the answer section
};
Result<DnsAnswer> dns_query(const Netns& netns, Ipv4 server, const std::string& name,
                            uint16_t type = dns::kTypeA, bool over_tcp = false,
                            milliseconds timeout = kShort);

Result<std::string> udp_echo(const Netns& netns, Ipv4 address, uint16_t port,
                             const std::string& payload, milliseconds timeout = kShort);
Result<void> ping(const Netns& netns, Ipv4 address, milliseconds timeout = kShort);

// A TCP listener on address:port inside `netns` that accepts in the
// background and counts connections.
class Listener {
public:
  static Result<std::unique_ptr<Listener>> open(const Netns& netns, Ipv4 address, uint16_t port);
  ~Listener();
  int accepted() const { return accepted_.load(); }
  uint16_t port() const { return port_; }

private:
  Listener() = default;
  UniqueFd fd_;
  uint16_t port_ = 0;
  std::atomic<int> accepted_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

} // namespace vesicle::net::probe
