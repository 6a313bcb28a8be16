// The test internet: a network namespace "<prefix>-inet" joined to the host
// by a veth ("<prefix>-wan" on the host side, the sandboxes' uplink), with
// HTTP, TLS, TCP, UDP and authoritative DNS servers (scripts/testnet/
// servers.py) on addresses that exist only inside it, including a stand-in
// cloud metadata server at 169.254.169.254. A bridge pointed at it sends
// sandbox traffic nowhere else; the host's own routes never lead there, and
// a guard table counts any sandbox packet routed elsewhere.
//
//   198.18.0.2/24  host side of the uplink      198.18.0.1  test internet side
//   198.18.1.10    allowed.test, www.example.test (HTTP 80, TLS 443, banner 7000, UDP echo 7001);
//                  badcert.test (the same servers: their certificate does not name it)
//   198.18.1.20    denied.test                  (HTTP 80, TLS 443, banner 7000)
//   198.18.1.53    authoritative DNS for *.test
//   198.18.2.10    lan.example.test: a "host-side network" the bridge denies
//   169.254.169.254 metadata; 168.63.129.16, 192.0.0.192, 100.100.100.200
//                  the other metadata endpoints (HTTP 80, label "metadata")
//   198.18.1.10:8080 HTTP, :25 banner "smtp" (ports other than 80/443)
//   100.64.1.10    cgnat.example.test: a service in a denied range an
//                  operator may allow (HTTP 80, banner 7000)
//   198.18.1.30    packages.test: files over HTTP 80 (scripts/testnet/
//                  make_packages.py: a pip index, a git repository, an npm
//                  tarball)
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "net/bridge.hpp"
#include "net/netns.hpp"

namespace vesicle::net::testnet {

inline const Ipv4 kWanHost = Ipv4::parse("198.18.0.2").value();
inline const Ipv4 kWanGateway = Ipv4::parse("198.18.0.1").value();
inline const Ipv4 kAllowedIp = Ipv4::parse("198.18.1.10").value();
inline const Ipv4 kDeniedIp = Ipv4::parse("198.18.1.20").value();
inline const Ipv4 kResolverIp = Ipv4::parse("198.18.1.53").value();
inline const Ipv4 kLanIp = Ipv4::parse("198.18.2.10").value();
inline const Ipv4 kMetadataIp = Ipv4::parse("169.254.169.254").value();
inline const Cidr kLanNetwork = Cidr::parse("198.18.2.0/24").value();
inline const Ipv4 kAzureWireIp = Ipv4::parse("168.63.129.16").value();
inline const Ipv4 kOciMetadataIp = Ipv4::parse("192.0.0.192").value();
inline const Ipv4 kAlibabaMetadataIp = Ipv4::parse("100.100.100.200").value();
inline const Ipv4 kCgnatIp = Ipv4::parse("100.64.1.10").value();
inline const Ipv4 kPackagesIp = Ipv4::parse("198.18.1.30").value();

// A child process, killed and reaped when this goes away.
class Child {
public:
  Child() = default;
  Child(pid_t pid) : pid_(pid) {}
  Child(Child&& other) noexcept : pid_(std::exchange(other.pid_, -1)) {}
  Child& operator=(Child&& other) noexcept;
  ~Child() { stop(); }
  pid_t pid() const { return pid_; }
  void stop();

private:
  pid_t pid_ = -1;
};

// Runs argv (argv[0] a path) inside `netns` (or the caller's namespace when
// it is null), waits until it prints `ready_line` on stdout.
Result<Child> spawn(const std::vector<std::string>& argv, const Netns* netns,
                    const std::string& ready_line, std::chrono::milliseconds timeout);

class TestInternet {
public:
  static Result<std::unique_ptr<TestInternet>> start(const std::string& prefix);
  ~TestInternet();

  const std::string& uplink() const { return uplink_; }
  const Netns& netns() const { return netns_; }
  const std::filesystem::path& ca_certificate() const { return cert_; }
  // Request log lines of servers.py ("LABEL CLIENT HOST PATH").
  std::vector<std::string> log_lines() const;
  int hits(const std::string& label) const;

  // A bridge configuration whose uplink, gateway and resolver are this test
  // internet, and which denies kLanNetwork as a "host-side network".
  // `block` picks the transit network (10.<block>.0.0/16), the policy
  // routing table (1000 + block) and rule priorities (7000 + 2 * block), so
  // bridges of different test programs never share host-side state.
  BridgeConfig bridge_config(const std::string& bridge_prefix, uint8_t block) const;

  // Removes whatever a test internet of this prefix left (killed test).
  static Result<void> reclaim(const std::string& prefix);

private:
  TestInternet() = default;
  std::string prefix_;
  std::string uplink_;
  std::filesystem::path dir_;
  std::filesystem::path cert_;
  Netns netns_;
  Child servers_;
};

// An nft table in the host that counts (and drops) every packet from the
// bridge's host link that is routed anywhere but the test internet.
class RouteGuard {
public:
  static Result<std::unique_ptr<RouteGuard>> install(const std::string& guard_prefix,
                                                     const std::string& bridge_prefix,
                                                     const std::string& uplink);
  ~RouteGuard();
  Result<int> stray_packets() const;
  // An error when any packet was routed past the test internet's uplink.
  Result<void> check_no_strays() const;

private:
  std::string table_;
};

// The test internet and the guard over a bridge that routes through it:
// what a suite sending sandbox traffic out keeps for its run.
struct RoutedInternet {
  std::unique_ptr<TestInternet> internet;
  std::unique_ptr<RouteGuard> guard;
};
// Starts the test internet `internet_prefix` and installs the guard for the
// bridge `bridge_prefix` on its uplink.
Result<RoutedInternet> start_routed_internet(const std::string& internet_prefix,
                                             const std::string& bridge_prefix);

// Open fds of this process (leak checks).
int open_fd_count();

} // namespace vesicle::net::testnet
