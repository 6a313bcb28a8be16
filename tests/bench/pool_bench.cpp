// pool_bench: the warm pool through hostd's HTTP API on loopback, timed from
// the client's side.
//   create, pool hit     POST /v1/sandboxes answered by a waiting VM
//   pool refill          from that answer until the pool is full again
//   create, pool miss    a pooled template with nothing waiting: restore
//   create, cold boot    a size without a template
//   memory per idle sandbox: PSS of the QEMU processes (smaps_rollup, which
//     splits the template's shared pages among the VMs mapping them) for
//     --idle sandboxes from the pool, then as many cold-booted ones
// Prints p50/p95/p99 and writes JSON. Starts its own hostds (the first
// builds its templates, ~30 s under TCG).
//
//   pool_bench --hostd build/hostd/hostd --images build/images [--json out.json]
//              [--hits 200] [--misses 20] [--boots 5] [--idle 10] [--memory-mib 512]
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
#include <vector>

#include <boost/program_options.hpp>

#include "tests/bench/bench_http.hpp"
#include "tests/bench/series.hpp"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/http_client.hpp"

namespace po = boost::program_options;
using namespace vesicle::testing;
using namespace vesicle::bench;
using namespace std::chrono_literals;

namespace {

// The pools' "ready" and "booting" for template `name` in /v1/capacity.
std::pair<int, int> pool_counts(HttpClient& http, const std::string& name) {
  auto body = http.request("GET", "/v1/capacity").body;
  std::smatch match;
  std::regex entry("\\{[^{}]*\"template\":\"" + name + "\"[^{}]*\\}");
  if (!std::regex_search(body, match, entry)) throw std::runtime_error("no pool " + name);
  auto text = match[0].str();
  auto number = [&](const std::string& key) {
    std::smatch m;
    return std::regex_search(text, m, std::regex("\"" + key + "\":(\\d+)")) ? std::stoi(m[1].str())
                                                                            : 0;
  };
  return {number("ready"), number("booting")};
}

std::string template_state(HttpClient& http, const std::string& name) {
  auto body = http.request("GET", "/v1/capacity").body;
  std::smatch match;
  std::regex entry("\"template\":\"" + name + "\"[^{}]*\"template_state\":\"([^\"]*)\"");
  return std::regex_search(body, match, entry) ? match[1].str() : "";
}

std::string create(HttpClient& http, const std::string& body, const std::string& source,
                   Series* timing) {
  auto start = Clock::now();
  auto created = http.request("POST", "/v1/sandboxes", body);
  if (timing) timing->values.push_back(ms_since(start));
  if (created.status != 201) throw std::runtime_error("create: " + created.body);
  if (field(created.body, "source") != source)
    throw std::runtime_error("expected source " + source + ": " + created.body);
  return field(created.body, "id");
}

double pss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("Pss:", 0) == 0) return std::stod(line.substr(4));
  return 0;
}

double total_pss_mib(const HostdProcess& hostd) {
  double kib = 0;
  for (pid_t pid : hostd.qemu_pids())
    kib += pss_kib(pid);
  return kib / 1024;
}

} // namespace

