// Egress open, off and allowlisted, checked from inside stand-in guests
// (BridgeConfig::test_guest_namespaces) against the test internet
// (testnet.hpp). Needs root. Each test gets a fresh bridge manager and must
// leave no namespace, link, nft table, rule, route or fd behind.
#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <thread>

#include "net/bridge.hpp"
#include "net/conntrack.hpp"
#include "net/nft.hpp"
#include "net/ruleset.hpp"
#include "tests/net/probe.hpp"
#include "tests/net/testnet.hpp"

namespace vesicle::net {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using testnet::kAllowedIp;
using testnet::kDeniedIp;
using testnet::kLanIp;
using testnet::kMetadataIp;
using testnet::kResolverIp;

constexpr const char* kInternetPrefix = "vt";
constexpr const char* kBridgePrefix = "vn";
constexpr uint8_t kBlock = 223; // 10.223.0.0/16, routing table 1223
const Ipv4 kGateway = layout::kGatewayAddress;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

size_t count_occurrences(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1))
    ++n;
  return n;
}

// A slot held by a test, released however the test ends.
struct Lease {
  BridgeManager* manager = nullptr;
  Slot slot;
  Netns guest;
  Lease() = default;
  Lease(Lease&& other) noexcept
      : manager(std::exchange(other.manager, nullptr)), slot(std::move(other.slot)),
        guest(std::move(other.guest)) {}
  Lease& operator=(Lease&& other) noexcept {
    if (this != &other) {
      release();
      manager = std::exchange(other.manager, nullptr);
      slot = std::move(other.slot);
      guest = std::move(other.guest);
    }
    return *this;
  }
  ~Lease() { release(); }
  void release() {
    guest = Netns();
    if (auto* held = std::exchange(manager, nullptr)) {
      auto released = held->release_slot(slot.id);
      EXPECT_TRUE(released) << released.error().message();
    }
  }
};

class Egress : public ::testing::Test {
protected:
  static inline std::unique_ptr<testnet::TestInternet> internet;
  static inline std::unique_ptr<testnet::RouteGuard> guard;
  static inline std::string setup_error;

  static void SetUpTestSuite() {
    if (geteuid() != 0) {
      setup_error = "these tests make network namespaces: run them as root";
      return;
    }
    if (auto reclaimed = BridgeManager::reclaim_leftovers(config()); !reclaimed) {
      setup_error = reclaimed.error().message();
      return;
    }
    auto routed = testnet::start_routed_internet(kInternetPrefix, kBridgePrefix);
    if (!routed) {
      setup_error = routed.error().message();
      return;
    }
    internet = std::move(routed->internet);
    guard = std::move(routed->guard);
  }

  static void TearDownTestSuite() {
    if (guard) {
      auto clean = guard->check_no_strays();
      EXPECT_TRUE(clean) << clean.error().message();
    }
    guard.reset();
    internet.reset();
    auto names = list_named_netns(std::string(kInternetPrefix) + "-");
    EXPECT_TRUE(names && names->empty());
  }

  // allowed.test's server answers `guest` by name over HTTP and over TLS
  // (its certificate checked against the test internet's CA).
  static void expect_allowed_over_http_and_tls(const Netns& guest) {
    auto response = probe::http_get(guest, kAllowedIp, 80, "allowed.test");
    ASSERT_TRUE(response) << response.error().message();
    EXPECT_TRUE(contains(*response, "hello from allowed host=allowed.test")) << *response;
    auto tls = probe::https_get(guest, kAllowedIp, 443, "allowed.test", "allowed.test",
                                internet->ca_certificate());
    ASSERT_TRUE(tls) << tls.error().message();
    EXPECT_TRUE(contains(*tls, "hello from allowed")) << *tls;
  }

  static BridgeConfig config() {
    if (internet) return internet->bridge_config(kBridgePrefix, kBlock);
    BridgeConfig fallback;
    fallback.prefix = kBridgePrefix;
    fallback.route_table = 1000 + kBlock;
    return fallback;
  }

  void SetUp() override {
    ASSERT_TRUE(setup_error.empty()) << setup_error;
    fds_before_ = testnet::open_fd_count();
    auto created = BridgeManager::create(config());
    ASSERT_TRUE(created) << created.error().message();
    manager_ = std::move(*created);
  }

  void TearDown() override {
    if (!manager_) return;
    auto stats = manager_->stats();
    EXPECT_EQ(stats.in_use, 0u) << "a test kept a slot";
    manager_.reset();
    auto left = BridgeManager::find_leftovers(config());
    ASSERT_TRUE(left) << left.error().message();
    EXPECT_TRUE(left->empty()) << left->describe();
    EXPECT_EQ(testnet::open_fd_count(), fds_before_) << "fds leaked";
  }

  Lease acquire(const EgressPolicy& policy, BridgeManager::AcquireOptions options = {}) {
    Lease lease;
    auto slot = manager_->acquire_slot(policy, options);
    EXPECT_TRUE(slot) << slot.error().message();
    if (!slot) return lease;
    lease.manager = manager_.get();
    lease.slot = std::move(*slot);
    auto guest = Netns::open_named(lease.slot.guest_netns);
    EXPECT_TRUE(guest) << guest.error().message();
    if (guest) lease.guest = std::move(*guest);
    return lease;
  }

  static EgressPolicy allowlist() {
    return EgressPolicy::allowlist({"allowed.test", "*.example.test"}).value();
  }

  // Replaces the test's manager with one whose configuration `change` edits.
  template <class Change> void reconfigure(Change change) {
    manager_.reset();
    auto changed = config();
    change(changed);
    auto created = BridgeManager::create(changed);
    ASSERT_TRUE(created) << created.error().message();
    manager_ = std::move(*created);
  }

  std::unique_ptr<BridgeManager> manager_;
  int fds_before_ = 0;
};

// The host's own IPv4 addresses, other than loopback.
std::vector<Ipv4> host_addresses() {
  std::vector<Ipv4> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (auto* item = list; item; item = item->ifa_next) {
    if (!item->ifa_addr || item->ifa_addr->sa_family != AF_INET) continue;
    auto address = Ipv4::from_network(reinterpret_cast<sockaddr_in*>(item->ifa_addr)->sin_addr);
    if ((address.value >> 24) != 127) out.push_back(address);
  }
  freeifaddrs(list);
  return out;
}

