// snapshot_bench: what template snapshots cost on this machine.
//   save:     Vm::save_snapshot of a booted, warmed-up VM
//   check:    open_snapshot (every checksum), and digest_sparse_file of a
//             synthetic 1 GiB RAM file holding 200 MB
//   restore:  Driver::restore to agent ping, --count times (p50/p95/p99),
//             split into QEMU start / migrate-incoming / cont-to-ping
//   finish:   PreparedRestore::finish alone (QEMU pre-started), --count times
//   memory:   PSS of --keep restored idle VMs side by side vs the booted one
// --mode fork instead compares the two ways to snapshot a VM restored
// share=off (a pool sandbox) holding --fork-write-mib of new data, --count
// times: Vm::save_fork_snapshot (the VM runs on) vs today's promote
// (save_full + restore_full) followed by save_snapshot; and a child's
// restore from the fast snapshot.
// Prints a table; --json PATH writes the figures.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <numeric>

#include "common/unique_fd.hpp"
#include "tests/bench/vm_support.hpp"
#include "tests/vmm/test_support.hpp"
#include "vmm/snapshot.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;
using namespace vesicle;
using namespace vesicle::test;
using bench::Clock;
using bench::ms_since;
using bench::nearest_rank;
using bench::stats;
using vesicle::UniqueFd;

namespace {

double ms(std::chrono::microseconds us) {
  return us.count() / 1000.0;
}

// Proportional set size of a process in KiB: shared pages divided among
// the processes that map them, so N restored VMs' PSS sum to what they
// really cost together.
std::size_t pss_kib(int pid) {
  return kib_field("/proc/" + std::to_string(pid) + "/smaps_rollup", "Pss:");
}

std::size_t rss_kib_of(int pid) {
  return kib_field("/proc/" + std::to_string(pid) + "/smaps_rollup", "Rss:");
}

// digest_sparse_file over a 1 GiB tmpfs file holding 200 MB in 2 MiB runs.
double synthetic_check_ms(const fs::path& dir) {
  const fs::path path = dir / "synthetic.mem";
  {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd || ::ftruncate(fd.get(), 1ll << 30) != 0) return -1;
    std::string block(2u << 20, '\0');
    for (std::size_t i = 0; i < block.size(); ++i)
      block[i] = static_cast<char>(i * 131 + 7);
    for (int run = 0; run < 100; ++run) {
      const off_t at = static_cast<off_t>(run) * (10ll << 20);
      if (::pwrite(fd.get(), block.data(), block.size(), at) != static_cast<ssize_t>(block.size()))
        return -1;
    }
  }
  const auto started = Clock::now();
  auto digest = vmm::snapshot::digest_sparse_file(path);
  const double took = ms_since(started);
  fs::remove(path);
  if (!digest) return -1;
  return took;
}