int main(int argc, char** argv) {
  po::options_description options("pool_bench options");
  options.add_options()("help,h", "show this help")(
      "hostd", po::value<std::string>()->default_value("build/hostd/hostd"),
      "hostd binary")("images", po::value<std::string>()->default_value("build/images"),
                      "guest images")("json", po::value<std::string>(), "write the results here")(
      "hits", po::value<int>()->default_value(200), "creates served by the pool")(
      "misses", po::value<int>()->default_value(20), "creates restored on demand")(
      "boots", po::value<int>()->default_value(5), "cold-booted creates")(
      "idle", po::value<int>()->default_value(10), "idle sandboxes for the memory figure")(
      "memory-mib", po::value<int>()->default_value(512), "guest RAM per sandbox")(
      "network", "give every VM a network slot (egress off; no uplink needed): the hit loop is "
                 "then also a create/destroy cycle test for the slots");
  po::variables_map args;
  po::store(po::parse_command_line(argc, argv, options), args);
  if (args.count("help")) {
    std::printf("usage: pool_bench [--hostd BIN] [--images DIR] [--json FILE] [--hits N] "
                "[--misses N] [--boots N] [--idle N] [--memory-mib M]\n");
    return 0;
  }
  const int memory = args["memory-mib"].as<int>();
  const int idle = args["idle"].as<int>();
  const std::string size = "\"memory_mib\": " + std::to_string(memory);

  HostdOptions base;
  base.binary = args["hostd"].as<std::string>();
  base.images_dir = std::filesystem::absolute(args["images"].as<std::string>());
  base.memory_mib = static_cast<unsigned>(memory);
  base.max_sandboxes = static_cast<unsigned>(idle + 2);

  Series first_fill{"pool filled at start (template + 2 VMs)", {}}, hit{"create, pool hit", {}},
      refill{"pool refill (one VM)", {}}, miss{"create, pool miss (restore)", {}},
      boot{"create, cold boot", {}}, pool_memory{"PSS per idle sandbox, from the pool", {}, "MiB"},
      boot_memory{"PSS per idle sandbox, cold booted", {}, "MiB"};
  std::string accel;
  std::unique_ptr<HostdProcess> hostd;
  try {
    auto pooled = base;
    pooled.extra_config = "\"pools\": [{" + size +
                          ", \"min_ready\": 2, \"max\": " + std::to_string(idle + 4) +
                          ", \"preload_modules\": [\"numpy\"]}, {\"template\": \"ondemand\", " +
                          size + ", \"min_ready\": 0, \"preload_modules\": [\"numpy\"]}]";
    if (args.count("network"))
      pooled.network_json = R"({"prefix": "vp", "transit": "10.224.0.0/16", "route_table": 1224, )"
                            R"("rule_priority": 1224})";
    const auto started = Clock::now();
    hostd = std::make_unique<HostdProcess>(pooled);
    HttpClient http("127.0.0.1", hostd->port(), hostd->key());
    accel = field(http.request("GET", "/v1/healthz").body, "accel");
    auto filled = [&] {
      auto [ready, booting] = pool_counts(http, "default");
      return ready == 2 && booting == 0;
    };
    wait_until(filled, 600s, "the pool to fill (template build)");
    first_fill.values.push_back(ms_since(started));
    wait_until([&] { return template_state(http, "ondemand") == "ready"; }, 600s,
               "the on-demand template");

    const std::string pooled_body = "{" + size + "}";
    for (int i = 0; i < args["hits"].as<int>(); ++i) {
      auto id = create(http, pooled_body, "pool", &hit);
      const auto taken = Clock::now();
      wait_until(filled, 120s, "a refill");
      refill.values.push_back(ms_since(taken));
      destroy(http, id);
    }
    const std::string on_demand = "{\"template\": \"ondemand\", " + size + "}";
    for (int i = 0; i < args["misses"].as<int>(); ++i)
      destroy(http, create(http, on_demand, "restore", &miss));

    std::vector<std::string> ids;
    for (int i = 0; i < idle; ++i) {
      ids.push_back(create(http, pooled_body, "pool", nullptr));
      wait_until(filled, 120s, "a refill");
    }
    // The VMs waiting in the pool map the template too and cost the same as
    // an idle sandbox: divide the total over every QEMU process.
    if (idle > 0) {
      std::this_thread::sleep_for(5s);
      const double pooled_total = total_pss_mib(*hostd);
      const auto vms = hostd->qemu_pids().size();
      pool_memory.values.push_back(pooled_total / static_cast<double>(vms));
    }
    for (const auto& id : ids)
      destroy(http, id);
    hostd.reset();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pool_bench: %s\n", e.what());
    if (hostd) std::fprintf(stderr, "%s\n", hostd->log().c_str());
    return 1;
  }
  // The cold-booted side, on a second hostd without pools.
  if (args["boots"].as<int>() > 0 || idle > 0) {
    try {

      std::vector<std::string> ids;
      const std::string pooled_body = "{" + size + "}";
      auto cold = base;
      cold.max_sandboxes = static_cast<unsigned>(std::max(idle, args["boots"].as<int>()) + 1);
      hostd = std::make_unique<HostdProcess>(cold); // pools off
      HttpClient cold_http("127.0.0.1", hostd->port(), hostd->key());
      for (int i = 0; i < args["boots"].as<int>(); ++i)
        destroy(cold_http, create(cold_http, pooled_body, "boot", &boot));
      for (int i = 0; i < idle; ++i)
        ids.push_back(create(cold_http, pooled_body, "boot", nullptr));
      if (idle > 0) {
        std::this_thread::sleep_for(5s);
        boot_memory.values.push_back(total_pss_mib(*hostd) /
                                     static_cast<double>(hostd->qemu_pids().size()));
      }
      for (const auto& id : ids)
        destroy(cold_http, id);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pool_bench: %s\n", e.what());
      if (hostd) std::fprintf(stderr, "%s\n", hostd->log().c_str());
      return 1;
    }
  }

  std::printf("warm pool through hostd's REST API on loopback, accel %s, memory_mib %d, "
              "%ld cores\n",
              accel.c_str(), memory, ::sysconf(_SC_NPROCESSORS_ONLN));
  print_header();
  std::string json = "{\"accel\": \"" + accel + "\", \"memory_mib\": " + std::to_string(memory) +
                     ", \"idle_sandboxes\": " + std::to_string(idle) + ", \"steps\": [";
  bool first = true;
  for (const auto* series :
       {&first_fill, &hit, &refill, &miss, &boot, &pool_memory, &boot_memory}) {
    series->print_row();
    json += (first ? "" : ", ") + series->json();
    first = false;
  }
  json += "]}\n";
  if (args.count("json")) write_results(args["json"].as<std::string>(), json);
  return 0;
}
