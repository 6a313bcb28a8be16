// Network slot benchmark (not a test; needs root): how long acquiring a
// slot takes, from the pool and freshly made, and the HTTP throughput a
// sandbox gets through NAT (and through the allowlist proxy) to a server of
// the test internet. Prints a table and writes JSON.
//
//   net_bench [--json PATH] [--iterations N] [--megabytes M]
//
// Uses its own names (prefix "vb", transit 10.225.0.0/16); do not run it
// while the net integration tests run (they share the test internet's
// addresses on the host).
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "net/bridge.hpp"
#include "tests/bench/series.hpp"
#include "tests/net/probe.hpp"
#include "tests/net/testnet.hpp"

using namespace vesicle;
using namespace vesicle::net;
using bench::Clock;
using bench::ms_since;
using bench::Series;

namespace {

[[noreturn]] void die(const std::string& what, const Error& error) {
  std::fprintf(stderr, "net_bench: %s: %s\n", what.c_str(), error.message().c_str());
  std::exit(1);
}

template <class T> T must(Result<T> result, const std::string& what) {
  if (!result) die(what, result.error());
  return std::move(result).value();
}

void must(Result<void> result, const std::string& what) {
  if (!result) die(what, result.error());
}

// Acquire latency (and release latency) over `iterations` cycles.
std::pair<Series, Series> time_acquire(BridgeManager& manager, const EgressPolicy& policy,
                                       int iterations, const std::string& label) {
  Series acquire{label + " acquire", {}}, release{label + " release", {}};
  for (int i = 0; i < iterations; ++i) {
    auto start = Clock::now();
    auto slot = must(manager.acquire_slot(policy), "acquire");
    acquire.values.push_back(ms_since(start));
    slot.tap_fd.reset(); // the "VM" exits before the release
    start = Clock::now();
    must(manager.release_slot(slot.id), "release");
    release.values.push_back(ms_since(start));
  }
  return {acquire, release};
}

// GET /bytes/N from `netns`, discarding the body; returns MB/s.
double http_throughput(const Netns& netns, Ipv4 server, const std::string& host, size_t bytes) {
  auto fd = must(probe::tcp_connect(netns, server, 80, std::chrono::seconds(5)), "connect");
  std::string request = "GET /bytes/" + std::to_string(bytes) + " HTTP/1.1\r\nHost: " + host +
                        "\r\nConnection: close\r\n\r\n";
  auto start = Clock::now();
  if (send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) < 0) {
    die("send", sys_error("send", server.str()));
  }
  std::vector<char> buffer(1 << 20);
  size_t received = 0;
  while (true) {
    ssize_t n = recv(fd.get(), buffer.data(), buffer.size(), 0);
    if (n <= 0) break;
    received += static_cast<size_t>(n);
  }
  double seconds = ms_since(start) / 1000;
  if (received < bytes) {
    die("download", make_error("HTTP GET", "short body: " + std::to_string(received) + " bytes"));
  }
  return static_cast<double>(received) / 1e6 / seconds;
}

} // namespace