// Sends `request` on `fd` and reads until `until` appears, the peer closes
// or resets, or the socket's timeout passes.
std::string converse(int fd, const std::string& request, const std::string& until) {
  if (!request.empty()) send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string out;
  char buffer[4096];
  while (out.find(until) == std::string::npos) {
    ssize_t n = recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

// allowed.test's HTTP server on `port`, asked for by name (through the
// allowlist proxy when the slot has one).
bool reaches_allowed(const Netns& guest, uint16_t port, milliseconds timeout = 1500ms) {
  auto response = probe::http_get(guest, kAllowedIp, port, "allowed.test", "/", timeout);
  return response && contains(*response, "hello from allowed host=allowed.test");
}

TEST_F(Egress, OpenReachesTheHttpServerByName) {
  auto lease = acquire(EgressPolicy::open());
  auto answer = probe::dns_query(lease.guest, kGateway, "allowed.test");
  ASSERT_TRUE(answer) << answer.error().message();
  ASSERT_EQ(answer->addresses, std::vector<Ipv4>{kAllowedIp});
  expect_allowed_over_http_and_tls(lease.guest);
  if (HasFatalFailure()) return;
  // The server saw the host's uplink address: the traffic was NATed there.
  bool seen = false;
  for (const auto& line : internet->log_lines()) {
    if (line.rfind("allowed " + testnet::kWanHost.str() + " allowed.test", 0) == 0) seen = true;
  }
  EXPECT_TRUE(seen);
}

// The controls for the off test below: the same probes succeed when open.
TEST_F(Egress, OpenCarriesTcpUdpIcmpAndAaaa) {
  auto lease = acquire(EgressPolicy::open());
  auto banner = probe::read_banner(lease.guest, kDeniedIp, 7000);
  ASSERT_TRUE(banner) << banner.error().message();
  EXPECT_EQ(*banner, "banner denied\n");
  auto echo = probe::udp_echo(lease.guest, kAllowedIp, 7001, "ping-udp");
  ASSERT_TRUE(echo) << echo.error().message();
  EXPECT_EQ(*echo, "ping-udp");
  auto pinged = probe::ping(lease.guest, kAllowedIp);
  EXPECT_TRUE(pinged) << pinged.error().message();
  auto direct = probe::dns_query(lease.guest, kResolverIp, "denied.test");
  ASSERT_TRUE(direct) << direct.error().message();
  EXPECT_EQ(direct->addresses, std::vector<Ipv4>{kDeniedIp});
  auto over_tcp = probe::dns_query(lease.guest, kGateway, "allowed.test", dns::kTypeA, true);
  // The test resolver serves UDP only; TCP to it is refused, not hung.
  EXPECT_FALSE(over_tcp);
  auto aaaa = probe::dns_query(lease.guest, kGateway, "allowed.test", dns::kTypeAAAA);
  ASSERT_TRUE(aaaa) << aaaa.error().message();
  EXPECT_EQ(aaaa->other_records, 1u);
}

TEST_F(Egress, OffSendsNothingAtAll) {
  auto lease = acquire(EgressPolicy::off());
  int dns_before = internet->hits("dns");
  int allowed_before = internet->hits("allowed");
  int denied_before = internet->hits("denied");
  int echo_before = internet->hits("udp-echo");
  EXPECT_FALSE(probe::dns_query(lease.guest, kGateway, "allowed.test"));
  EXPECT_FALSE(probe::dns_query(lease.guest, kGateway, "allowed.test", dns::kTypeA, true));
  EXPECT_FALSE(probe::dns_query(lease.guest, kResolverIp, "allowed.test"));
  EXPECT_FALSE(probe::tcp_connect(lease.guest, kAllowedIp, 80));
  EXPECT_FALSE(probe::read_banner(lease.guest, kDeniedIp, 7000));
  EXPECT_FALSE(probe::udp_echo(lease.guest, kAllowedIp, 7001, "x"));
  EXPECT_FALSE(probe::ping(lease.guest, kAllowedIp));
  EXPECT_FALSE(probe::ping(lease.guest, kGateway));
  EXPECT_EQ(internet->hits("dns"), dns_before);
  EXPECT_EQ(internet->hits("allowed"), allowed_before);
  EXPECT_EQ(internet->hits("denied"), denied_before);
  EXPECT_EQ(internet->hits("udp-echo"), echo_before);
}

TEST_F(Egress, AllowlistReachesListedNamesOverHttpAndTls) {
  auto lease = acquire(allowlist());
  auto answer = probe::dns_query(lease.guest, kGateway, "allowed.test");
  ASSERT_TRUE(answer) << answer.error().message();
  ASSERT_EQ(answer->addresses, std::vector<Ipv4>{kAllowedIp});
  expect_allowed_over_http_and_tls(lease.guest);
  if (HasFatalFailure()) return;
  // A wildcard entry, over TCP DNS this time.
  auto wildcard = probe::dns_query(lease.guest, kGateway, "www.example.test", dns::kTypeA, true);
  ASSERT_TRUE(wildcard) << wildcard.error().message();
  ASSERT_EQ(wildcard->addresses, std::vector<Ipv4>{kAllowedIp});
  auto www = probe::http_get(lease.guest, kAllowedIp, 80, "www.example.test");
  ASSERT_TRUE(www) << www.error().message();
  EXPECT_TRUE(contains(*www, "host=www.example.test")) << *www;
  // Other TCP ports go through the proxy too: HTTP there passes by name.
  EXPECT_TRUE(reaches_allowed(lease.guest, 8080));
  auto counters = manager_->service_counters(lease.slot.id);
  EXPECT_EQ(counters.dns_forwarded, 2u);
  EXPECT_EQ(counters.proxy_allowed, 4u);
}

// Secrets (net/secrets.hpp): a manager with an egress CA in a temporary
// directory, trusting the test internet's own CA for upstream hosts (or not,
// with trust_test_ca false). Removes the directory when the test ends.
struct SecretsCa {
  std::filesystem::path dir;
  SecretsCa() {
    char dir_template[] = "/tmp/vesicle-egress-ca-XXXXXX";
    if (mkdtemp(dir_template)) dir = dir_template;
  }
  ~SecretsCa() {
    if (!dir.empty()) std::filesystem::remove_all(dir);
  }
  std::filesystem::path certificate() const { return dir / "ca" / "ca.pem"; }
};

constexpr const char* kSecret = "Bearer sk-vesicle-test-0123456789";

EgressPolicy granted_allowlist(const std::string& name) {
  auto policy = EgressPolicy::allowlist({"allowed.test", "*.example.test"}).value();
  policy.secrets[name] = {{"Authorization", kSecret}};
  return policy;
}

TEST_F(Egress, SecretsAreSetOnRequestsToTheGrantedNameOnly) {
  SecretsCa ca;
  ASSERT_FALSE(ca.dir.empty());
  reconfigure([&](BridgeConfig& c) {
    c.secrets_ca_dir = ca.dir / "ca";
    c.upstream_extra_ca = internet->ca_certificate();
  });
  if (HasFatalFailure()) return;
  EXPECT_EQ(manager_->egress_ca_pem().rfind("-----BEGIN CERTIFICATE-----", 0), 0u);
  auto granted = acquire(granted_allowlist("allowed.test"));
  auto plain = acquire(allowlist());
  for (const auto* lease : {&granted, &plain}) {
    for (const char* name : {"allowed.test", "www.example.test"}) {
      auto answer = probe::dns_query(lease->guest, kGateway, name);
      ASSERT_TRUE(answer) << answer.error().message();
    }
  }
  // The granted name: the guest sends no header, trusts the egress CA (the
  // proxy's leaf, not the test host's certificate), and the host sees it.
  auto tls = probe::https_get(granted.guest, kAllowedIp, 443, "allowed.test", "allowed.test",
                              ca.certificate());
  ASSERT_TRUE(tls) << tls.error().message();
  EXPECT_TRUE(contains(*tls, std::string("authorization=") + kSecret)) << *tls;
  EXPECT_FALSE(probe::https_get(granted.guest, kAllowedIp, 443, "allowed.test", "allowed.test",
                                internet->ca_certificate()))
      << "the granted name must be served by the proxy's leaf";
  // Another allowed name in the same sandbox passes through untouched.
  auto other = probe::https_get(granted.guest, kAllowedIp, 443, "www.example.test",
                                "www.example.test", internet->ca_certificate());
  ASSERT_TRUE(other) << other.error().message();
  EXPECT_FALSE(contains(*other, "authorization=")) << *other;
  // A Host other than the TLS name on an intercepted connection: refused,
  // so the secret never goes to a name it was not granted for.
  auto mismatch = probe::https_get(granted.guest, kAllowedIp, 443, "allowed.test",
                                   "www.example.test", ca.certificate());
  ASSERT_TRUE(mismatch) << mismatch.error().message();
  EXPECT_TRUE(contains(*mismatch, "403 Forbidden")) << *mismatch;
  EXPECT_FALSE(contains(*mismatch, kSecret));
  // A sandbox without the grant reaches the same host with no header.
  auto ungranted = probe::https_get(plain.guest, kAllowedIp, 443, "allowed.test", "allowed.test",
                                    internet->ca_certificate());
  ASSERT_TRUE(ungranted) << ungranted.error().message();
  EXPECT_FALSE(contains(*ungranted, "authorization=")) << *ungranted;

  // Two handshakes completed with the proxy's leaf; the client that trusted
  // only the test host's CA gave up in its handshake.
  auto counters = manager_->service_counters(granted.slot.id);
  EXPECT_EQ(counters.proxy_intercepted, 2u);
  EXPECT_EQ(manager_->service_counters(plain.slot.id).proxy_intercepted, 0u);
}

// Python's own TLS client in the stand-in guest: two requests on one kept-
// alive connection, the first with a placeholder the proxy must replace,
// the second for another Host. Prints each response's status and body.
constexpr const char* kKeptAliveClient = R"(
import http.client, socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[1])
raw = socket.create_connection(("198.18.1.10", 443), timeout=5)
tls = context.wrap_socket(raw, server_hostname="allowed.test")
for host, extra in (("allowed.test", "Authorization: placeholder\r\n"), ("www.example.test", "")):
    tls.sendall(("GET / HTTP/1.1\r\nHost: " + host + "\r\n" + extra + "\r\n").encode())
    response = http.client.HTTPResponse(tls)
    response.begin()
    print(response.status, response.read().decode().strip())
)";

