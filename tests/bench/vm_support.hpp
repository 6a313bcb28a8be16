// What the VM benchmark programs (vm_bench, snapshot_bench,
// full_snapshot_bench) share: their command line, the VMs they boot, their
// nearest-rank percentiles and the JSON document they write.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "tests/bench/series.hpp"
#include "tests/vmm/test_support.hpp"
#include "vmm/json.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::bench {

// Nearest-rank percentile (the ceil(p/100 * n)-th smallest), 0 when empty.
inline double nearest_rank(std::vector<double> samples, double p) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * samples.size()));
  return samples[std::clamp<std::size_t>(rank, 1, samples.size()) - 1];
}

// {"n", "p50", ... one per `ps`, "min", "max"} of the samples.
inline json::Value stats(const std::vector<double>& samples,
                         std::initializer_list<double> ps = {50, 95, 99}) {
  json::Object object;
  object["n"] = json::Value(static_cast<std::int64_t>(samples.size()));
  for (double p : ps)
    object["p" + std::to_string(static_cast<int>(p))] = json::Value(nearest_rank(samples, p));
  if (!samples.empty()) {
    object["min"] = json::Value(*std::min_element(samples.begin(), samples.end()));
    object["max"] = json::Value(*std::max_element(samples.begin(), samples.end()));
  }
  return json::Value(std::move(object));
}

// Parses the command line into the options' targets. An exit code when the
// program should stop here (0 after --help, 2 on a bad option), else none.
inline std::optional<int> parse_options(int argc, char** argv,
                                        const boost::program_options::options_description& options,
                                        const char* program) {
  namespace po = boost::program_options;
  try {
    po::variables_map vm;
    po::store(po::parse_command_line(argc, argv, options), vm);
    if (vm.count("help")) {
      std::cout << options << "\n";
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 2;
  }
  return std::nullopt;
}

// The guest every VM of one benchmark run gets, and where its files go.
struct GuestShape {
  std::string images = test::env_or("VESICLE_IMAGES_DIR", "build/images");
  unsigned memory_mib = 512;
  unsigned vcpus = 2;
  std::string tcg_thread = "single";
  // Made by make_dirs once the command line is read; removed at the end.
  std::optional<test::TempDir> runtime_dir, shm_dir;

  // --help, --images, --memory-mib (default `memory_default`), --vcpus, --tcg-thread and
  // --json (into `json_path`); the program adds its own after them.
  void add_options(boost::program_options::options_description& options, unsigned memory_default,
                   std::string& json_path) {
    namespace po = boost::program_options;
    options.add_options()("help,h", "this help")("images", po::value(&images),
                                                 "guest images directory")(
        "memory-mib", po::value(&memory_mib)->default_value(memory_default),
        "guest memory")("vcpus", po::value(&vcpus)->default_value(2), "guest vCPUs")(
        "tcg-thread",
        po::value(&tcg_thread)->default_value("single")->notifier([](const std::string& value) {
          if (value != "single" && value != "multi")
            throw po::error("--tcg-thread: single or multi, not " + value);
        }),
        "TCG: single (a VM's vCPUs on one host thread) or multi (a thread each)")(
        "json", po::value(&json_path), "also write the results here");
  }
  // The VMs' runtime folder (under /tmp) and RAM-file folder (under
  // /dev/shm), both named `prefix`-XXXXXX.
  void make_dirs(const std::string& prefix) {
    runtime_dir.emplace(std::filesystem::temp_directory_path(), prefix);
    shm_dir.emplace("/dev/shm", prefix);
  }
  const std::filesystem::path& shm() const { return shm_dir->path(); }

  // The config of VM number `n`; the id names this process so runs on
  // one host do not collide.
  vmm::VmConfig config(const std::string& prefix, unsigned n) const {
    vmm::VmConfig c;
    c.id = prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(n);
    c.images = vmm::GuestImages::in(images);
    c.runtime_dir = runtime_dir->path();
    c.shm_dir = shm_dir->path();
    c.memory_mib = memory_mib;
    c.vcpus = vcpus;
    c.tcg_single_thread = tcg_thread == "single"; // checked by add_options' notifier
    return c;
  }
  json::Object json() const {
    return json::Object{{"memory_mib", json::Value(static_cast<std::int64_t>(memory_mib))},
                        {"vcpus", json::Value(static_cast<std::int64_t>(vcpus))},
                        {"tcg_thread", json::Value(tcg_thread)}};
  }
};

// Prints "`program`: what" on stderr and gives the exit code 1.
struct Fail {
  const char* program;
  int operator()(const std::string& what) const {
    std::cerr << program << ": " << what << "\n";
    return 1;
  }
};

// Writes {"benchmark", "machine", "guest", "results"} to `path`; false when
// the file could not be written.
inline bool write_document(const std::string& path, const char* benchmark, json::Object machine,
                           json::Object guest, json::Object results) {
  json::Object document{{"benchmark", json::Value(benchmark)},
                        {"machine", json::Value(std::move(machine))},
                        {"guest", json::Value(std::move(guest))},
                        {"results", json::Value(std::move(results))}};
  std::ofstream out(path);
  out << json::Value(std::move(document)).dump() << "\n";
  return static_cast<bool>(out);
}

} // namespace vesicle::bench
