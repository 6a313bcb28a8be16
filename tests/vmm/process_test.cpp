// vmm::detail::Process on an event loop: what it does there must not block
// it. A child still running when its Process goes is killed at once and
// reaped by the blocking pool, not by the thread that dropped it.
#include "vmm/process.hpp"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/vmm/test_support.hpp"

namespace vesicle::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::size_t rss_kib_of(pid_t pid) {
  return kib_field("/proc/" + std::to_string(pid) + "/status", "VmRSS:");
}

// Gone from the process table: reaped (a zombie still has its /proc entry).
bool reaped(pid_t pid) {
  return !std::filesystem::exists("/proc/" + std::to_string(pid));
}

TEST(Process, DroppingARunningChildNeitherBlocksTheLoopNorLeavesAZombie) {
  IoThread io;
  TempDir dir;
  vmm::detail::SpawnOptions options;
  // A child with 1 GiB resident: the kernel takes a while to tear it down,
  // which a blocking reap would spend on the event loop.
  options.argv = {"python3", "-c",
                  "import time\nb = b'x' * (1 << 30)\nprint('ready', flush=True)\ntime.sleep(60)"};
  options.output = dir.path() / "child.log";
  auto spawned = io.call([&] { return vmm::detail::Process::spawn(io.executor(), options); });
  ASSERT_TRUE(spawned) << spawned.error().message();
  auto process = std::move(spawned.value());
  const pid_t pid = process->pid();
  for (int i = 0; i < 300 && rss_kib_of(pid) < (900u << 10); ++i)
    std::this_thread::sleep_for(20ms);
  ASSERT_GE(rss_kib_of(pid), 900u << 10) << "the child did not fill its memory";

  const auto started = Clock::now();
  io.call_void([&] { process.reset(); });
  const auto returned = Clock::now() - started;
  while (!reaped(pid) && Clock::now() - started < 10s)
    std::this_thread::sleep_for(1ms);
  const auto gone = Clock::now() - started;
  EXPECT_TRUE(reaped(pid)) << "the dropped child was never reaped";
  EXPECT_LT(returned * 4, gone)
      << "dropping the Process took "
      << std::chrono::duration_cast<std::chrono::microseconds>(returned).count() << " us of the "
      << std::chrono::duration_cast<std::chrono::microseconds>(gone).count()
      << " us the child took to go: it waited for the kernel on the event loop";
}

bool has_cap_sys_resource() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("CapEff:", 0) == 0) return (std::stoull(line.substr(7), nullptr, 16) >> 24) & 1;
  return false;
}

TEST(Process, TheChildsOomScoreIsSetBeforeItsProgramRuns) {
  IoThread io;
  TempDir dir;
  vmm::detail::SpawnOptions options;
  options.argv = {"cat", "/proc/self/oom_score_adj"};
  options.output = dir.path() / "child.log";
  // Raising needs nothing; lowering needs CAP_SYS_RESOURCE, which root in
  // some containers (this project's CI machines) does not have.
  std::vector<int> scores{500};
  if (has_cap_sys_resource()) scores.push_back(-300);
  for (const int adj : scores) {
    std::filesystem::remove(options.output);
    options.oom_score_adj = adj;
    auto spawned = io.call([&] { return vmm::detail::Process::spawn(io.executor(), options); });
    ASSERT_TRUE(spawned) << spawned.error().message();
    auto process = std::move(spawned.value());
    const auto ended = io.run(process->wait());
    EXPECT_FALSE(ended.signaled);
    EXPECT_EQ(ended.code, 0);
    EXPECT_EQ(read_file(options.output), std::to_string(adj) + "\n");
  }
  options.oom_score_adj = 1001;
  auto refused = io.call([&] { return vmm::detail::Process::spawn(io.executor(), options); });
  ASSERT_FALSE(refused);
  EXPECT_NE(
      refused.error().message().find("oom_score_adj must be between -1000 and 1000, not 1001"),
      std::string::npos)
      << refused.error().message();
}

} // namespace
} // namespace vesicle::test