TEST_F(Egress, SecretsReplaceAPlaceholderAndRefuseAnotherHostOnTheSameConnection) {
  SecretsCa ca;
  ASSERT_FALSE(ca.dir.empty());
  reconfigure([&](BridgeConfig& c) {
    c.secrets_ca_dir = ca.dir / "ca";
    c.upstream_extra_ca = internet->ca_certificate();
  });
  if (HasFatalFailure()) return;
  auto lease = acquire(granted_allowlist("allowed.test"));
  ASSERT_TRUE(probe::dns_query(lease.guest, kGateway, "allowed.test"));
  const std::string command = "ip netns exec " + lease.slot.guest_netns + " /usr/bin/python3 -c '" +
                              kKeptAliveClient + "' " + ca.certificate().string() + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_TRUE(pipe);
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe))
    output.append(buffer, n);
  pclose(pipe);
  EXPECT_TRUE(contains(output, std::string("200 hello from allowed host=allowed.test "
                                           "authorization=") +
                                   kSecret))
      << output;
  EXPECT_FALSE(contains(output, "placeholder")) << output;
  EXPECT_TRUE(contains(output, "403 vesicle: egress refused: Host www.example.test")) << output;
  EXPECT_EQ(count_occurrences(output, kSecret), 1u) << output;
}

TEST_F(Egress, SecretsNeedAnAllowedNameAndAnEgressCa) {
  auto no_ca = manager_->acquire_slot(granted_allowlist("allowed.test"));
  ASSERT_FALSE(no_ca);
  EXPECT_TRUE(contains(no_ca.error().message(), "secrets_ca_dir")) << no_ca.error().message();
  SecretsCa ca;
  ASSERT_FALSE(ca.dir.empty());
  reconfigure([&](BridgeConfig& c) { c.secrets_ca_dir = ca.dir / "ca"; });
  if (HasFatalFailure()) return;
  auto unlisted = manager_->acquire_slot(granted_allowlist("denied.test"));
  ASSERT_FALSE(unlisted);
  EXPECT_TRUE(contains(unlisted.error().message(), "egress_allow")) << unlisted.error().message();
  EXPECT_FALSE(contains(unlisted.error().message(), kSecret));
  auto open = EgressPolicy::open();
  open.secrets["allowed.test"] = {{"Authorization", kSecret}};
  EXPECT_FALSE(manager_->acquire_slot(open));
}

