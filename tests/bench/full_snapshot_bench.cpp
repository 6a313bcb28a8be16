// full_snapshot_bench: what full-RAM snapshots (Vm::save_full,
// Driver::restore_full) cost on this machine, for four cases:
//   booted / idle      a booted VM (RAM share=on), REPL idle
//   booted / data      the same holding --data-mib of random bytes in Python
//   restored / idle    a VM restored share=off from a template snapshot
//   restored / data    the same holding --data-mib in Python
// Each case runs --count rounds of save_full then restore_full; a booted
// case chains (round n saves the VM round n-1 resumed: a Space frozen and
// resumed again and again), a restored case takes a fresh share=off VM from
// the template each round (the pool's fork path). Figures: save_full and
// restore_full latency (p50/p95), the state file's size on disk, the
// resumed VM's RAM file, and what the save did to the template's RAM file.
// Snapshots go to --dir (default /var/tmp: a real disk, as Spaces use).
// Prints a table; --json PATH writes the figures.
#include <sys/stat.h>
#include <unistd.h>

#include <iostream>

#include "tests/bench/vm_support.hpp"
#include "tests/vmm/test_support.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;
using namespace vesicle;
using namespace vesicle::test;
using bench::Clock;
using bench::ms_since;
using bench::Series;

namespace {

double allocated_mib(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<double>(st.st_blocks) * 512 / (1 << 20);
}

struct Case {
  std::string name;
  bool restored = false; // the source VM maps a template share=off
  bool data = false;     // it holds --data-mib in Python
  Series save{"save_full", {}}, restore{"restore_full", {}};
  Series state_mib{"state file", {}, "MiB"};
  Series resumed_ram_mib{"resumed VM's RAM file", {}, "MiB"};
  Series template_growth_mib{"template RAM file growth", {}, "MiB"};
};

json::Value series_json(const Series& series) {
  json::Object object;
  object["unit"] = json::Value(series.unit);
  object["n"] = json::Value(static_cast<std::int64_t>(series.values.size()));
  object["p50"] = json::Value(series.percentile(50));
  object["p95"] = json::Value(series.percentile(95));
  object["p99"] = json::Value(series.percentile(99));
  return json::Value(std::move(object));
}

} // namespace

