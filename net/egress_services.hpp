// The userspace half of allowlisted egress, run by hostd for each
// allowlisted slot, on one I/O thread of its own (Boost.Asio coroutines):
//
//  - a DNS forwarder on the slot's gateway address (172.16.0.1:53, UDP and
//    TCP) that answers only listed names, forwards those upstream and
//    rebuilds the answers (dns_policy.hpp), adding every address it hands
//    out to the slot's nft set "allowed" (with a timeout) before replying;
//  - a transparent proxy on 172.16.0.1:15001 that receives every TCP
//    connection of the guest, whatever its port (nft redirect), reads the
//    TLS SNI or the Host of each HTTP request head (peek.hpp, http_gate.hpp),
//    and connects to the original destination only when that name is
//    listed and the destination is an address DNS returned for that very
//    name. For a name with a secret grant (secrets.hpp) it terminates the
//    guest's TLS itself with a leaf from the egress CA (tls_intercept.hpp),
//    connects to the real host over TLS it verifies, and sets the granted
//    headers on every request head; a host that fails verification gets
//    no byte, the guest a 502 saying why. Each slot's sockets are capped (proxy_max_connections;
//    past it the guest's connection is reset) and a proxied connection idle for proxy_idle_timeout
//    is closed, so one sandbox cannot use up hostd's fds.
//
// Every socket is made inside the slot's namespace, so upstream queries and
// proxied connections leave through the slot's own NAT and firewall like
// the guest's traffic would.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "net/dns_policy.hpp"
#include "net/netns.hpp"
#include "net/nft.hpp"
#include "net/secrets.hpp"
#include "net/tls_intercept.hpp"

namespace vesicle::net {

struct SlotServiceSpec {
  uint32_t slot_id = 0;
  Netns netns;              // the slot's namespace (a handle of the service's own)
  std::shared_ptr<Nft> nft; // a context inside that namespace
  std::string nft_table;    // the slot's table, holding set "allowed"
  DnsPolicy policy;
  Ipv4 upstream_resolver;
  std::vector<LearnedAddresses::Entry> inherited; // addresses already allowed (fork)
  size_t proxy_max_connections = 128;             // BridgeConfig has the why
  std::chrono::seconds proxy_idle_timeout{300};
  // Names whose TLS the proxy terminates to set headers (checked, non-empty
  // only with an interceptor); every other name passes through untouched.
  SecretGrants secrets;
  std::shared_ptr<TlsInterceptor> interceptor;
};

struct SlotServiceCounters {
  uint64_t dns_forwarded = 0;      // queries answered from upstream
  uint64_t dns_refused = 0;        // queries for names not listed (NXDOMAIN)
  uint64_t dns_rebind_dropped = 0; // A records dropped as inside denied networks
  uint64_t dns_failed = 0;         // upstream unreachable or broken
  uint64_t proxy_allowed = 0;
  uint64_t proxy_refused = 0;          // names not listed, heads that are not HTTP or TLS
  uint64_t proxy_over_capacity = 0;    // connections reset at proxy_max_connections
  uint64_t proxy_intercepted = 0;      // TLS connections terminated to set secret headers
  uint64_t proxy_upstream_refused = 0; // upstream certificate or handshake failed (502)
};

class SlotService;

class EgressServices {
public:
  static Result<std::unique_ptr<EgressServices>> start();
  ~EgressServices();

  // Opens the slot's listening sockets and starts serving. Returns once it
  // listens. Must not be called from the services' own thread.
  Result<void> attach(SlotServiceSpec spec);
  // Closes every socket of the slot (listeners, upstream queries, proxied
  // connections) and returns once they are closed. Unknown ids are ignored.
  void detach(uint32_t slot_id);
  std::vector<LearnedAddresses::Entry> learned(uint32_t slot_id);
  SlotServiceCounters counters(uint32_t slot_id);

private:
  EgressServices();
  template <class F> auto on_io_thread(F&& fn) -> decltype(fn());

  boost::asio::io_context io_;
  std::unique_ptr<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::thread thread_;
  std::map<uint32_t, std::shared_ptr<SlotService>> slots_; // io thread only
};

} // namespace vesicle::net