TEST_F(Egress, SecretsAreNotSentToAHostWhoseCertificateFailsVerification) {
  // No extra upstream CA: the test host's own certificate does not verify
  // against the system store, as a man in the middle's would not.
  SecretsCa ca;
  ASSERT_FALSE(ca.dir.empty());
  reconfigure([&](BridgeConfig& c) { c.secrets_ca_dir = ca.dir / "ca"; });
  if (HasFatalFailure()) return;
  auto lease = acquire(granted_allowlist("allowed.test"));
  ASSERT_TRUE(probe::dns_query(lease.guest, kGateway, "allowed.test"));
  int hits_before = internet->hits("allowed");
  auto response = probe::https_get(lease.guest, kAllowedIp, 443, "allowed.test", "allowed.test",
                                   ca.certificate());
  ASSERT_TRUE(response) << response.error().message();
  EXPECT_TRUE(contains(*response, "502 Bad Gateway")) << *response;
  EXPECT_TRUE(contains(*response, "did not verify")) << *response;
  EXPECT_EQ(internet->hits("allowed"), hits_before) << "no request reached the host";
  EXPECT_EQ(manager_->service_counters(lease.slot.id).proxy_upstream_refused, 1u);
}

TEST_F(Egress, AllowlistRefusesUnlistedNames) {
  auto lease = acquire(allowlist());
  int denied_before = internet->hits("denied");
  auto answer = probe::dns_query(lease.guest, kGateway, "denied.test");
  ASSERT_TRUE(answer) << answer.error().message();
  EXPECT_EQ(answer->rcode, dns::kNxDomain);
  EXPECT_TRUE(answer->addresses.empty());
  auto response = probe::http_get(lease.guest, kDeniedIp, 80, "denied.test");
  ASSERT_TRUE(response) << response.error().message();
  EXPECT_TRUE(contains(*response, "403 Forbidden")) << *response;
  EXPECT_FALSE(probe::https_get(lease.guest, kDeniedIp, 443, "denied.test", "denied.test",
                                internet->ca_certificate()));
  EXPECT_FALSE(probe::read_banner(lease.guest, kDeniedIp, 7000));
  EXPECT_FALSE(probe::udp_echo(lease.guest, kAllowedIp, 7001, "x"));
  EXPECT_FALSE(probe::ping(lease.guest, kAllowedIp));
  // The guest's only resolver is the gateway: straight to upstream fails.
  EXPECT_FALSE(probe::dns_query(lease.guest, kResolverIp, "allowed.test"));
  EXPECT_EQ(internet->hits("denied"), denied_before);
}

TEST_F(Egress, AllowlistRefusesIpLiterals) {
  auto lease = acquire(allowlist());
  int allowed_before = internet->hits("allowed");
  // Nothing resolved yet: the server's address by itself opens nothing.
  auto literal = probe::http_get(lease.guest, kAllowedIp, 80, kAllowedIp.str());
  ASSERT_TRUE(literal) << literal.error().message();
  EXPECT_TRUE(contains(*literal, "403 Forbidden")) << *literal;
  EXPECT_FALSE(probe::https_get(lease.guest, kAllowedIp, 443, "", kAllowedIp.str(),
                                internet->ca_certificate()));
  EXPECT_FALSE(probe::read_banner(lease.guest, kAllowedIp, 7000));
  // Even with the right name, an address DNS never returned is refused.
  auto unresolved = probe::http_get(lease.guest, kAllowedIp, 80, "allowed.test");
  ASSERT_TRUE(unresolved) << unresolved.error().message();
  EXPECT_TRUE(contains(*unresolved, "403 Forbidden")) << *unresolved;
  EXPECT_EQ(internet->hits("allowed"), allowed_before);
  // Once resolved, a name opens the address on any port, a literal none.
  ASSERT_TRUE(probe::dns_query(lease.guest, kGateway, "allowed.test"));
  EXPECT_TRUE(reaches_allowed(lease.guest, 8080));
  auto literal_8080 = probe::http_get(lease.guest, kAllowedIp, 8080, kAllowedIp.str());
  ASSERT_TRUE(literal_8080) << literal_8080.error().message();
  EXPECT_TRUE(contains(*literal_8080, "403 Forbidden")) << *literal_8080;
  // And an IP literal in the Host is still refused, resolved or not.
  auto again = probe::http_get(lease.guest, kAllowedIp, 80, kAllowedIp.str());
  ASSERT_TRUE(again);
  EXPECT_TRUE(contains(*again, "403 Forbidden")) << *again;
}

TEST_F(Egress, AllowlistRefusesSniAndHostMismatch) {
  auto lease = acquire(allowlist());
  ASSERT_TRUE(probe::dns_query(lease.guest, kGateway, "allowed.test"));
  int allowed_before = internet->hits("allowed");
  auto sni = probe::https_get(lease.guest, kAllowedIp, 443, "denied.test", "denied.test",
                              internet->ca_certificate());
  ASSERT_FALSE(sni);
  EXPECT_TRUE(contains(sni.error().message(), "access denied")) << sni.error().message();
  auto host = probe::http_get(lease.guest, kAllowedIp, 80, "denied.test");
  ASSERT_TRUE(host) << host.error().message();
  EXPECT_TRUE(contains(*host, "403 Forbidden")) << *host;
  EXPECT_EQ(internet->hits("allowed"), allowed_before);
  // The same connection with the listed name goes through.
  EXPECT_TRUE(probe::https_get(lease.guest, kAllowedIp, 443, "allowed.test", "allowed.test",
                               internet->ca_certificate()));
  EXPECT_EQ(manager_->service_counters(lease.slot.id).proxy_refused, 2u);
}

