// A real TCG VM in a cgroup v1 leaf (these hosts), put there the launcher's
// way: a child writes "0" into the leaf's cgroup.procs fds, then execs
// vesicle-vm, whose QEMU inherits the leaf. Under Limits::for_qemu the VM
// boots and runs a guest that fills its RAM; under a limit of its guest RAM
// alone the kernel kills QEMU and the leaf reports it as oom.
// vesicle-vm's own ~7 MiB count in the leaf too (the launcher's QEMU is
// alone in it).
#include "vmm/cgroup.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "vmm/vmm.hpp"

namespace vesicle::vmm::cgroup {
namespace {

namespace fs = std::filesystem;

fs::path images_dir() {
  for (const char* name : {"VESICLE_IMAGES_DIR", "VESICLE_IMAGES_DIR_DEFAULT"})
    if (const char* value = std::getenv(name)) return value;
  return "build/images";
}

struct VmRun {
  int status = 0;
  std::string output;
};

// vesicle-vm run in `leaf`: a 256 MiB, 1-vCPU guest whose Python cell
// touches 96 MiB (the guest's agent holds its workload to about half its RAM).
VmRun run_vm_in(const Leaf& leaf, const fs::path& runtime_dir) {
  auto fds = leaf.open_procs();
  EXPECT_TRUE(fds) << fds.error().message();
  if (!fds) return {-1, {}};
  const fs::path log = runtime_dir / "vesicle-vm.log";
  std::vector<std::string> args = {
      VESICLE_VM_BIN,  "run",
      "--images",      images_dir().string(),
      "--memory-mib",  "256",
      "--vcpus",       "1",
      "--runtime-dir", runtime_dir.string(),
      "--code",        "b = b'x' * (96 << 20); print(len(b) >> 20, 'MiB')"};
  std::vector<char*> argv;
  for (auto& arg : args)
    argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::vector<int> procs;
  for (const auto& fd : *fds)
    procs.push_back(fd.get());
  pid_t pid = ::fork();
  if (pid == 0) {
    for (int fd : procs)
      if (::write(fd, "0", 1) != 1) ::_exit(120);
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) ::_exit(121);
    ::dup2(out, 1);
    ::dup2(out, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  VmRun run;
  ::waitpid(pid, &run.status, 0);
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  run.output = text.str();
  return run;
}

class CgroupVm : public ::testing::Test {
protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to make cgroups";
    std::ifstream in("/proc/self/mountinfo");
    std::stringstream text;
    text << in.rdbuf();
    auto hierarchy = parse_mountinfo(text.str());
    if (!hierarchy || hierarchy->version != Version::v1)
      GTEST_SKIP() << "this host has no cgroup v1 memory, pids and cpu";
    ASSERT_TRUE(GuestImages::in(images_dir()).check())
        << "guest images in " << images_dir() << " (images/build.sh, or VESICLE_IMAGES_DIR)";
    char pattern[] = "/tmp/cgroup-vm-test-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    runtime_dir_ = pattern;
    auto tree = Tree::open_host("vesicle-vmtest-" + std::to_string(::getpid()));
    ASSERT_TRUE(tree) << tree.error().message();
    tree_.emplace(std::move(*tree));
  }
  void TearDown() override {
    if (tree_) {
      auto report = tree_->sweep();
      for (const auto& error : report.failed)
        ADD_FAILURE() << error.message();
      EXPECT_TRUE(report.killed.empty()) << "a process outlived its test";
      auto gone = tree_->remove_roots();
      EXPECT_TRUE(gone) << gone.error().message();
    }
    if (!runtime_dir_.empty()) fs::remove_all(runtime_dir_);
  }

  std::optional<Tree> tree_;
  fs::path runtime_dir_;
};

TEST_F(CgroupVm, AVmLivesUnderItsLimitsAndFillsItsRam) {
  auto leaf = tree_->create("sb-fits", Limits::for_qemu(256, 1, 64));
  ASSERT_TRUE(leaf) << leaf.error().message();
  const VmRun run = run_vm_in(*leaf, runtime_dir_);
  EXPECT_TRUE(WIFEXITED(run.status) && WEXITSTATUS(run.status) == 0)
      << "status " << run.status << "\n"
      << run.output;
  EXPECT_NE(run.output.find("96 MiB"), std::string::npos) << run.output;
  EXPECT_EQ(leaf->oom_kills().value(), 0u);
  auto peak = leaf->memory_peak();
  ASSERT_TRUE(peak) << peak.error().message();
  std::printf("peak %llu MiB of a %llu MiB limit\n", static_cast<unsigned long long>(*peak >> 20),
              static_cast<unsigned long long>(leaf->limits().memory_bytes() >> 20));
  EXPECT_GT(*peak, 200ull << 20) << "the guest's RAM was charged to the leaf";
  auto gone = leaf->remove();
  EXPECT_TRUE(gone) << gone.error().message();
}

TEST_F(CgroupVm, AVmPastItsLimitIsKilledAndReportedAsOom) {
  Limits limits;
  // Half the guest's 256 MiB and no room for QEMU itself: the boot and the
  // 96 MiB cell cannot fit (at 256 MiB the kill depended on timing).
  limits.guest_ram_bytes = 128ull << 20;
  auto leaf = tree_->create("sb-oom", limits);
  ASSERT_TRUE(leaf) << leaf.error().message();
  const VmRun run = run_vm_in(*leaf, runtime_dir_);
  EXPECT_NE(run.output.find("killed by signal 9"), std::string::npos) << run.output;
  EXPECT_GE(leaf->oom_kills().value(), 1u) << run.output;
  auto report = leaf->oom_report();
  ASSERT_TRUE(report) << report.error().message();
  EXPECT_EQ(*report, "oom: the sandbox's VM used its whole memory limit (128 MiB: 128 MiB guest "
                     "RAM + 0 MiB VMM overhead) and was killed by the kernel");
  auto gone = leaf->remove();
  EXPECT_TRUE(gone) << gone.error().message();
}

} // namespace
} // namespace vesicle::vmm::cgroup
