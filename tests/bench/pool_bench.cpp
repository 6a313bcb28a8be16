// pool_bench: the warm pool through hostd's HTTP API on loopback, timed from
// the client's side.
//   create, pool hit     POST /v1/sandboxes answered by a waiting VM
//   pool refill          from that answer until the pool is full again
//   create, pool miss    a pooled template with nothing waiting: restore
//                        (with --prestarted above 0, each miss waits until
//                        the QEMU started ahead for it is ready: a warm
//                        restore; --prestarted 0: QEMU started on demand)
//   create, cold boot    a size without a template
//   memory per idle sandbox: PSS of the QEMU processes (smaps_rollup, which
//     splits the template's shared pages among the VMs mapping them) for
//     --idle sandboxes from the pool, then as many cold-booted ones. Each
//     pool sandbox runs one print(1) and idles 5 s first; its own PSS and
//     USS come from hostd's /metrics (vesicle_sandbox_pss_bytes), the
//     average over every QEMU (waiting pool VMs included) from /proc.
//   exec latency on those idle pool sandboxes (--execs print(1), --heavy
//     pandas cells, round robin), then their PSS again: with
//     --tcg-tb-mib, what the TCG translation cache's size costs in memory
//     and in exec time.
// Prints p50/p95/p99 and writes JSON. Starts its own hostds (the first
// builds its templates, ~30 s under TCG).
//
//   pool_bench --hostd build/hostd/hostd --images build/images [--json out.json]
//              [--hits 200] [--misses 20] [--boots 5] [--idle 10] [--memory-mib 512]
//              [--execs 0] [--heavy 0] [--tcg-tb-mib 0 (hostd's default)]
//              [--prestarted N (hostd's prestarted_vmms; default: hostd's)]
#include <sys/types.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
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

// Polling /v1/capacity every 5 ms (bench_http.hpp's default) is 200
// requests a second: past the free tier's 100 a second a key may make, so
// hostd answers 429 after the burst. 50 a second stays inside it.
constexpr auto kPoll = 20ms;

const std::string kPrint = R"j({"code": "print(1)"})j";
// Heavy for TCG: numpy's and pandas' code paths (pandas is not preloaded:
// its first run in a sandbox imports it).
const std::string kPandas =
    R"j({"code": "import pandas; print(pandas.DataFrame({'a': range(100000)}).sum().iloc[0])"})j";

void exec(HttpClient& http, const std::string& id, const std::string& body, Series* timing) {
  auto start = Clock::now();
  auto ran = http.request("POST", "/v1/sandboxes/" + id + "/exec", body);
  if (timing) timing->values.push_back(ms_since(start));
  if (ran.status != 200 || ran.body.find("\"exit_code\":0") == std::string::npos)
    throw std::runtime_error("exec " + body + ": " + ran.body);
}