TEST_F(Egress, AllowlistRefusesDnsRebinding) {
  auto lease = acquire(allowlist());
  int metadata_before = internet->hits("metadata"), lan_before = internet->hits("lan");
  for (const auto& [name, target, label] :
       {std::tuple{"rebind.example.test", kMetadataIp, "metadata"},
        std::tuple{"rebind-lan.example.test", kLanIp, "lan"}}) {
    auto first = probe::dns_query(lease.guest, kGateway, name);
    ASSERT_TRUE(first) << first.error().message();
    ASSERT_EQ(first->addresses, std::vector<Ipv4>{kAllowedIp}) << name;
    auto ok = probe::http_get(lease.guest, kAllowedIp, 80, name);
    ASSERT_TRUE(ok) << ok.error().message();
    EXPECT_TRUE(contains(*ok, "hello from allowed")) << *ok;
    // The name now points into a denied network: the answer is emptied...
    auto second = probe::dns_query(lease.guest, kGateway, name);
    ASSERT_TRUE(second) << second.error().message();
    EXPECT_TRUE(second->addresses.empty()) << name;
    // ...and the address is refused whichever way the guest tries it.
    auto proxied = probe::http_get(lease.guest, target, 80, name);
    if (proxied) {
      EXPECT_TRUE(contains(*proxied, "403 Forbidden")) << *proxied;
    }
    EXPECT_FALSE(probe::read_banner(lease.guest, target, 7000));
  }
  EXPECT_EQ(internet->hits("metadata"), metadata_before);
  EXPECT_EQ(internet->hits("lan"), lan_before);
  EXPECT_EQ(manager_->service_counters(lease.slot.id).dns_rebind_dropped, 2u);
  // Names that always point at denied networks never get an address.
  for (const char* name : {"lan.example.test", "metadata.example.test"}) {
    auto answer = probe::dns_query(lease.guest, kGateway, name);
    ASSERT_TRUE(answer);
    EXPECT_TRUE(answer->addresses.empty()) << name;
  }
}

TEST_F(Egress, AllowlistRefusesIpv6) {
  auto lease = acquire(allowlist());
  auto aaaa = probe::dns_query(lease.guest, kGateway, "allowed.test", dns::kTypeAAAA);
  ASSERT_TRUE(aaaa) << aaaa.error().message();
  EXPECT_EQ(aaaa->rcode, dns::kNoError);
  EXPECT_EQ(aaaa->other_records, 0u); // upstream has one (see the open test)
  EXPECT_TRUE(aaaa->addresses.empty());
  // No IPv6 exists on the slot side at all.
  auto v6 = in_netns(lease.guest,
                     [] { return read_sysctl("/proc/sys/net/ipv6/conf/eth0/disable_ipv6"); });
  ASSERT_TRUE(v6);
  EXPECT_EQ(*v6, "1");
  auto slot_ns = Netns::open_named(lease.slot.netns);
  ASSERT_TRUE(slot_ns);
  auto slot_v6 =
      in_netns(*slot_ns, [] { return read_sysctl("/proc/sys/net/ipv6/conf/tap0/disable_ipv6"); });
  ASSERT_TRUE(slot_v6);
  EXPECT_EQ(*slot_v6, "1");
}

TEST_F(Egress, NoModeReachesTheHostOrTheMetadataAddress) {
  auto host_ns = Netns::of_current_thread();
  ASSERT_TRUE(host_ns);
  // Stand-ins for hostd's API and a loopback-only service on the host.
  auto api = probe::Listener::open(*host_ns, Ipv4{0}, 0);
  ASSERT_TRUE(api) << api.error().message();
  auto loopback = probe::Listener::open(*host_ns, Ipv4{0x7F000001}, 0);
  ASSERT_TRUE(loopback) << loopback.error().message();
  // Control: they do answer, from the host.
  ASSERT_TRUE(probe::tcp_connect(*host_ns, Ipv4{0x7F000001}, (*api)->port()));
  ASSERT_TRUE(probe::tcp_connect(*host_ns, Ipv4{0x7F000001}, (*loopback)->port()));
  std::this_thread::sleep_for(100ms);
  int api_before = (*api)->accepted(), loopback_before = (*loopback)->accepted();
  int metadata_before = internet->hits("metadata"), lan_before = internet->hits("lan");

  layout::TransitPlan plan(config().transit);
  std::vector<Ipv4> host_side = host_addresses();
  host_side.push_back(Ipv4{0x7F000001});
  host_side.push_back(plan.egress_side());
  for (const auto& policy : {EgressPolicy::open(), allowlist(), EgressPolicy::off()}) {
    SCOPED_TRACE(to_string(policy.mode));
    auto lease = acquire(policy);
    for (Ipv4 address : host_side) {
      EXPECT_FALSE(probe::tcp_connect(lease.guest, address, (*api)->port(), 800ms))
          << address.str();
      EXPECT_FALSE(probe::tcp_connect(lease.guest, address, (*loopback)->port(), 800ms))
          << address.str();
    }
    for (Ipv4 endpoint : {kMetadataIp, testnet::kAzureWireIp, testnet::kOciMetadataIp,
                          testnet::kAlibabaMetadataIp}) {
      auto metadata =
          probe::http_get(lease.guest, endpoint, 80, "metadata.example.test", "/", 800ms);
      if (metadata) {
        EXPECT_TRUE(contains(*metadata, "403 Forbidden")) << endpoint.str() << ": " << *metadata;
      }
    }
    EXPECT_FALSE(probe::ping(lease.guest, kMetadataIp, 800ms));
    EXPECT_FALSE(probe::read_banner(lease.guest, kLanIp, 7000, 800ms));
  }
  EXPECT_EQ((*api)->accepted(), api_before);
  EXPECT_EQ((*loopback)->accepted(), loopback_before);
  EXPECT_EQ(internet->hits("metadata"), metadata_before);
  EXPECT_EQ(internet->hits("lan"), lan_before);
}

