// vm_bench: what a VM costs in time on this machine.
//   cold boot: driver boot() to agent ready, sequential boots (p50/p95)
//   print(1):  one Python cell round trip through the agent (p50/p95/p99)
// Prints a table; --json PATH writes the figures with the accelerator and
// the machine they were measured on.
#include <unistd.h>

#include <fstream>
#include <iostream>

#include "tests/bench/vm_support.hpp"
#include "tests/vmm/test_support.hpp"

namespace po = boost::program_options;
using namespace vesicle;
using namespace vesicle::test;
using bench::Clock;
using bench::ms_since;
using bench::nearest_rank;
using bench::stats;

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

} // namespace

int main(int argc, char** argv) {
  bench::GuestShape guest;
  const unsigned& memory_mib = guest.memory_mib;
  const unsigned& vcpus = guest.vcpus;
  unsigned boots = 10;
  unsigned calls = 200;
  unsigned disk_mib = 0;
  std::string json_path;
  po::options_description options("vm_bench: cold boot and agent round-trip latency");
  guest.add_options(options, 1024, json_path);
  options.add_options()("boots", po::value(&boots)->default_value(10),
                        "sequential cold boots to time")(
      "calls", po::value(&calls)->default_value(200), "print(1) round trips to time")(
      "disk-mib", po::value(&disk_mib)->default_value(0),
      "each VM's disk; above the image's size the agent grows the filesystem at boot, as a "
      "sandbox's (0: the image's size)");
  if (auto stop = bench::parse_options(argc, argv, options, "vm_bench")) return *stop;

  IoThread io;
  guest.make_dirs("vesicle-bench");

  auto driver = vmm::make_qemu_driver(io.executor());
  auto config = [&](unsigned n) {
    auto c = guest.config("bench", n);
    c.disk_mib = disk_mib;
    return c;
  };

  std::vector<double> boot_ms;
  std::vector<double> first_cell_ms;
  for (unsigned i = 0; i < boots; ++i) {
    const auto started = Clock::now();
    auto booted = io.run(driver->boot(config(i)));
    if (!booted) {
      std::cerr << "vm_bench: " << booted.error().message() << "\n";
      return 1;
    }
    boot_ms.push_back(ms_since(started));
    // The first cell also waits for the REPL to finish starting.
    const auto cell = Clock::now();
    auto first = io.run(python(booted.value()->agent(), "print(1)"));
    if (!first.exit) {
      std::cerr << "vm_bench: " << first.exit.error().message() << "\n";
      return 1;
    }
    first_cell_ms.push_back(ms_since(cell));
    std::fprintf(stderr, "boot %u: %.0f ms to agent ready, first print(1) %.0f ms\n", i + 1,
                 boot_ms.back(), first_cell_ms.back());
    io.call_void([&] { booted.value().reset(); });
  }

  std::vector<double> call_ms;
  {
    auto booted = io.run(driver->boot(config(boots)));
    if (!booted) {
      std::cerr << "vm_bench: " << booted.error().message() << "\n";
      return 1;
    }
    auto& agent = booted.value()->agent();
    for (int warm = 0; warm < 5; ++warm)
      (void)io.run(python(agent, "print(1)"));
    // Timed inside the io thread, so the figure is the agent round trip,
    // not this thread's hand-off to it.
    call_ms =
        io.run([](vmm::AgentClient& agent, unsigned calls) -> asio::awaitable<std::vector<double>> {
          std::vector<double> samples;
          for (unsigned i = 0; i < calls; ++i) {
            const auto started = Clock::now();
            auto r = co_await python(agent, "print(1)");
            if (!r.exit || r.output.out != "1\n") {
              std::cerr << "vm_bench: print(1) failed: "
                        << (r.exit ? r.output.out : r.exit.error().message()) << "\n";
              break;
            }
            samples.push_back(ms_since(started));
          }
          co_return samples;
        }(agent, calls));
    io.run(booted.value()->shutdown(std::chrono::seconds(10)));
    io.call_void([&] { booted.value().reset(); });
  }

  const char* accel = vmm::to_string(driver->accel());
  const long nproc = ::sysconf(_SC_NPROCESSORS_ONLN);
  std::printf("vm_bench (%s, %ld CPUs, %s, guest %u MiB / %u vCPUs, TCG thread %s, disk %s)\n",
              accel, nproc, cpu_model().c_str(), memory_mib, vcpus, guest.tcg_thread.c_str(),
              disk_mib ? (std::to_string(disk_mib) + " MiB").c_str() : "the image's size");
  std::printf("%-34s %6s %9s %9s %9s\n", "measure", "n", "p50 ms", "p95 ms", "p99 ms");
  std::printf("%-34s %6zu %9.1f %9.1f %9s\n", "cold boot to agent ready", boot_ms.size(),
              nearest_rank(boot_ms, 50), nearest_rank(boot_ms, 95), "-");
  std::printf("%-34s %6zu %9.1f %9.1f %9s\n", "first print(1) after boot", first_cell_ms.size(),
              nearest_rank(first_cell_ms, 50), nearest_rank(first_cell_ms, 95), "-");
  std::printf("%-34s %6zu %9.2f %9.2f %9.2f\n", "print(1) round trip (warm)", call_ms.size(),
              nearest_rank(call_ms, 50), nearest_rank(call_ms, 95), nearest_rank(call_ms, 99));

  if (!json_path.empty()) {
    json::Object machine{{"accel", json::Value(accel)},
                         {"nproc", json::Value(static_cast<std::int64_t>(nproc))},
                         {"cpu_model", json::Value(cpu_model())}};
    json::Object results{{"cold_boot_ms", stats(boot_ms, {50, 95})},
                         {"first_print_after_boot_ms", stats(first_cell_ms, {50, 95})},
                         {"print1_round_trip_ms", stats(call_ms, {50, 95, 99})}};
    json::Object shape = guest.json();
    shape["disk_mib"] = json::Value(static_cast<std::int64_t>(disk_mib));
    if (!bench::write_document(json_path, "vm_bench", std::move(machine), std::move(shape),
                               std::move(results))) {
      std::cerr << "vm_bench: could not write " << json_path << "\n";
      return 1;
    }
  }
  return call_ms.size() == calls ? 0 : 1;
}