// --mode fork: see the top of the file.
template <class Config>
int fork_mode(IoThread& io, vmm::Driver& driver, const vmm::Snapshot& snapshot, const fs::path& dir,
              Config& config, unsigned count, unsigned write_mib, bench::GuestShape& guest,
              const std::string& json_path) {
  const bench::Fail fail{"snapshot_bench --mode fork"};
  const std::string fill = "a = numpy.arange(" +
                           std::to_string((std::uint64_t{write_mib} << 20) / 8) +
                           ", dtype=numpy.int64)\nprint(a[-1])";
  const std::string expect = std::to_string((std::uint64_t{write_mib} << 20) / 8 - 1) + "\n";
  // A share=off VM holding the data, as a pool sandbox after some work.
  auto parent = [&]() -> Result<std::unique_ptr<vmm::Vm>> {
    auto restored = io.run(driver.restore(snapshot, config()));
    if (!restored) return std::move(restored).error();
    auto filled = io.run(python(restored.value()->agent(), fill));
    if (!filled.exit || filled.output.out != expect)
      return make_error("fill", "the guest did not build its array: " + filled.output.err);
    return restored;
  };
  std::vector<double> fast_ms, data_ms, paused_ms, ram_ms, memfd_mib, private_mib, child_ms,
      promote_ms, promote_save_ms;
  for (unsigned i = 0; i < count; ++i) {
    auto vm = parent();
    if (!vm) return fail(vm.error().message());
    vmm::ForkSaveStats stats;
    auto started = Clock::now();
    auto saved =
        io.run(vm.value()->save_fork_snapshot(dir / ("fast-" + std::to_string(i)), &stats));
    fast_ms.push_back(ms_since(started));
    if (!saved) return fail(saved.error().message());
    data_ms.push_back(ms(stats.data_copy));
    paused_ms.push_back(ms(stats.paused));
    ram_ms.push_back(ms(stats.memory));
    memfd_mib.push_back(static_cast<double>(stats.memory_bytes) / (1 << 20));
    private_mib.push_back(static_cast<double>(stats.private_pages) * 4096 / (1 << 20));
    started = Clock::now();
    auto child = io.run(driver.restore(*saved, config()));
    if (!child) return fail(child.error().message());
    child_ms.push_back(ms_since(started));
    auto seen = io.run(python(child.value()->agent(), "print(a[-1])"));
    if (!seen.exit || seen.output.out != expect) return fail("the child lost the parent's array");

    // Today's path on the same VM: promote, then the fast save of a VM with
    // its own RAM file.
    started = Clock::now();
    auto full = io.run(vm.value()->save_full(dir / ("full-" + std::to_string(i))));
    if (!full) return fail(full.error().message());
    auto promoted = io.run(driver.restore_full(*full, config()));
    if (!promoted) return fail(promoted.error().message());
    promote_ms.push_back(ms_since(started));
    auto kept =
        io.run(promoted.value()->save_snapshot(dir / ("today-" + std::to_string(i)), fs::path()));
    if (!kept) return fail(kept.error().message());
    promote_save_ms.push_back(ms_since(started));
    std::fprintf(
        stderr,
        "fork %u: fast save %.0f ms (source copy %.0f, paused %.0f, private pages %.0f; %.0f MiB "
        "private, memfd %.0f MiB); child restore %.0f ms; promote %.0f ms, +save_snapshot %.0f "
        "ms\n",
        i + 1, fast_ms.back(), data_ms.back(), paused_ms.back(), ram_ms.back(), private_mib.back(),
        memfd_mib.back(), child_ms.back(), promote_ms.back(), promote_save_ms.back());
    io.call_void([&] {
      child.value().reset();
      vm.value().reset();
      promoted.value().reset();
    });
    std::error_code ignored;
    for (const char* name : {"fast-", "full-", "today-"})
      fs::remove_all(dir / (name + std::to_string(i)), ignored);
  }
  const char* accel = vmm::to_string(driver.accel());
  std::printf("snapshot_bench --mode fork (%s, %ld CPUs, guest %u MiB, %u MiB written)\n", accel,
              ::sysconf(_SC_NPROCESSORS_ONLN), guest.memory_mib, write_mib);
  std::printf("%-44s %4s %9s %9s\n", "measure", "n", "p50", "p95");
  auto row = [](const char* name, const std::vector<double>& v, const char* unit) {
    std::printf("%-44s %4zu %9.1f %9.1f %s\n", name, v.size(), nearest_rank(v, 50),
                nearest_rank(v, 95), unit);
  };
  row("save_fork_snapshot (share=off VM)", fast_ms, "ms");
  row("  copying the source RAM file, VM running", data_ms, "ms");
  row("  the VM paused", paused_ms, "ms");
  row("  of which copying the pages it wrote", ram_ms, "ms");
  row("  pages written since the restore", private_mib, "MiB");
  row("  the snapshot's RAM memfd holds", memfd_mib, "MiB");
  row("restore of a child from it, to agent ping", child_ms, "ms");
  row("promote today (save_full + restore_full)", promote_ms, "ms");
  row("promote + save_snapshot", promote_save_ms, "ms");
  if (!json_path.empty()) {
    json::Object results{
        {"fork_write_mib", json::Value(static_cast<double>(write_mib))},
        {"fast_save_ms", stats(fast_ms)},
        {"fast_save_source_copy_ms", stats(data_ms)},
        {"fast_save_paused_ms", stats(paused_ms)},
        {"fast_save_ram_copy_ms", stats(ram_ms)},
        {"private_mib", stats(private_mib)},
        {"fast_memfd_mib", stats(memfd_mib)},
        {"child_restore_ms", stats(child_ms)},
        {"promote_ms", stats(promote_ms)},
        {"promote_and_save_ms", stats(promote_save_ms)},
    };
    if (!bench::write_document(json_path, "snapshot_bench_fork", {{"accel", json::Value(accel)}},
                               guest.json(), std::move(results)))
      return fail("could not write " + json_path);
  }
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  bench::GuestShape guest;
  const unsigned& memory_mib = guest.memory_mib;
  const unsigned& vcpus = guest.vcpus;
  unsigned count = 5;
  unsigned keep = 3;
  std::string qemu = "qemu-system-x86_64";
  std::string restore_qemu;
  std::string json_path;
  std::string mode = "template";
  unsigned fork_write_mib = 100;
  po::options_description options("snapshot_bench: template snapshot save/restore cost");
  guest.add_options(options, 512, json_path);
  options.add_options()("count", po::value(&count)->default_value(5),
                        "restores to time (and finishes to time)")(
      "keep", po::value(&keep)->default_value(3), "restored VMs kept idle for the PSS figure")(
      "qemu", po::value(&qemu)->default_value(qemu),
      "the QEMU binary (e.g. another version's, to compare)")(
      "restore-qemu", po::value(&restore_qemu),
      "restore with this QEMU instead (default: --qemu): whether a snapshot another version "
      "saved restores")("mode", po::value(&mode)->default_value(mode),
                        "template (save/restore/memory) or fork (fast save of a share=off VM)")(
      "fork-write-mib", po::value(&fork_write_mib)->default_value(fork_write_mib),
      "--mode fork: MiB of numpy data the share=off VM writes before it is saved");
  if (auto stop = bench::parse_options(argc, argv, options, "snapshot_bench")) return *stop;
  const bench::Fail fail{"snapshot_bench"};

  IoThread io;
  guest.make_dirs("vesicle-bench");
  TempDir snapshots(fs::temp_directory_path(), "vesicle-bench-snap");
  auto driver = vmm::make_qemu_driver(io.executor());
  unsigned next_id = 0;
  // The template is booted and saved with --qemu, restored with
  // --restore-qemu.
  bool saved_template = false;
  auto config = [&]() {
    auto c = guest.config("bench", next_id++);
    c.qemu_binary = saved_template && !restore_qemu.empty() ? restore_qemu : qemu;
    return c;
  };

  // The template: a booted VM whose REPL has numpy loaded (what a pool
  // would keep warm).
  double save_ms = 0;
  std::size_t booted_pss = 0, booted_rss = 0;
  vmm::Snapshot snapshot;
  {
    auto booted = io.run(driver->boot(config()));
    if (!booted) return fail(booted.error().message());
    auto warm = io.run(python(booted.value()->agent(), "import numpy, pandas\nprint(1)"));
    if (!warm.exit) return fail(warm.exit.error().message());
    std::this_thread::sleep_for(std::chrono::seconds(2));
    booted_pss = pss_kib(booted.value()->qemu_pid());
    booted_rss = rss_kib_of(booted.value()->qemu_pid());
    const auto started = Clock::now();
    auto saved = io.run(
        booted.value()->save_snapshot(snapshots.path() / "template", guest.shm() / "template.mem"));
    save_ms = ms_since(started);
    io.call_void([&] { booted.value().reset(); });
    if (!saved) return fail(saved.error().message());
    snapshot = *saved;
    saved_template = true;
  }
  if (mode == "fork")
    return fork_mode(io, *driver, snapshot, snapshots.path(), config, count, fork_write_mib, guest,
                     json_path);
  struct stat memory_stat {};
  ::stat(snapshot.memory_file.c_str(), &memory_stat);
  const double memory_data_mib = static_cast<double>(memory_stat.st_blocks) * 512 / (1 << 20);

  const auto check_started = Clock::now();
  auto opened = vmm::open_snapshot(snapshot.dir);
  const double open_ms = ms_since(check_started);
  if (!opened) return fail(opened.error().message());
  const double synthetic_ms = synthetic_check_ms(guest.shm());

  std::vector<double> restore_ms, start_ms, incoming_ms, resume_ms, finish_ms, first_cell_ms;
  for (unsigned i = 0; i < count; ++i) {
    const auto started = Clock::now();
    auto prepared = io.run(driver->prepare_restore(snapshot, config()));
    if (!prepared) return fail(prepared.error().message());
    auto restored = io.run(prepared.value()->finish());
    if (!restored) return fail(restored.error().message());
    restore_ms.push_back(ms_since(started));
    const auto& t = prepared.value()->times();
    start_ms.push_back(ms(t.qemu_start));
    incoming_ms.push_back(ms(t.incoming));
    resume_ms.push_back(ms(t.resume));
    const auto cell = Clock::now();
    auto first = io.run(python(restored.value()->agent(), "print(1)"));
    if (!first.exit || first.output.out != "1\n") return fail("print(1) after restore failed");
    first_cell_ms.push_back(ms_since(cell));
    std::fprintf(stderr,
                 "restore %u: %.0f ms (QEMU start %.0f, incoming %.0f, cont to ping %.0f); first "
                 "print(1) %.0f ms\n",
                 i + 1, restore_ms.back(), start_ms.back(), incoming_ms.back(), resume_ms.back(),
                 first_cell_ms.back());
    io.call_void([&] {
      prepared.value().reset();
      restored.value().reset();
    });
  }
  // QEMU pre-started: only finish() is on the clock.
  for (unsigned i = 0; i < count; ++i) {
    auto prepared = io.run(driver->prepare_restore(snapshot, config()));
    if (!prepared) return fail(prepared.error().message());
    std::this_thread::sleep_for(std::chrono::milliseconds(200)); // QEMU settles, as in a pool
    const auto started = Clock::now();
    auto restored = io.run(prepared.value()->finish());
    if (!restored) return fail(restored.error().message());
    finish_ms.push_back(ms_since(started));
    io.call_void([&] {
      prepared.value().reset();
      restored.value().reset();
    });
  }

  // Memory: `keep` restored VMs idle side by side.
  std::vector<std::size_t> pss, rss;
  {
    std::vector<std::unique_ptr<vmm::Vm>> idle;
    for (unsigned i = 0; i < keep; ++i) {
      auto restored = io.run(driver->restore(snapshot, config()));
      if (!restored) return fail(restored.error().message());
      auto first = io.run(python(restored.value()->agent(), "print(1)"));
      if (!first.exit) return fail(first.exit.error().message());
      idle.push_back(std::move(restored).value());
    }
    std::this_thread::sleep_for(std::chrono::seconds(3));
    for (auto& vm : idle) {
      pss.push_back(pss_kib(vm->qemu_pid()));
      rss.push_back(rss_kib_of(vm->qemu_pid()));
    }
    io.call_void([&] { idle.clear(); });
  }
  auto mean = [](const std::vector<std::size_t>& v) {
    return v.empty() ? 0.0
                     : static_cast<double>(std::accumulate(v.begin(), v.end(), std::size_t{0})) /
                           static_cast<double>(v.size());
  };

  const char* accel = vmm::to_string(driver->accel());
  std::printf("snapshot_bench (%s, %ld CPUs, guest %u MiB / %u vCPUs, RAM file holds %.0f MiB)\n",
              accel, ::sysconf(_SC_NPROCESSORS_ONLN), memory_mib, vcpus, memory_data_mib);
  std::printf("%-40s %6s %9s %9s %9s\n", "measure", "n", "p50 ms", "p95 ms", "p99 ms");
  auto row = [](const char* name, const std::vector<double>& v) {
    std::printf("%-40s %6zu %9.1f %9.1f %9.1f\n", name, v.size(), nearest_rank(v, 50),
                nearest_rank(v, 95), nearest_rank(v, 99));
  };
  row("save_snapshot", {save_ms});
  row("open_snapshot (all checksums)", {open_ms});
  row("digest of 1 GiB file holding 200 MB", {synthetic_ms});
  row("restore to agent ping", restore_ms);
  row("  QEMU start to QMP ready", start_ms);
  row("  migrate-incoming (device state)", incoming_ms);
  row("  cont to agent ping", resume_ms);
  row("finish() with QEMU pre-started", finish_ms);
  row("first print(1) after restore", first_cell_ms);
  std::printf("%-40s %6zu %9.1f MiB PSS (RSS %.1f MiB)\n", "restored idle VM", pss.size(),
              mean(pss) / 1024, mean(rss) / 1024);
  std::printf("%-40s %6d %9.1f MiB PSS (RSS %.1f MiB)\n", "booted idle VM (the template)", 1,
              booted_pss / 1024.0, booted_rss / 1024.0);

  if (!json_path.empty()) {
    json::Object results{
        {"save_ms", json::Value(save_ms)},
        {"open_snapshot_ms", json::Value(open_ms)},
        {"digest_1gib_200mb_ms", json::Value(synthetic_ms)},
        {"memory_file_data_mib", json::Value(memory_data_mib)},
        {"restore_ms", stats(restore_ms)},
        {"restore_qemu_start_ms", stats(start_ms)},
        {"restore_incoming_ms", stats(incoming_ms)},
        {"restore_cont_to_ping_ms", stats(resume_ms)},
        {"finish_prestarted_ms", stats(finish_ms)},
        {"first_print_after_restore_ms", stats(first_cell_ms)},
        {"restored_idle_pss_kib", json::Value(mean(pss))},
        {"restored_idle_rss_kib", json::Value(mean(rss))},
        {"booted_idle_pss_kib", json::Value(static_cast<double>(booted_pss))},
        {"booted_idle_rss_kib", json::Value(static_cast<double>(booted_rss))},
    };
    if (!bench::write_document(json_path, "snapshot_bench", {{"accel", json::Value(accel)}},
                               guest.json(), std::move(results)))
      return fail("could not write " + json_path);
  }
  return 0;
}