// Defence in depth, shown by breaking it: with the denied networks taken out
// of one layer after another (slot, egress namespace, host), the metadata
// address stays unreachable until the last layer is gone, and then the
// packets reach only the test internet's own stand-in (the route guard
// counts none sent anywhere else).
TEST_F(Egress, BrokenRulesStillSendNothingBeyondTheTestInternet) {
  auto lease = acquire(EgressPolicy::open());
  auto cfg = config();
  layout::TransitPlan plan(cfg.transit);
  auto slot_ns = Netns::open_named(lease.slot.netns);
  auto egress_ns = Netns::open_named(layout::egress_netns(kBridgePrefix));
  auto host_ns = Netns::of_current_thread();
  ASSERT_TRUE(slot_ns && egress_ns && host_ns);
  auto replace = [](const Netns& netns, const std::string& script) {
    auto replaced = in_netns(netns, [&]() -> Result<void> {
      auto nft = Nft::open(netns.name());
      if (!nft) return std::move(nft).error();
      auto ran = (*nft)->run(script);
      if (!ran) return std::move(ran).error();
      return {};
    });
    ASSERT_TRUE(replaced) << replaced.error().message();
  };
  auto reaches_metadata = [&] {
    return probe::http_get(lease.guest, kMetadataIp, 80, "metadata", "/", 800ms).ok();
  };
  int metadata_before = internet->hits("metadata");
  ASSERT_TRUE(probe::http_get(lease.guest, kAllowedIp, 80, "allowed.test"));

  replace(*slot_ns, slot_ruleset({layout::nft_table(kBridgePrefix, "slot"),
                                  EgressMode::open,
                                  plan.slot_side(lease.slot.id),
                                  {},
                                  cfg.upstream_resolver,
                                  cfg.guest_limits}));
  EXPECT_FALSE(reaches_metadata()) << "the egress namespace should still refuse it";
  const std::string egress_table = layout::nft_table(kBridgePrefix, "egress");
  replace(*egress_ns, egress_ruleset({egress_table, {}, cfg.upstream_resolver}) +
                          egress_mark_element(egress_table, layout::egress_slot_link(lease.slot.id),
                                              layout::slot_mark(lease.slot.id), true));
  EXPECT_FALSE(reaches_metadata()) << "the host should still refuse it";
  EXPECT_EQ(internet->hits("metadata"), metadata_before);
  replace(*host_ns, host_ruleset({layout::nft_table(kBridgePrefix, "host"),
                                  layout::host_link(kBridgePrefix),
                                  cfg.uplink,
                                  {},
                                  cfg.upstream_resolver}));
  EXPECT_TRUE(reaches_metadata()) << "with every layer broken the stand-in must see it";
  EXPECT_EQ(internet->hits("metadata"), metadata_before + 1);
  auto clean = guard->check_no_strays();
  EXPECT_TRUE(clean) << clean.error().message();
}

TEST_F(Egress, SlotsCannotReachEachOther) {
  auto a = acquire(EgressPolicy::open());
  auto b = acquire(EgressPolicy::open());
  auto b_slot = Netns::open_named(b.slot.netns);
  ASSERT_TRUE(b_slot);
  layout::TransitPlan plan(config().transit);
  auto listener = probe::Listener::open(*b_slot, Ipv4{0}, 0);
  ASSERT_TRUE(listener) << listener.error().message();
  uint16_t port = (*listener)->port();
  // Control: B's slot answers on its own transit address.
  ASSERT_TRUE(probe::tcp_connect(*b_slot, plan.slot_side(b.slot.id), port));
  std::this_thread::sleep_for(100ms);
  int before = (*listener)->accepted();
  for (Ipv4 address : {plan.slot_side(b.slot.id), plan.slot_egress_side(b.slot.id),
                       plan.slot_side(a.slot.id), plan.egress_side(), plan.host_side()}) {
    EXPECT_FALSE(probe::tcp_connect(a.guest, address, port, 800ms)) << address.str();
    EXPECT_FALSE(probe::ping(a.guest, address, 800ms)) << address.str();
  }
  EXPECT_EQ((*listener)->accepted(), before);
}

TEST_F(Egress, ReleasedSlotsAreScrubbed) {
  uint32_t id;
  {
    auto lease = acquire(allowlist());
    id = lease.slot.id;
    ASSERT_TRUE(probe::dns_query(lease.guest, kGateway, "allowed.test"));
    ASSERT_TRUE(reaches_allowed(lease.guest, 8080));
    auto slot_ns = Netns::open_named(lease.slot.netns);
    ASSERT_TRUE(slot_ns);
    auto tracked = in_netns(*slot_ns, [] { return count_conntrack(); });
    ASSERT_TRUE(tracked);
    EXPECT_GT(*tracked, 0);
  }
  // Released: the egress namespace forgot the slot's flows (by ct mark).
  auto egress_ns = Netns::open_named(layout::egress_netns(kBridgePrefix));
  ASSERT_TRUE(egress_ns);
  auto egress_tracked = in_netns(*egress_ns, [] { return count_conntrack(); });
  ASSERT_TRUE(egress_tracked);
  EXPECT_EQ(*egress_tracked, 0);
  // The pool hands the same slot out again, with nothing of its past.
  auto lease = acquire(allowlist());
  ASSERT_EQ(lease.slot.id, id);
  EXPECT_EQ(manager_->stats().acquired_pooled, 1u);
  auto slot_ns = Netns::open_named(lease.slot.netns);
  ASSERT_TRUE(slot_ns);
  auto tracked = in_netns(*slot_ns, [] { return count_conntrack(); });
  ASSERT_TRUE(tracked);
  EXPECT_EQ(*tracked, 0);
  EXPECT_FALSE(reaches_allowed(lease.guest, 8080)) << "the learned addresses survived";
  // Now as an off slot: nothing of the allowlist or its route remains.
  lease = Lease();
  auto off = acquire(EgressPolicy::off());
  ASSERT_EQ(off.slot.id, id);
  EXPECT_FALSE(probe::dns_query(off.guest, kGateway, "allowed.test"));
  EXPECT_FALSE(probe::read_banner(off.guest, kAllowedIp, 7000));
}

TEST_F(Egress, ForkChildInheritsItsParentsAllowedAddresses) {
  auto parent = acquire(allowlist());
  ASSERT_TRUE(probe::dns_query(parent.guest, kGateway, "allowed.test"));
  auto child = acquire(allowlist(), {parent.slot.id});
  auto stranger = acquire(allowlist());
  // The child's guest has the parent's DNS cache: its addresses must work.
  EXPECT_TRUE(reaches_allowed(child.guest, 8080));
  auto proxied = probe::http_get(child.guest, kAllowedIp, 80, "allowed.test");
  ASSERT_TRUE(proxied);
  EXPECT_TRUE(contains(*proxied, "hello from allowed")) << *proxied;
  EXPECT_FALSE(reaches_allowed(stranger.guest, 8080));
}

