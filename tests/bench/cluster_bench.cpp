// cluster_bench: what a cluster gateway adds to a call (docs/cluster.md).
// One hostd node with a warm pool behind one vesicle-gateway on loopback;
// the same steps, alternating, through the gateway and straight to the
// node, in one run:
//   create, pool hit     POST /v1/sandboxes answered by a waiting VM
//                        (the pool refills between creates, untimed)
//   exec print(1)        POST /v1/sandboxes/{id}/exec on one sandbox
//   get sandbox          GET /v1/sandboxes/{id}: the proxy's own cost, without
//                        a VM's time in it
// Prints p50/p95/p99 and the gateway's extra p50, and writes JSON. The
// node builds its template first (~30 s under TCG).
//
//   cluster_bench --hostd build/hostd/hostd --gateway build/hostd/vesicle-gateway
//                 --images build/images [--json out.json] [--hits 20] [--execs 100]
//                 [--gets 500]
#include <sys/types.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <regex>
#include <stdexcept>
#include <string>
#include <thread>

#include <boost/program_options.hpp>

#include "tests/bench/bench_http.hpp"
#include "tests/bench/series.hpp"
#include "tests/cluster/gateway_process.hpp"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/http_client.hpp"

namespace po = boost::program_options;
using namespace vesicle::testing;
using namespace vesicle::bench;
using namespace std::chrono_literals;

namespace {

// The default pool's waiting VMs, from the node's /v1/capacity.
int pool_ready(HttpClient& node) {
  auto body = node.request("GET", "/v1/capacity").body;
  std::smatch match;
  std::regex entry("\\{[^{}]*\"template\":\"default\"[^{}]*\\}");
  if (!std::regex_search(body, match, entry)) return 0;
  auto text = match[0].str();
  std::smatch ready;
  return std::regex_search(text, ready, std::regex("\"ready\":(\\d+)")) ? std::stoi(ready[1].str())
                                                                        : 0;
}

std::string create_hit(HttpClient& http, Series& timing) {
  auto start = Clock::now();
  auto created = http.request("POST", "/v1/sandboxes", "{}");
  timing.values.push_back(ms_since(start));
  if (created.status != 201) throw std::runtime_error("create: " + created.body);
  if (field(created.body, "source") != "pool")
    throw std::runtime_error("not a pool hit: " + created.body);
  return field(created.body, "id");
}

void exec_one(HttpClient& http, const std::string& id, Series& timing) {
  auto start = Clock::now();
  auto ran = http.request("POST", "/v1/sandboxes/" + id + "/exec", R"j({"code": "print(1)"})j");
  timing.values.push_back(ms_since(start));
  if (ran.status != 200 || ran.body.find("\"exit_code\":0") == std::string::npos)
    throw std::runtime_error("exec: " + ran.body);
}

// The cluster's directories, removed at the end however it ends: the
// gateway's home and the node's (a sibling with a name of its own, which
// also names its cgroup parent and its /dev/shm directory).
struct Home {
  std::filesystem::path path;
  std::filesystem::path node;
  Home() {
    char pattern[] = "/tmp/cluster-bench-XXXXXX";
    if (!::mkdtemp(pattern)) throw std::runtime_error("mkdtemp failed");
    path = pattern;
    node = path.string() + "-node";
  }
  ~Home() {
    for (const char* controller : {"memory", "pids", "cpu"}) {
      const auto root = std::filesystem::path("/sys/fs/cgroup") / controller / node.filename();
      std::error_code ec;
      for (const auto& leaf : std::filesystem::directory_iterator(root, ec))
        if (leaf.is_directory()) ::rmdir(leaf.path().c_str());
      ::rmdir(root.c_str());
    }
    std::error_code ignored;
    std::filesystem::remove_all(std::filesystem::path("/dev/shm") / node.filename(), ignored);
    std::filesystem::remove_all(node, ignored);
    std::filesystem::remove_all(path, ignored);
  }
};

} // namespace