int main(int argc, char** argv) {
  bench::GuestShape guest;
  const unsigned& memory_mib = guest.memory_mib;
  const unsigned& vcpus = guest.vcpus;
  unsigned count = 3;
  unsigned data_mib = 200;
  std::string dir = "/var/tmp";
  std::string json_path;
  po::options_description options("full_snapshot_bench: save_full / restore_full cost");
  guest.add_options(options, 512, json_path);
  options.add_options()("count", po::value(&count)->default_value(3),
                        "save/restore rounds per case")(
      "data-mib", po::value(&data_mib)->default_value(200), "bytes the data cases hold in Python")(
      "dir", po::value(&dir)->default_value("/var/tmp"), "where the full snapshots go");
  if (auto stop = bench::parse_options(argc, argv, options, "full_snapshot_bench")) return *stop;
  const bench::Fail fail{"full_snapshot_bench"};

  IoThread io;
  guest.make_dirs("vesicle-fbench");
  TempDir spaces(dir, "vesicle-fbench-spaces");
  TempDir templates(fs::temp_directory_path(), "vesicle-fbench-tpl");
  auto driver = vmm::make_qemu_driver(io.executor());
  unsigned next_id = 0;
  auto config = [&]() { return guest.config("fbench", next_id++); };
  // Filled a MiB at a time: os.urandom of the whole size and its copy into
  // the bytearray would need twice the memory at once.
  const std::string load_data =
      "import os\nb = bytearray(" + std::to_string(data_mib) +
      " << 20)\nfor i in range(0, len(b), 1 << 20):\n    b[i:i + (1 << 20)] = os.urandom(1 << 20)\n"
      "print(len(b) >> 20)";
  auto hold = [&](vmm::Vm& vm) -> bool {
    auto loaded = io.run(python(vm.agent(), load_data, 600'000));
    if (!loaded.exit || loaded.output.out != std::to_string(data_mib) + "\n") {
      std::cerr << "loading the data: "
                << (loaded.exit ? loaded.output.out + loaded.output.err
                                : loaded.exit.error().message())
                << "\n";
      return false;
    }
    return true;
  };

  // The template the restored cases come from: a booted VM with numpy
  // loaded, as the pool keeps them.
  vmm::Snapshot tpl;
  {
    auto booted = io.run(driver->boot(config()));
    if (!booted) return fail(booted.error().message());
    auto warm = io.run(python(booted.value()->agent(), "import numpy\nprint(1)"));
    if (!warm.exit) return fail(warm.exit.error().message());
    auto saved = io.run(
        booted.value()->save_snapshot(templates.path() / "tpl", guest.shm() / "template.mem"));
    io.call_void([&] { booted.value().reset(); });
    if (!saved) return fail(saved.error().message());
    tpl = *saved;
  }

  std::vector<Case> cases(4);
  cases[0].name = "booted/idle";
  cases[1].name = "booted/data";
  cases[1].data = true;
  cases[2].name = "restored/idle";
  cases[2].restored = true;
  cases[3].name = "restored/data";
  cases[3].restored = true;
  cases[3].data = true;

  unsigned space_number = 0;
  for (auto& c : cases) {
    std::unique_ptr<vmm::Vm> vm;
    for (unsigned round = 0; round < count; ++round) {
      if (!vm) {
        auto made =
            c.restored ? io.run(driver->restore(tpl, config())) : io.run(driver->boot(config()));
        if (!made) return fail(made.error().message());
        vm = std::move(made).value();
        if (c.data && !hold(*vm)) return fail("loading the data into Python failed");
      }
      const double template_before = allocated_mib(tpl.memory_file);
      const fs::path space = spaces.path() / ("space-" + std::to_string(space_number++));
      auto started = Clock::now();
      auto saved = io.run(vm->save_full(space));
      if (!saved) return fail(saved.error().message());
      c.save.values.push_back(ms_since(started));
      c.state_mib.values.push_back(allocated_mib(space / "state"));
      c.template_growth_mib.values.push_back(allocated_mib(tpl.memory_file) - template_before);
      io.call_void([&] { vm.reset(); });

      vmm::VmConfig resumed_config = config();
      const fs::path ram = guest.shm() / ("vesicle-" + resumed_config.id + ".mem");
      started = Clock::now();
      auto resumed = io.run(driver->restore_full(*saved, resumed_config));
      if (!resumed) return fail(resumed.error().message());
      c.restore.values.push_back(ms_since(started));
      c.resumed_ram_mib.values.push_back(allocated_mib(ram));
      fs::remove_all(space);
      if (c.data) {
        auto check = io.run(python(resumed.value()->agent(), "print(len(b) >> 20)"));
        if (!check.exit || check.output.out != std::to_string(data_mib) + "\n")
          return fail("the resumed VM lost its data");
      }
      std::fprintf(stderr,
                   "%s round %u: save_full %.0f ms (state %.0f MiB, template +%.0f MiB), "
                   "restore_full %.0f ms (RAM file %.0f MiB)\n",
                   c.name.c_str(), round + 1, c.save.values.back(), c.state_mib.values.back(),
                   c.template_growth_mib.values.back(), c.restore.values.back(),
                   c.resumed_ram_mib.values.back());
      if (c.restored) {
        io.call_void([&] { resumed.value().reset(); });
      } else {
        vm = std::move(resumed).value(); // the next round saves it again
      }
    }
    io.call_void([&] { vm.reset(); });
  }

  const char* accel = vmm::to_string(driver->accel());
  std::printf("full_snapshot_bench (%s, %ld CPUs, guest %u MiB / %u vCPUs, data %u MiB, "
              "snapshots in %s)\n",
              accel, ::sysconf(_SC_NPROCESSORS_ONLN), memory_mib, vcpus, data_mib, dir.c_str());
  for (const auto& c : cases) {
    std::printf("\n[%s]\n", c.name.c_str());
    bench::print_header();
    for (const Series* s :
         {&c.save, &c.restore, &c.state_mib, &c.resumed_ram_mib, &c.template_growth_mib}) {
      if (!c.restored && s == &c.template_growth_mib) continue;
      s->print_row();
    }
  }

  if (!json_path.empty()) {
    json::Object results;
    for (const auto& c : cases) {
      json::Object one{{"save_full_ms", series_json(c.save)},
                       {"restore_full_ms", series_json(c.restore)},
                       {"state_file_mib", series_json(c.state_mib)},
                       {"resumed_ram_file_mib", series_json(c.resumed_ram_mib)}};
      if (c.restored) one["template_ram_growth_mib"] = series_json(c.template_growth_mib);
      results[c.name] = json::Value(std::move(one));
    }
    json::Object shape = guest.json();
    shape["data_mib"] = json::Value(static_cast<std::int64_t>(data_mib));
    if (!bench::write_document(json_path, "full_snapshot_bench", {{"accel", json::Value(accel)}},
                               std::move(shape), std::move(results)))
      return fail("could not write " + json_path);
  }
  return 0;
}