// A warm-pool VM starts on an "off" slot; the sandbox that claims it sets
// its egress in place, and may change it again.
TEST_F(Egress, EgressChangesInPlace) {
  auto lease = acquire(EgressPolicy::off());
  EXPECT_FALSE(probe::read_banner(lease.guest, kAllowedIp, 7000, 800ms));
  ASSERT_TRUE(manager_->set_egress(lease.slot.id, EgressPolicy::open()));
  auto banner = probe::read_banner(lease.guest, kDeniedIp, 7000);
  EXPECT_TRUE(banner) << banner.error().message();
  ASSERT_TRUE(manager_->set_egress(lease.slot.id, allowlist()));
  EXPECT_FALSE(probe::read_banner(lease.guest, kDeniedIp, 7000, 800ms));
  ASSERT_TRUE(probe::dns_query(lease.guest, kGateway, "allowed.test"));
  EXPECT_TRUE(reaches_allowed(lease.guest, 8080));
  // A connection made under one mode does not outlive the change.
  auto held = probe::tcp_connect(lease.guest, kAllowedIp, 80);
  ASSERT_TRUE(held) << held.error().message();
  ASSERT_TRUE(manager_->set_egress(lease.slot.id, EgressPolicy::off()));
  std::string request = "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n";
  send(held->get(), request.data(), request.size(), MSG_NOSIGNAL);
  char buffer[64];
  EXPECT_LE(recv(held->get(), buffer, sizeof buffer, 0), 0);
  EXPECT_FALSE(probe::read_banner(lease.guest, kAllowedIp, 7000, 800ms));
  EXPECT_FALSE(probe::dns_query(lease.guest, kGateway, "allowed.test"));
  auto bad = manager_->set_egress(lease.slot.id, EgressPolicy{EgressMode::allowlist, {"*"}, {}});
  EXPECT_FALSE(bad);
  EXPECT_FALSE(manager_->set_egress(999, EgressPolicy::open()));
}

TEST_F(Egress, OffNeedsNoUplinkButOpenDoes) {
  manager_.reset();
  auto no_uplink = config();
  no_uplink.uplink.clear();
  auto created = BridgeManager::create(no_uplink);
  ASSERT_TRUE(created) << created.error().message();
  manager_ = std::move(*created);
  auto open = manager_->acquire_slot(EgressPolicy::open());
  ASSERT_FALSE(open);
  EXPECT_TRUE(contains(open.error().message(), "needs an uplink")) << open.error().message();
  auto lease = acquire(EgressPolicy::off());
  EXPECT_FALSE(probe::tcp_connect(lease.guest, kAllowedIp, 80, 800ms));
}

// The operator may open a range inside the denied networks; the metadata
// endpoint inside it stays shut.
TEST_F(Egress, AllowedNetworksOpenOnlyThatRange) {
  {
    auto lease = acquire(EgressPolicy::open());
    EXPECT_FALSE(probe::read_banner(lease.guest, testnet::kCgnatIp, 7000, 800ms));
  }
  reconfigure([](BridgeConfig& c) { c.allowed_networks = {Cidr::parse("100.64.0.0/10").value()}; });
  if (HasFatalFailure()) return;
  for (const auto& policy : {EgressPolicy::open(), allowlist()}) {
    SCOPED_TRACE(to_string(policy.mode));
    auto lease = acquire(policy);
    if (policy.mode == EgressMode::open) {
      auto banner = probe::read_banner(lease.guest, testnet::kCgnatIp, 7000);
      ASSERT_TRUE(banner) << banner.error().message();
      EXPECT_EQ(*banner, "banner cgnat\n");
    } else {
      ASSERT_TRUE(probe::dns_query(lease.guest, kGateway, "cgnat.example.test"));
      auto named = probe::http_get(lease.guest, testnet::kCgnatIp, 80, "cgnat.example.test");
      ASSERT_TRUE(named) << named.error().message();
      EXPECT_TRUE(contains(*named, "hello from cgnat")) << *named;
    }
    int metadata_before = internet->hits("metadata");
    auto metadata = probe::http_get(lease.guest, testnet::kAlibabaMetadataIp, 80,
                                    "metadata.example.test", "/", 800ms);
    if (metadata) {
      EXPECT_TRUE(contains(*metadata, "403 Forbidden")) << *metadata;
    }
    EXPECT_EQ(internet->hits("metadata"), metadata_before);
  }
}

TEST_F(Egress, SmtpIsClosedUnlessAllowed) {
  {
    auto lease = acquire(EgressPolicy::open());
    auto smtp = probe::read_banner(lease.guest, kAllowedIp, 25);
    EXPECT_FALSE(smtp) << *smtp;
    EXPECT_TRUE(probe::read_banner(lease.guest, kAllowedIp, 7000)); // control
  }
  reconfigure([](BridgeConfig& c) { c.guest_limits.smtp = true; });
  if (HasFatalFailure()) return;
  auto lease = acquire(EgressPolicy::open());
  auto smtp = probe::read_banner(lease.guest, kAllowedIp, 25);
  ASSERT_TRUE(smtp) << smtp.error().message();
  EXPECT_EQ(*smtp, "banner smtp\n");
}

// The old gap: once allowed.test resolved, its address opened on every port
// but 80/443 without a name. Now every port needs one.
TEST_F(Egress, AllowlistChecksTheNameWhateverThePort) {
  auto lease = acquire(allowlist());
  ASSERT_TRUE(probe::dns_query(lease.guest, kGateway, "allowed.test"));
  int smtp_before = internet->hits("smtp");
  int banners_before = 0;
  for (const auto& line : internet->log_lines())
    banners_before += contains(line, " - banner");
  EXPECT_FALSE(probe::read_banner(lease.guest, kAllowedIp, 7000, 800ms));
  EXPECT_FALSE(probe::read_banner(lease.guest, kAllowedIp, 25, 800ms));
  auto other = probe::http_get(lease.guest, kAllowedIp, 8080, "denied.test");
  ASSERT_TRUE(other) << other.error().message();
  EXPECT_TRUE(contains(*other, "403 Forbidden")) << *other;
  EXPECT_TRUE(reaches_allowed(lease.guest, 8080));
  int banners_after = 0;
  for (const auto& line : internet->log_lines())
    banners_after += contains(line, " - banner");
  EXPECT_EQ(banners_after, banners_before);
  EXPECT_EQ(internet->hits("smtp"), smtp_before);
}