int main(int argc, char** argv) {
  po::options_description options("cluster_bench options");
  options.add_options()("help,h", "show this help")(
      "hostd", po::value<std::string>()->default_value("build/hostd/hostd"), "hostd binary")(
      "gateway", po::value<std::string>()->default_value("build/hostd/vesicle-gateway"),
      "vesicle-gateway binary")("images", po::value<std::string>()->default_value("build/images"),
                                "guest images")("json", po::value<std::string>(),
                                                "write the results here")(
      "hits", po::value<int>()->default_value(20), "pool-hit creates each way")(
      "execs", po::value<int>()->default_value(100), "exec print(1) calls each way")(
      "gets", po::value<int>()->default_value(500), "GET /v1/sandboxes/{id} calls each way");
  po::variables_map args;
  po::store(po::parse_command_line(argc, argv, options), args);
  if (args.count("help")) {
    std::printf("usage: cluster_bench [--hostd BIN] [--gateway BIN] [--images DIR] [--json FILE] "
                "[--hits N] [--execs N] [--gets N]\n");
    return 0;
  }
  Series hit_gateway{"create, pool hit, via gateway", {}},
      hit_direct{"create, pool hit, direct", {}}, exec_gateway{"exec print(1), via gateway", {}},
      exec_direct{"exec print(1), direct", {}}, get_gateway{"get sandbox, via gateway", {}},
      get_direct{"get sandbox, direct", {}};
  std::string accel;
  try {
    Home home;
    const std::filesystem::path gateway_binary = args["gateway"].as<std::string>();
    std::filesystem::create_directories(home.path / "gateway" / "state");
    {
      std::ofstream secret(home.path / "secret");
      secret << "a-bench-cluster-secret-" << home.path.filename().string() << "\n";
    }
    std::filesystem::permissions(home.path / "secret", std::filesystem::perms::owner_read |
                                                           std::filesystem::perms::owner_write);
    const auto state = (home.path / "gateway" / "state").string();
    const auto key =
        key_in(run_for_stdout({gateway_binary.string(), "--state-dir", state, "--new-key"}));
    const auto actor_port = free_port();
    {
      std::ofstream config(home.path / "gateway" / "gateway.json");
      config << R"({"state_dir": ")" << state << R"(", "cluster": {"secret_file": ")"
             << (home.path / "secret").string() << R"("}})";
    }
    GatewayProcess gateway(gateway_binary, home.path / "gateway", actor_port);

    std::filesystem::create_directories(home.node / "state");
    std::filesystem::copy_file(home.path / "gateway" / "state" / "keys",
                               home.node / "state" / "keys");
    HostdOptions node_options;
    node_options.binary = args["hostd"].as<std::string>();
    node_options.images_dir = std::filesystem::absolute(args["images"].as<std::string>());
    node_options.max_sandboxes = 4;
    node_options.home = home.node;
    node_options.confinement_extra = "\"uid_first\": 1960000000, \"uid_count\": 4096";
    node_options.extra_config =
        R"("pools": [{"memory_mib": 512, "min_ready": 2, "max": 3}], "cluster": )"
        R"({"node_name": "b1", "region": "here", "gateways": ["127.0.0.1:)" +
        std::to_string(actor_port) + R"("], "secret_file": ")" + (home.path / "secret").string() +
        "\"}";
    HostdProcess node(node_options);
    HttpClient direct("127.0.0.1", node.port(), key);
    HttpClient via("127.0.0.1", gateway.port(), key);
    accel = field(direct.request("GET", "/v1/healthz").body, "accel");
    wait_until(
        [&] {
          return std::regex_search(via.request("GET", "/v1/capacity").body,
                                   std::regex("\"max_sandboxes\":[1-9]"));
        },
        60s, "the node to register with the gateway", 20ms);
    auto filled = [&] { return pool_ready(direct) >= 2; };
    wait_until(filled, 900s, "the pool to fill (template build)", 20ms);

    for (int i = 0; i < args["hits"].as<int>(); ++i) {
      for (auto* way : {&hit_gateway, &hit_direct}) {
        auto& http = way == &hit_gateway ? via : direct;
        auto id = create_hit(http, *way);
        destroy(direct, id);
        wait_until(filled, 300s, "a refill", 20ms);
      }
    }
    auto id = create_hit(direct, hit_direct);
    hit_direct.values.pop_back(); // not a pair's; only the sandbox to exec in
    for (int i = 0; i < args["execs"].as<int>(); ++i) {
      exec_one(via, id, exec_gateway);
      exec_one(direct, id, exec_direct);
    }
    for (int i = 0; i < args["gets"].as<int>(); ++i) {
      for (auto* way : {&get_gateway, &get_direct}) {
        auto& http = way == &get_gateway ? via : direct;
        auto start = Clock::now();
        auto got = http.request("GET", "/v1/sandboxes/" + id);
        way->values.push_back(ms_since(start));
        if (got.status != 200) throw std::runtime_error("get: " + got.body);
      }
    }
    destroy(direct, id);
    if (node.stop() != 0) std::fprintf(stderr, "cluster_bench: the node did not stop cleanly\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cluster_bench: %s\n", e.what());
    return 1;
  }

  std::printf("a cluster gateway on loopback vs straight to the node, accel %s, %ld cores\n",
              accel.c_str(), ::sysconf(_SC_NPROCESSORS_ONLN));
  print_header();
  std::string json = "{\"accel\": \"" + accel + "\", \"steps\": [";
  bool first = true;
  for (const auto* series :
       {&hit_gateway, &hit_direct, &exec_gateway, &exec_direct, &get_gateway, &get_direct}) {
    series->print_row();
    json += (first ? "" : ", ") + series->json();
    first = false;
  }
  const double create_extra = hit_gateway.percentile(50) - hit_direct.percentile(50);
  const double exec_extra = exec_gateway.percentile(50) - exec_direct.percentile(50);
  const double get_extra = get_gateway.percentile(50) - get_direct.percentile(50);
  std::printf("the gateway adds (p50): create %.2f ms, exec %.2f ms, get %.2f ms\n", create_extra,
              exec_extra, get_extra);
  char extra[200];
  std::snprintf(extra, sizeof extra,
                "], \"gateway_adds_p50_ms\": {\"create\": %.3f, \"exec\": %.3f, \"get\": %.3f}}\n",
                create_extra, exec_extra, get_extra);
  json += extra;
  if (args.count("json")) write_results(args["json"].as<std::string>(), json);
  return 0;
}