int main(int argc, char** argv) {
  std::string json_path = "net_bench.json";
  int iterations = 50;
  size_t megabytes = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--json")
      json_path = argv[i + 1];
    else if (flag == "--iterations")
      iterations = std::atoi(argv[i + 1]);
    else if (flag == "--megabytes")
      megabytes = static_cast<size_t>(std::atoll(argv[i + 1]));
  }
  if (geteuid() != 0) {
    std::fprintf(stderr, "net_bench makes network namespaces: run it as root\n");
    return 1;
  }
  const uint8_t block = 225;
  auto internet = must(testnet::TestInternet::start("vb"), "starting the test internet");
  auto config = internet->bridge_config("vbn", block);

  std::vector<Series> latencies;
  // Production slots (a tap, no stand-in guest).
  {
    auto tap_config = config;
    tap_config.test_guest_namespaces = false;
    tap_config.max_pooled = 0;
    auto fresh = must(BridgeManager::create(tap_config), "creating the bridge");
    auto [acquire, release] = time_acquire(*fresh, EgressPolicy::open(), iterations, "fresh open");
    latencies.push_back(acquire);
    latencies.push_back(release);
  }
  {
    auto tap_config = config;
    tap_config.test_guest_namespaces = false;
    tap_config.max_pooled = 4;
    auto pooled = must(BridgeManager::create(tap_config), "creating the bridge");
    must(pooled->prewarm(1), "prewarm");
    for (const auto& [label, policy] :
         {std::pair{"pooled open", EgressPolicy::open()},
          std::pair{"pooled off", EgressPolicy::off()},
          std::pair{"pooled allowlist", EgressPolicy::allowlist({"allowed.test"}).value()}}) {
      auto [acquire, release] = time_acquire(*pooled, policy, iterations, label);
      latencies.push_back(acquire);
      latencies.push_back(release);
    }
  }

  // Throughput, from a stand-in guest.
  const size_t bytes = megabytes * 1000 * 1000;
  auto manager = must(BridgeManager::create(config), "creating the bridge");
  struct Rate {
    std::string path;
    double mb_per_s;
  };
  std::vector<Rate> rates;
  rates.push_back({"test internet itself (no NAT; the server's own limit)",
                   http_throughput(internet->netns(), testnet::kAllowedIp, "allowed.test", bytes)});
  {
    auto slot = must(manager->acquire_slot(EgressPolicy::open()), "acquire open");
    auto guest = must(Netns::open_named(slot.guest_netns), "open guest");
    rates.push_back({"sandbox, egress open (3 NATs)",
                     http_throughput(guest, testnet::kAllowedIp, "allowed.test", bytes)});
    guest = Netns();
    must(manager->release_slot(slot.id), "release");
  }
  {
    auto slot = must(manager->acquire_slot(EgressPolicy::allowlist({"allowed.test"}).value()),
                     "acquire allowlist");
    auto guest = must(Netns::open_named(slot.guest_netns), "open guest");
    must(probe::dns_query(guest, layout::kGatewayAddress, "allowed.test"), "resolve");
    rates.push_back({"sandbox, egress allowlist (via the proxy)",
                     http_throughput(guest, testnet::kAllowedIp, "allowed.test", bytes)});
    guest = Netns();
    must(manager->release_slot(slot.id), "release");
  }
  manager.reset();

  std::printf("\nnetwork slots (%d iterations, ms)\n", iterations);
  std::printf("%-28s %8s %8s %8s\n", "operation", "p50", "p95", "max");
  for (const auto& series : latencies) {
    std::printf("%-28s %8.2f %8.2f %8.2f\n", series.name.c_str(), series.percentile(50),
                series.percentile(95), series.percentile(100));
  }
  std::printf("\nHTTP download of %zu MB\n", megabytes);
  for (const auto& rate : rates)
    std::printf("%-55s %8.0f MB/s\n", rate.path.c_str(), rate.mb_per_s);

  std::ofstream json(json_path);
  json << "{\n  \"iterations\": " << iterations << ",\n  \"latency_ms\": {\n";
  for (size_t i = 0; i < latencies.size(); ++i) {
    const auto& s = latencies[i];
    json << "    \"" << s.name << "\": {\"p50\": " << s.percentile(50)
         << ", \"p95\": " << s.percentile(95) << ", \"max\": " << s.percentile(100) << "}"
         << (i + 1 < latencies.size() ? "," : "") << "\n";
  }
  json << "  },\n  \"http_megabytes\": " << megabytes << ",\n  \"http_mb_per_s\": {\n";
  for (size_t i = 0; i < rates.size(); ++i) {
    json << "    \"" << rates[i].path << "\": " << rates[i].mb_per_s
         << (i + 1 < rates.size() ? "," : "") << "\n";
  }
  json << "  }\n}\n";
  std::printf("\nwrote %s\n", json_path.c_str());
  return 0;
}