// The old gap: only the first request head of a kept-alive connection was
// checked; a second one could name any host on the same address.
TEST_F(Egress, AllowlistChecksEveryRequestOnAKeptAliveConnection) {
  auto smuggled = [] {
    int count = 0;
    for (const auto& line : internet->log_lines())
      count += line.rfind("allowed ", 0) == 0 && contains(line, " denied.test ");
    return count;
  };
  int smuggled_before = smuggled();
  auto lease = acquire(allowlist());
  ASSERT_TRUE(probe::dns_query(lease.guest, kGateway, "allowed.test"));
  for (uint16_t port : {80, 8080}) {
    SCOPED_TRACE(port);
    auto connection = probe::tcp_connect(lease.guest, kAllowedIp, port);
    ASSERT_TRUE(connection) << connection.error().message();
    auto first = converse(connection->get(), "GET /one HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
                          "host=allowed.test\n");
    ASSERT_TRUE(contains(first, "hello from allowed host=allowed.test\n")) << first;
    // A body that looks like a request is not one.
    std::string fake = "GET /fake HTTP/1.1\r\nHost: denied.test\r\n\r\n";
    auto posted = converse(connection->get(),
                           "POST /two HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: " +
                               std::to_string(fake.size()) + "\r\n\r\n" + fake,
                           "host=allowed.test\n");
    EXPECT_TRUE(contains(posted, "host=allowed.test")) << posted;
    auto second = converse(connection->get(), "GET /three HTTP/1.1\r\nHost: denied.test\r\n\r\n",
                           "\x01never");
    EXPECT_TRUE(contains(second, "403 Forbidden")) << second;
    EXPECT_TRUE(contains(second, "denied.test is not in this sandbox's allowlist")) << second;
    EXPECT_FALSE(contains(second, "hello from")) << second;
  }
  EXPECT_EQ(smuggled(), smuggled_before);
}

// Each sandbox's conntrack entries are capped in its own slot: the one
// past its cap is refused, a neighbour connects as before.
TEST_F(Egress, ConnectionCapRefusesOnlyThatSandbox) {
  reconfigure([](BridgeConfig& c) {
    c.guest_limits.max_connections = 20;
    c.guest_limits.new_connections_per_second = 0;
  });
  if (HasFatalFailure()) return;
  auto flooding = acquire(EgressPolicy::open());
  auto neighbour = acquire(EgressPolicy::open());
  std::vector<UniqueFd> held;
  int refused = 0;
  for (int i = 0; i < 30; ++i) {
    auto connection = probe::tcp_connect(flooding.guest, kAllowedIp, 80, 800ms);
    if (connection) {
      held.push_back(std::move(*connection));
    } else {
      ++refused;
      EXPECT_EQ(connection.error().errno_value, ECONNREFUSED) << connection.error().message();
    }
  }
  EXPECT_EQ(held.size(), 20u);
  EXPECT_EQ(refused, 10);
  EXPECT_TRUE(reaches_allowed(neighbour.guest, 80));
  EXPECT_FALSE(probe::tcp_connect(flooding.guest, kAllowedIp, 80, 800ms));
  // Closing its connections gives the sandbox its room back.
  held.clear();
  bool again = false;
  for (int i = 0; i < 20 && !again; ++i) {
    again = reaches_allowed(flooding.guest, 80);
    if (!again) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(again);
}

TEST_F(Egress, ConnectionRateRefusesOnlyThatSandbox) {
  reconfigure([](BridgeConfig& c) {
    c.guest_limits.max_connections = 0;
    c.guest_limits.new_connections_per_second = 10; // bursts of 20
  });
  if (HasFatalFailure()) return;
  auto flooding = acquire(EgressPolicy::open());
  auto neighbour = acquire(EgressPolicy::open());
  int connected = 0, refused = 0;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 60; ++i) {
    auto connection = probe::tcp_connect(flooding.guest, kAllowedIp, 7000, 800ms);
    connection ? ++connected : ++refused;
  }
  auto took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The burst, plus what the rate refilled while the loop ran.
  EXPECT_LE(connected, 20 + static_cast<int>(took * 10) + 1) << took << " s";
  EXPECT_GE(refused, 60 - 20 - static_cast<int>(took * 10) - 1);
  EXPECT_TRUE(reaches_allowed(neighbour.guest, 80));
}

// The proxy holds at most proxy_max_connections of a sandbox's connections
// (two fds each) and closes idle ones; past the cap the guest's connections
// are reset, and a neighbour's are served as before.
TEST_F(Egress, ProxyCapsAndIdleTimeoutBoundHostdsFds) {
  reconfigure([](BridgeConfig& c) {
    c.proxy_max_connections = 8;
    c.proxy_idle_timeout = std::chrono::seconds(2);
  });
  if (HasFatalFailure()) return;
  auto flooding = acquire(allowlist());
  auto neighbour = acquire(allowlist());
  ASSERT_TRUE(probe::dns_query(flooding.guest, kGateway, "allowed.test"));
  ASSERT_TRUE(probe::dns_query(neighbour.guest, kGateway, "allowed.test"));
  std::this_thread::sleep_for(200ms); // the TCP DNS of neither is still held
  int fds_before = testnet::open_fd_count();
  std::vector<UniqueFd> held;
  int served = 0, reset = 0;
  for (int i = 0; i < 14; ++i) {
    auto connection = probe::tcp_connect(flooding.guest, kAllowedIp, 80, 800ms);
    if (!connection) { // reset before the connect returned
      ++reset;
      continue;
    }
    auto answer = converse(connection->get(), "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
                           "host=allowed.test\n");
    contains(answer, "hello from allowed") ? ++served : ++reset;
    held.push_back(std::move(*connection));
  }
  EXPECT_EQ(served, 8);
  EXPECT_EQ(reset, 6);
  EXPECT_LE(testnet::open_fd_count() - fds_before, 14 + 2 * 8) << "the test's 14, the proxy's";
  EXPECT_GE(manager_->service_counters(flooding.slot.id).proxy_over_capacity, 6u);
  EXPECT_TRUE(reaches_allowed(neighbour.guest, 80));
  // Idle for longer than the timeout: the proxy closed its side of each.
  std::this_thread::sleep_for(3s);
  int closed = 0;
  for (auto& fd : held) {
    char byte;
    ssize_t n = recv(fd.get(), &byte, 1, MSG_DONTWAIT);
    closed += n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
  }
  EXPECT_EQ(closed, static_cast<int>(held.size()));
  held.clear();
  EXPECT_TRUE(reaches_allowed(flooding.guest, 80));
}

} // namespace
} // namespace vesicle::net
