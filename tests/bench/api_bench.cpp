// api_bench: hostd's REST API on loopback, timed from the client's side.
//   create   POST /v1/sandboxes until 201 (a cold boot: no warm pool yet)
//   exec     POST .../exec {"code": "print(1)"}, to the end of the stream
//   destroy  DELETE /v1/sandboxes/{id} until 204
// Prints p50/p95/p99 per step and writes them as JSON.
//
//   api_bench --url http://127.0.0.1:7070 --key vsk_... [--json out.json]
//             [--sandboxes 5] [--execs 20] [--memory-mib 512]
//   api_bench --hostd build/hostd/hostd --images build/images ...
//             (starts its own hostd in a temporary state directory)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "tests/bench/series.hpp"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/http_client.hpp"

namespace po = boost::program_options;
using namespace vesicle::testing;
using vesicle::bench::Clock;
using vesicle::bench::ms_since;
using vesicle::bench::Series;

namespace {

std::string id_in(const std::string& body) {
  std::smatch match;
  if (!std::regex_search(body, match, std::regex("\"id\":\"(sb-[0-9a-f]+)\"")))
    throw std::runtime_error("no sandbox id in " + body);
  return match[1].str();
}

} // namespace

int main(int argc, char** argv) {
  po::options_description options("api_bench options");
  options.add_options()("help,h", "show this help")("url", po::value<std::string>(),
                                                    "a running hostd, http://127.0.0.1:PORT")(
      "key", po::value<std::string>(), "its API key")("hostd", po::value<std::string>(),
                                                      "or: a hostd binary to start for the run")(
      "images", po::value<std::string>(),
      "guest images for --hostd")("json", po::value<std::string>(), "write the results here")(
      "sandboxes", po::value<int>()->default_value(5), "create/destroy rounds")(
      "execs", po::value<int>()->default_value(20), "print(1) round trips")(
      "memory-mib", po::value<int>()->default_value(512), "guest RAM per sandbox");
  po::variables_map args;
  po::store(po::parse_command_line(argc, argv, options), args);
  if (args.count("help") || (!args.count("url") && !args.count("hostd"))) {
    std::printf("%s\n", "usage: api_bench (--url URL --key KEY | --hostd BIN --images DIR) "
                        "[--json FILE] [--sandboxes N] [--execs N]");
    std::printf("%s", "");
    return args.count("help") ? 0 : 2;
  }

  std::unique_ptr<HostdProcess> own;
  std::string host = "127.0.0.1";
  unsigned short port = 0;
  std::string key;
  if (args.count("hostd")) {
    HostdOptions hostd_options;
    hostd_options.binary = args["hostd"].as<std::string>();
    hostd_options.images_dir = args.count("images") ? args["images"].as<std::string>() : "images";
    hostd_options.max_sandboxes = 2;
    hostd_options.memory_mib = static_cast<unsigned>(args["memory-mib"].as<int>());
    own = std::make_unique<HostdProcess>(hostd_options);
    port = own->port();
    key = own->key();
  } else {
    std::smatch match;
    auto url = args["url"].as<std::string>();
    if (!std::regex_match(url, match, std::regex("http://([0-9.]+):(\\d+)/?"))) {
      std::fprintf(stderr, "api_bench: --url must look like http://127.0.0.1:7070\n");
      return 2;
    }
    host = match[1].str();
    port = static_cast<unsigned short>(std::stoi(match[2].str()));
    key = args.count("key") ? args["key"].as<std::string>() : "";
  }

  HttpClient http(host, port, key);
  auto health = http.request("GET", "/v1/healthz").body;
  std::smatch accel_match;
  std::string accel = std::regex_search(health, accel_match, std::regex("\"accel\":\"(\\w+)\""))
                          ? accel_match[1].str()
                          : "?";
  std::string create_body =
      "{\"memory_mib\": " + std::to_string(args["memory-mib"].as<int>()) + "}";
  const std::string exec_body = R"j({"code": "print(1)"})j";

  Series create{"create (cold boot)", {}}, exec{"exec print(1)", {}},
      first_exec{"first exec after create", {}}, destroy{"destroy", {}};
  try {
    for (int i = 0; i < args["sandboxes"].as<int>(); ++i) {
      auto start = Clock::now();
      auto created = http.request("POST", "/v1/sandboxes", create_body);
      if (created.status != 201) throw std::runtime_error("create: " + created.body);
      create.values.push_back(ms_since(start));
      auto id = id_in(created.body);

      start = Clock::now();
      auto ran = http.request("POST", "/v1/sandboxes/" + id + "/exec", exec_body);
      if (ran.status != 200 || ran.body.find("\"data\":\"1") == std::string::npos)
        throw std::runtime_error("exec: " + ran.body);
      first_exec.values.push_back(ms_since(start));
      if (i == 0) {
        for (int k = 0; k < args["execs"].as<int>(); ++k) {
          start = Clock::now();
          auto again = http.request("POST", "/v1/sandboxes/" + id + "/exec", exec_body);
          if (again.status != 200) throw std::runtime_error("exec: " + again.body);
          exec.values.push_back(ms_since(start));
        }
      }
      start = Clock::now();
      auto deleted = http.request("DELETE", "/v1/sandboxes/" + id);
      if (deleted.status != 204) throw std::runtime_error("destroy: " + deleted.body);
      destroy.values.push_back(ms_since(start));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "api_bench: %s\n", e.what());
    if (own) std::fprintf(stderr, "%s\n", own->log().c_str());
    return 1;
  }

  std::printf("hostd REST API on loopback, accel %s, memory_mib %d\n", accel.c_str(),
              args["memory-mib"].as<int>());
  std::printf("%-26s %6s %10s %10s %10s\n", "step", "n", "p50 ms", "p95 ms", "p99 ms");
  std::string json = "{\"accel\": \"" + accel +
                     "\", \"memory_mib\": " + std::to_string(args["memory-mib"].as<int>()) +
                     ", \"steps\": [";
  bool first = true;
  for (const auto* series : {&create, &first_exec, &exec, &destroy}) {
    std::printf("%-26s %6zu %10.1f %10.1f %10.1f\n", series->name.c_str(), series->values.size(),
                series->percentile(50), series->percentile(95), series->percentile(99));
    char entry[256];
    std::snprintf(entry, sizeof entry,
                  "%s{\"step\": \"%s\", \"n\": %zu, \"p50_ms\": %.2f, \"p95_ms\": %.2f, "
                  "\"p99_ms\": %.2f}",
                  first ? "" : ", ", series->name.c_str(), series->values.size(),
                  series->percentile(50), series->percentile(95), series->percentile(99));
    json += entry;
    first = false;
  }
  json += "]}\n";
  if (args.count("json")) vesicle::bench::write_results(args["json"].as<std::string>(), json);
  return 0;
}