// CPU time (user + system) of process `pid` so far, in ms: under TCG a
// cell's cost in its QEMU, which other work on the host does not inflate
// the way it inflates wall-clock time.
double cpu_ms(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream after(stat.substr(stat.rfind(')') + 1));
  std::string skip;
  for (int field = 3; field <= 13; ++field)
    after >> skip;
  double utime = 0, stime = 0;
  after >> utime >> stime;
  return (utime + stime) * 1000.0 / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The QEMU pid of every sandbox, from the admin list.
std::map<std::string, pid_t> vmm_pids(HttpClient& admin) {
  auto text = admin.request("GET", "/v1/admin/sandboxes").body;
  std::map<std::string, pid_t> pids;
  // Each entry is {"sandbox": {"id": ...}, ..., "vmm_pid": N}: the id is
  // the last one before its pid.
  std::regex pid("\"vmm_pid\":(\\d+)");
  for (std::sregex_iterator it(text.begin(), text.end(), pid), end; it != end; ++it) {
    const auto at = text.rfind("\"id\":\"", static_cast<std::size_t>(it->position()));
    if (at == std::string::npos) continue;
    const auto start = at + 6;
    pids[text.substr(start, text.find('"', start) - start)] = std::stoi((*it)[1].str());
  }
  return pids;
}

// Every `name{sandbox="..."} value` line of /metrics, in MiB.
// vesicle_prestarted_vmms{state="starting"}: pre-started QEMUs being made.
int prestarted_starting(HttpClient& admin) {
  auto text = admin.request("GET", "/metrics").body;
  std::smatch match;
  static const std::regex line("vesicle_prestarted_vmms\\{state=\"starting\"\\} (\\d+)");
  if (!std::regex_search(text, match, line))
    throw std::runtime_error("/metrics has no vesicle_prestarted_vmms");
  return std::stoi(match[1].str());
}

std::vector<double> per_sandbox_mib(HttpClient& admin, const std::string& name) {
  auto text = admin.request("GET", "/metrics").body;
  std::vector<double> values;
  std::regex line("\n" + name + "\\{sandbox=\"[^\"]*\"\\} (\\d+)");
  for (std::sregex_iterator it(text.begin(), text.end(), line), end; it != end; ++it)
    values.push_back(std::stod((*it)[1].str()) / (1 << 20));
  return values;
}

// Where a QEMU's PSS is, in MiB, by what its mappings hold (/proc/<pid>/smaps).
// Guest RAM mapped share=off over the template's memfd splits in two: the
// pages the VM wrote (its own copies, private) and the template's pages it
// shares with every VM restored from it.
std::map<std::string, double> pss_by_kind(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
  std::map<std::string, double> mib;
  std::string kind;
  bool guest_ram = false;
  double vma_pss = 0;
  static const std::regex header("^[0-9a-f]+-[0-9a-f]+ (\\S+) \\S+ \\S+ \\S+\\s*(.*)$");
  auto kib = [](const std::string& line) { return std::stod(line.substr(line.find(':') + 1)); };
  for (std::string line; std::getline(in, line);) {
    std::smatch match;
    if (std::regex_match(line, match, header)) {
      const std::string perms = match[1].str(), path = match[2].str();
      guest_ram = path.find("memfd:") != std::string::npos;
      if (guest_ram)
        kind = "guest RAM: the template's pages, shared";
      else if (path.empty() && perms.find('x') != std::string::npos)
        kind = "TCG translation cache";
      else if (path.empty() || path == "[heap]" || path == "[stack]")
        kind = "QEMU's own anonymous memory (heap, arenas, stacks)";
      else if (path.find("qemu-system") != std::string::npos)
        kind = "the QEMU binary";
      else if (path.find(".so") != std::string::npos)
        kind = "shared libraries";
      else
        kind = "other: " + path;
    } else if (line.rfind("Pss:", 0) == 0) {
      vma_pss = kib(line);
      mib[kind] += vma_pss / 1024;
    } else if (guest_ram && line.rfind("Private_Dirty:", 0) == 0) {
      // Move the VM's own copies out of the shared figure (a private
      // page's PSS is its size).
      const double own = std::min(kib(line), vma_pss);
      mib[kind] -= own / 1024;
      mib["guest RAM: pages the VM wrote (own copies)"] += own / 1024;
    }
  }
  return mib;
}

// pss_by_kind averaged over every sandbox's QEMU (their pids from the
// admin list).
std::map<std::string, double> average_pss_by_kind(HttpClient& admin) {
  auto text = admin.request("GET", "/v1/admin/sandboxes").body;
  std::map<std::string, double> sum;
  int vms = 0;
  std::regex pid("\"vmm_pid\":(\\d+)");
  for (std::sregex_iterator it(text.begin(), text.end(), pid), end; it != end; ++it) {
    for (const auto& [kind, mib] : pss_by_kind(std::stoi((*it)[1].str())))
      sum[kind] += mib;
    ++vms;
  }
  for (auto& [kind, mib] : sum)
    mib /= std::max(vms, 1);
  return sum;
}

void print_breakdown(const char* when, const std::map<std::string, double>& kinds) {
  std::printf("PSS of a pool sandbox by mapping, %s (MiB, mean over the sandboxes):\n", when);
  for (const auto& [kind, mib] : kinds)
    if (mib >= 0.05) std::printf("  %-52s %7.2f\n", kind.c_str(), mib);
}

std::string breakdown_json(const std::map<std::string, double>& kinds) {
  std::string json = "{";
  for (const auto& [kind, mib] : kinds) {
    char value[32];
    std::snprintf(value, sizeof value, "%.2f", mib);
    json += (json.size() > 1 ? ", \"" : "\"") + kind + "\": " + value;
  }
  return json + "}";
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
      "execs", po::value<int>()->default_value(0), "print(1) execs on the idle pool sandboxes")(
      "heavy", po::value<int>()->default_value(0), "pandas cells on the idle pool sandboxes")(
      "tcg-tb-mib", po::value<int>()->default_value(0),
      "hostd's tcg_translation_cache_mib (0: its default)")(
      "tcg-thread", po::value<std::string>()->default_value(""),
      "hostd's tcg_thread, single or multi (empty: its default)")(
      "prestarted", po::value<int>()->default_value(-1),
      "hostd's prestarted_vmms (-1: its default); above 0, each miss waits for its QEMU")(
      "pool-only", "no on-demand template and no cold-booted hostd: pool hits, the idle pool "
                   "sandboxes and their execs only")(
      "network", "give every VM a network slot (egress off; no uplink needed): the hit loop is "
                 "then also a create/destroy cycle test for the slots");
  po::variables_map args;
  po::store(po::parse_command_line(argc, argv, options), args);
  if (args.count("help")) {
    std::printf("usage: pool_bench [--hostd BIN] [--images DIR] [--json FILE] [--hits N] "
                "[--misses N] [--boots N] [--idle N] [--memory-mib M] [--execs N] [--heavy N] "
                "[--tcg-tb-mib N] [--tcg-thread single|multi] [--pool-only]\n");
    return 0;
  }
  const int memory = args["memory-mib"].as<int>();
  const int idle = args["idle"].as<int>();
  const bool pool_only = args.count("pool-only") > 0;
  const int prestarted = args["prestarted"].as<int>();
  const std::string size = "\"memory_mib\": " + std::to_string(memory);

  HostdOptions base;
  base.binary = args["hostd"].as<std::string>();
  base.images_dir = std::filesystem::absolute(args["images"].as<std::string>());
  base.memory_mib = static_cast<unsigned>(memory);
  base.max_sandboxes = static_cast<unsigned>(idle + 2);

  Series first_fill{"pool filled at start (template + 2 VMs)", {}}, hit{"create, pool hit", {}},
      refill{"pool refill (one VM)", {}}, miss{"create, pool miss (restore)", {}},
      boot{"create, cold boot", {}}, pool_memory{"PSS per idle sandbox, from the pool", {}, "MiB"},
      boot_memory{"PSS per idle sandbox, cold booted", {}, "MiB"},
      own_pss{"PSS of an idle pool sandbox", {}, "MiB"},
      own_uss{"USS of an idle pool sandbox", {}, "MiB"}, print_exec{"exec print(1)", {}},
      pandas_first{"exec pandas, first in a sandbox", {}}, pandas_again{"exec pandas, again", {}},
      busy_pss{"PSS of a pool sandbox after execs", {}, "MiB"},
      print_cpu{"QEMU CPU per print(1)", {}}, pandas_first_cpu{"QEMU CPU per pandas, first", {}},
      pandas_again_cpu{"QEMU CPU per pandas, again", {}};
  std::map<std::string, double> idle_kinds, busy_kinds;
  std::string accel;
  std::unique_ptr<HostdProcess> hostd;
  try {
    auto pooled = base;
    const std::string on_demand_pool = ", {\"template\": \"ondemand\", " + size +
                                       ", \"min_ready\": 0, \"preload_modules\": [\"numpy\"]}";
    pooled.extra_config =
        "\"pools\": [{" + size + ", \"min_ready\": 2, \"max\": " + std::to_string(idle + 4) +
        ", \"preload_modules\": [\"numpy\"]}" + (pool_only ? "" : on_demand_pool) + "]";
    if (const int tb = args["tcg-tb-mib"].as<int>(); tb > 0)
      pooled.extra_config += ", \"tcg_translation_cache_mib\": " + std::to_string(tb);
    if (const auto thread = args["tcg-thread"].as<std::string>(); !thread.empty())
      pooled.extra_config += ", \"tcg_thread\": \"" + thread + "\"";
    pooled.prestarted_vmms = prestarted;
    if (args.count("network"))
      pooled.network_json = R"({"prefix": "vp", "transit": "10.224.0.0/16", "route_table": 1224, )"
                            R"("rule_priority": 1224})";
    const auto started = Clock::now();
    hostd = std::make_unique<HostdProcess>(pooled);
    HttpClient http("127.0.0.1", hostd->port(), hostd->key());
    HttpClient admin("127.0.0.1", hostd->port(), hostd->admin_key());
    accel = field(http.request("GET", "/v1/healthz").body, "accel");
    auto filled = [&] {
      auto [ready, booting] = pool_counts(http, "default");
      return ready == 2 && booting == 0;
    };
    wait_until(filled, 600s, "the pool to fill (template build)", kPoll);
    first_fill.values.push_back(ms_since(started));
    if (!pool_only)
      wait_until([&] { return template_state(http, "ondemand") == "ready"; }, 600s,
                 "the on-demand template", kPoll);

    const std::string pooled_body = "{" + size + "}";
    for (int i = 0; i < args["hits"].as<int>(); ++i) {
      auto id = create(http, pooled_body, "pool", &hit);
      const auto taken = Clock::now();
      wait_until(filled, 120s, "a refill", kPoll);
      refill.values.push_back(ms_since(taken));
      destroy(http, id);
    }
    const std::string on_demand = "{\"template\": \"ondemand\", " + size + "}";
    for (int i = 0; i < (pool_only ? 0 : args["misses"].as<int>()); ++i) {
      // The first miss asks for a QEMU to wait for the next (a warm restore).
      if (i > 0 && prestarted != 0)
        wait_until([&] { return prestarted_starting(admin) == 0; }, 120s,
                   "the QEMU started for the next miss", kPoll);
      destroy(http, create(http, on_demand, "restore", &miss));
    }

    std::vector<std::string> ids;
    for (int i = 0; i < idle; ++i) {
      ids.push_back(create(http, pooled_body, "pool", nullptr));
      wait_until(filled, 120s, "a refill", kPoll);
    }
    // The VMs waiting in the pool map the template too and cost the same as
    // an idle sandbox: divide the total over every QEMU process.
    if (idle > 0) {
      for (const auto& id : ids)
        exec(http, id, kPrint, nullptr);
      std::this_thread::sleep_for(5s);
      const double pooled_total = total_pss_mib(*hostd);
      const auto vms = hostd->qemu_pids().size();
      pool_memory.values.push_back(pooled_total / static_cast<double>(vms));
      own_pss.values = per_sandbox_mib(admin, "vesicle_sandbox_pss_bytes");
      own_uss.values = per_sandbox_mib(admin, "vesicle_sandbox_uss_bytes");
      idle_kinds = average_pss_by_kind(admin);
      const auto pids = vmm_pids(admin);
      // One cell on sandbox `id`, timed at the client and in its QEMU.
      auto timed = [&](const std::string& id, const std::string& body, Series* wall, Series* cpu) {
        const auto it = pids.find(id);
        const double before = it == pids.end() ? 0 : cpu_ms(it->second);
        exec(http, id, body, wall);
        if (it != pids.end()) cpu->values.push_back(cpu_ms(it->second) - before);
      };
      for (int i = 0; i < args["execs"].as<int>(); ++i)
        timed(ids[static_cast<std::size_t>(i) % ids.size()], kPrint, &print_exec, &print_cpu);
      for (int i = 0; i < args["heavy"].as<int>(); ++i)
        timed(ids[static_cast<std::size_t>(i) % ids.size()], kPandas,
              i < idle ? &pandas_first : &pandas_again,
              i < idle ? &pandas_first_cpu : &pandas_again_cpu);
      if (args["execs"].as<int>() + args["heavy"].as<int>() > 0) {
        std::this_thread::sleep_for(5s);
        busy_pss.values = per_sandbox_mib(admin, "vesicle_sandbox_pss_bytes");
        busy_kinds = average_pss_by_kind(admin);
      }
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
  if (!pool_only && (args["boots"].as<int>() > 0 || idle > 0)) {
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

  const int tb = args["tcg-tb-mib"].as<int>();
  const std::string asked_thread = args["tcg-thread"].as<std::string>();
  const std::string thread = asked_thread.empty() ? "default" : asked_thread;
  std::printf("warm pool through hostd's REST API on loopback, accel %s, memory_mib %d, "
              "tcg_translation_cache_mib %s, tcg_thread %s, %ld cores\n",
              accel.c_str(), memory, tb > 0 ? std::to_string(tb).c_str() : "default",
              thread.c_str(), ::sysconf(_SC_NPROCESSORS_ONLN));
  print_header();
  std::string json = "{\"accel\": \"" + accel + "\", \"memory_mib\": " + std::to_string(memory) +
                     ", \"idle_sandboxes\": " + std::to_string(idle) +
                     ", \"tcg_translation_cache_mib\": " + std::to_string(tb) +
                     ", \"tcg_thread\": \"" + thread + "\", \"steps\": [";
  bool first = true;
  for (const auto* series : {&first_fill, &hit, &refill, &miss, &boot, &pool_memory, &boot_memory,
                             &own_pss, &own_uss, &print_exec, &pandas_first, &pandas_again,
                             &busy_pss, &print_cpu, &pandas_first_cpu, &pandas_again_cpu}) {
    series->print_row();
    json += (first ? "" : ", ") + series->json();
    first = false;
  }
  json += "], \"pss_by_kind_idle\": " + breakdown_json(idle_kinds) +
          ", \"pss_by_kind_after_execs\": " + breakdown_json(busy_kinds) + "}\n";
  if (!idle_kinds.empty()) print_breakdown("idle", idle_kinds);
  if (!busy_kinds.empty()) print_breakdown("after the execs", busy_kinds);
  if (args.count("json")) write_results(args["json"].as<std::string>(), json);
  return 0;
}
