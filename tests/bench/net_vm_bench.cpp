// Network benchmark on real VMs (not a test; needs root and the guest
// images): the HTTP download rate a sandbox gets from a server of the test
// internet, through its slot's NAT (egress open) and through the allowlist
// proxy, measured inside the guest; and how long hostd takes to create a
// sandbox with and without a network slot. Two or three VMs in all.
//
//   net_vm_bench --hostd PATH --images DIR [--json PATH] [--megabytes M] [--runs N]
//
// Its own names: test internet "vx", bridge "vy", transit 10.228.0.0/16.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "messages/api.pb.h"
#include "net/bridge.hpp"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/http_client.hpp"
#include "tests/net/testnet.hpp"

using namespace vesicle;
using namespace vesicle::net;
using testing::HostdOptions;
using testing::HostdProcess;
using testing::HttpClient;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "net_vm_bench: %s\n", what.c_str());
  std::exit(1);
}

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

std::string exec(HttpClient& http, const std::string& id, const std::string& code) {
  google::protobuf::Struct request;
  (*request.mutable_fields())["code"].set_string_value(code);
  (*request.mutable_fields())["timeout_s"].set_number_value(300);
  std::string body;
  (void)google::protobuf::util::MessageToJsonString(request, &body);
  auto response = http.request("POST", "/v1/sandboxes/" + id + "/exec", body);
  if (response.status != 200) die("exec: " + response.body);
  std::string out;
  std::istringstream lines(response.body);
  for (std::string line; std::getline(lines, line);) {
    google::protobuf::Struct event;
    if (!google::protobuf::util::JsonStringToMessage(line, &event).ok()) continue;
    const auto& fields = event.fields();
    if (fields.count("data")) out += fields.at("data").string_value();
  }
  return out;
}

struct Created {
  std::string id;
  double ms = 0;
};

Created create(HttpClient& http, const std::string& body) {
  auto start = Clock::now();
  auto created = http.request("POST", "/v1/sandboxes", body);
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  if (created.status != 201) die("create " + body + ": " + created.body);
  api::Sandbox sandbox;
  (void)google::protobuf::util::JsonStringToMessage(created.body, &sandbox);
  return {sandbox.id(), ms};
}

// MB/s of `runs` downloads of `megabytes` MB from `url` inside the guest.
std::vector<double> download_rates(HttpClient& http, const std::string& id, const std::string& url,
                                   size_t megabytes, int runs) {
  std::vector<double> rates;
  for (int run = 0; run < runs; ++run) {
    auto out = exec(http, id,
                    "import time, urllib.request\n"
                    "t = time.monotonic()\n"
                    "n = len(urllib.request.urlopen('" +
                        url + "/bytes/" + std::to_string(megabytes << 20) +
                        "', timeout=120).read())\n"
                        "print(n, time.monotonic() - t)\n");
    size_t bytes = 0;
    double seconds = 0;
    std::istringstream in(out);
    if (!(in >> bytes >> seconds) || bytes != megabytes << 20 || seconds <= 0)
      die("download in the guest: " + out);
    rates.push_back(static_cast<double>(bytes) / 1e6 / seconds);
  }
  return rates;
}

} // namespace

int main(int argc, char** argv) {
  std::string hostd_binary, images, json_path = "net_vm_bench.json";
  size_t megabytes = 32;
  int runs = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--hostd")
      hostd_binary = argv[i + 1];
    else if (flag == "--images")
      images = argv[i + 1];
    else if (flag == "--json")
      json_path = argv[i + 1];
    else if (flag == "--megabytes")
      megabytes = std::stoul(argv[i + 1]);
    else if (flag == "--runs")
      runs = std::stoi(argv[i + 1]);
    else
      die("unknown flag " + flag);
  }
  if (hostd_binary.empty() || images.empty()) die("needs --hostd PATH --images DIR");
  if (geteuid() != 0) die("makes network namespaces: run it as root");

  BridgeConfig bridge;
  bridge.prefix = "vy";
  bridge.transit = Cidr{Ipv4{uint32_t{10} << 24 | uint32_t{228} << 16}, 16};
  bridge.route_table = 1228;
  bridge.rule_priority = 7456;
  (void)BridgeManager::reclaim_leftovers(bridge);
  (void)testnet::TestInternet::reclaim("vx");
  auto internet = testnet::TestInternet::start("vx");
  if (!internet) die(internet.error().message());

  std::ostringstream network;
  network << R"({"uplink": ")" << (*internet)->uplink() << R"(", "uplink_gateway": ")"
          << testnet::kWanGateway.str() << R"(", "upstream_resolver": ")"
          << testnet::kResolverIp.str() << R"(", "prefix": "vy", "transit": ")"
          << bridge.transit.str() << R"(", "route_table": 1228, "rule_priority": 7456})";
  HostdOptions options;
  options.binary = hostd_binary;
  options.images_dir = images;
  options.max_sandboxes = 2;
  options.memory_mib = 512;
  options.network_json = network.str();

  double open_create = 0, allow_create = 0, off_create = 0;
  std::vector<double> nat, proxy;
  // A failure exits at once; the next run reclaims what this one left.
  try {
    HostdProcess hostd(options);
    HttpClient http("127.0.0.1", hostd.port(), hostd.key());
    auto open = create(http, R"({"egress": true})");
    open_create = open.ms;
    nat = download_rates(http, open.id, "http://allowed.test", megabytes, runs);
    http.request("DELETE", "/v1/sandboxes/" + open.id);
    auto allow = create(http, R"({"egress_allow": ["allowed.test"]})");
    allow_create = allow.ms;
    proxy = download_rates(http, allow.id, "http://allowed.test", megabytes, runs);
    http.request("DELETE", "/v1/sandboxes/" + allow.id);
    auto off = create(http, R"({"egress": false})");
    off_create = off.ms;
    http.request("DELETE", "/v1/sandboxes/" + off.id);
    hostd.stop();
  } catch (const std::exception& e) {
    die(std::string("hostd: ") + e.what());
  }
  internet->reset();
  auto left = BridgeManager::find_leftovers(bridge);
  if (!left || !left->empty()) die("hostd left network state behind");

  std::printf("\nreal VM (%s), HTTP download of %zu MB from the test internet, median of %d\n",
              "tcg", megabytes, runs);
  std::printf("%-40s %8.1f MB/s\n", "egress open (3x NAT)", median(nat));
  std::printf("%-40s %8.1f MB/s\n", "allowlist (proxy)", median(proxy));
  std::printf("\ncreate through hostd (boot included), ms\n");
  std::printf("%-40s %8.0f\n", "egress open", open_create);
  std::printf("%-40s %8.0f\n", "allowlist", allow_create);
  std::printf("%-40s %8.0f\n", "egress off", off_create);
  std::ofstream json(json_path);
  json << "{\n  \"megabytes\": " << megabytes << ",\n  \"runs\": " << runs
       << ",\n  \"vm_http_mb_per_s\": {\"open_nat\": " << median(nat)
       << ", \"allowlist_proxy\": " << median(proxy)
       << "},\n  \"create_ms\": {\"open\": " << open_create << ", \"allowlist\": " << allow_create
       << ", \"off\": " << off_create << "}\n}\n";
  return 0;
}
