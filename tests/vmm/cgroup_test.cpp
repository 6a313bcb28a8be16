// The cgroup module. The v2 writer runs against a plain directory tree that
// behaves like cgroupfs where it matters (a new directory gets the control
// files its parent's cgroup.subtree_control enables); detection runs on
// sample mountinfo texts. The v1 tests use this host's real cgroup v1
// (memory, pids, cpu) under a root of their own, as root: a child started
// the launcher's way (fork, "0" into each cgroup.procs fd, exec) is
// OOM-killed at its memory limit and refused its 17th task at pids.max 16.
#include "vmm/cgroup.hpp"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

namespace vesicle::vmm::cgroup {
namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path) << text;
}

// ---- detection ----------------------------------------------------------------

// This host's lines, and a systemd hybrid's co-mounted cpu,cpuacct.
constexpr const char* kHybridMountinfo =
    "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:9 - cgroup "
    "cgroup rw,cpu,cpuacct\n"
    "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
    "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

constexpr const char* kUnifiedMountinfo =
    "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "25 22 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
    "26 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n";

TEST(CgroupDetect, HybridV1UsesEachControllersOwnMount) {
  auto hierarchy = parse_mountinfo(kHybridMountinfo);
  ASSERT_TRUE(hierarchy) << hierarchy.error().message();
  EXPECT_EQ(hierarchy->version, Version::v1);
  EXPECT_EQ(hierarchy->memory, "/sys/fs/cgroup/memory");
  EXPECT_EQ(hierarchy->pids, "/sys/fs/cgroup/pids");
  EXPECT_EQ(hierarchy->cpu, "/sys/fs/cgroup/cpu,cpuacct");
}

TEST(CgroupDetect, UnifiedIsV2) {
  auto hierarchy = parse_mountinfo(kUnifiedMountinfo);
  ASSERT_TRUE(hierarchy) << hierarchy.error().message();
  EXPECT_EQ(hierarchy->version, Version::v2);
  EXPECT_EQ(hierarchy->memory, "/sys/fs/cgroup");
  EXPECT_EQ(hierarchy->cpu, "/sys/fs/cgroup");
}

TEST(CgroupDetect, EscapedMountPointsAreDecoded) {
  auto hierarchy =
      parse_mountinfo("26 25 0:24 / /mnt/my\\040cgroups rw,relatime - cgroup2 cgroup2 rw\n");
  ASSERT_TRUE(hierarchy) << hierarchy.error().message();
  EXPECT_EQ(hierarchy->memory, "/mnt/my cgroups");
}

TEST(CgroupDetect, AV1HostWithoutPidsIsRefusedNamingIt) {
  auto hierarchy =
      parse_mountinfo("35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
                      "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
                      "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n");
  ASSERT_FALSE(hierarchy);
  EXPECT_NE(hierarchy.error().message().find("without these controllers: pids"), std::string::npos)
      << hierarchy.error().message();
}

TEST(CgroupDetect, NoCgroupMountIsRefused) {
  auto hierarchy = parse_mountinfo("22 1 259:1 / / rw - ext4 /dev/vda rw\n");
  ASSERT_FALSE(hierarchy);
  EXPECT_NE(hierarchy.error().message().find("no cgroup filesystem"), std::string::npos);
}

TEST(CgroupDetect, OwnCgroupIsTheV2Line) {
  EXPECT_EQ(parse_own_cgroup_v2("4:memory:/x\n0::/system.slice/vesicle-hostd.service\n"),
            "/system.slice/vesicle-hostd.service");
  EXPECT_EQ(parse_own_cgroup_v2("4:memory:/x\n"), "/");
}

// ---- limits and the OOM report ---------------------------------------------------

TEST(CgroupLimits, AQemuVmsLimitIsGuestRamPlusOverheadPlusTranslationBuffer) {
  auto limits = Limits::for_qemu(512, 2, 64);
  EXPECT_EQ(limits.guest_ram_bytes, 512ull << 20);
  EXPECT_EQ(limits.vmm_overhead_bytes, kQemuOverheadBytes + (64ull << 20));
  EXPECT_EQ(limits.memory_bytes(), (576ull << 20) + kQemuOverheadBytes);
  EXPECT_EQ(limits.vcpus, 2u);
  EXPECT_EQ(limits.pids_max, kQemuPidsMax);
}

TEST(CgroupLimits, OomMessageGivesTheLimitAndItsParts) {
  Limits limits;
  limits.guest_ram_bytes = 512ull << 20;
  limits.vmm_overhead_bytes = 64ull << 20;
  EXPECT_EQ(oom_message(limits),
            "oom: the sandbox's VM used its whole memory limit (576 MiB: 512 MiB guest RAM + 64 "
            "MiB VMM overhead) and was killed by the kernel");
  limits.vmm_overhead_bytes = (100ull << 20) + (1ull << 19);
  EXPECT_NE(oom_message(limits).find("(612.5 MiB: 512 MiB guest RAM + 100.5 MiB VMM overhead)"),
            std::string::npos)
      << oom_message(limits);
}

// ---- the v2 writer on a directory tree ---------------------------------------------

// A plain directory standing in for a cgroup2 mount.
class V2Tree : public ::testing::Test {
protected:
  void SetUp() override {
    char pattern[] = "/tmp/cgroup-v2-test-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    mount_ = pattern;
    write_text(mount_ / "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n");
    write_text(mount_ / "cgroup.subtree_control", "");
    write_text(mount_ / "cgroup.procs", "1\n");
  }
  void TearDown() override { fs::remove_all(mount_); }

  // What cgroupfs does on mkdir: the core files, and each controller's files
  // when the parent enables it for its children.
  static DirOps fake_ops() {
    DirOps ops;
    ops.make = [](const fs::path& dir) -> Result<void> {
      if (::mkdir(dir.c_str(), 0755) != 0) return sys_error("mkdir", dir.string());
      const std::string enabled = read_text(dir.parent_path() / "cgroup.subtree_control");
      std::string controllers;
      for (const char* name : {"cpu", "memory", "pids"}) {
        if (enabled.find(std::string("+") + name) == std::string::npos) continue;
        controllers += controllers.empty() ? name : std::string(" ") + name;
      }
      write_text(dir / "cgroup.controllers", controllers + "\n");
      for (const char* file : {"cgroup.procs", "cgroup.subtree_control", "cgroup.events"})
        write_text(dir / file, "");
      if (enabled.find("+memory") != std::string::npos) {
        write_text(dir / "memory.max", "max\n");
        write_text(dir / "memory.swap.max", "max\n");
        write_text(dir / "memory.peak", "0\n");
        write_text(dir / "memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n");
      }
      if (enabled.find("+pids") != std::string::npos) write_text(dir / "pids.max", "max\n");
      if (enabled.find("+cpu") != std::string::npos) write_text(dir / "cpu.max", "max 100000\n");
      return {};
    };
    // rmdir of a cgroup: EBUSY with a child cgroup or a process in it.
    ops.remove = [](const fs::path& dir) -> Result<void> {
      std::error_code ec;
      if (!fs::exists(dir, ec)) return sys_error("rmdir", dir.string(), ENOENT);
      for (const auto& entry : fs::directory_iterator(dir))
        if (entry.is_directory()) return sys_error("rmdir", dir.string(), EBUSY);
      if (!read_text(dir / "cgroup.procs").empty()) return sys_error("rmdir", dir.string(), EBUSY);
      fs::remove_all(dir);
      return {};
    };
    return ops;
  }

  Hierarchy hierarchy() const { return {Version::v2, mount_, mount_, mount_}; }

  fs::path mount_;
};

TEST_F(V2Tree, OutsideSystemdTheRootIsUnderTheMount) {
  Options options;
  options.dir_ops = fake_ops();
  auto tree = Tree::open(hierarchy(), options);
  ASSERT_TRUE(tree) << tree.error().message();
  EXPECT_EQ(tree->version(), Version::v2);
  ASSERT_EQ(tree->roots(), std::vector<fs::path>{mount_ / "vesicle"});
  EXPECT_EQ(read_text(mount_ / "cgroup.subtree_control"), "+memory +pids +cpu");
  EXPECT_EQ(read_text(mount_ / "vesicle/cgroup.subtree_control"), "+memory +pids +cpu");
  EXPECT_EQ(read_text(mount_ / "cgroup.procs"), "1\n") << "nothing moves at the top";
  EXPECT_FALSE(fs::exists(mount_ / "hostd"));
}

TEST_F(V2Tree, UnderSystemdHostdMovesIntoALeafAndTheRootIsBesideIt) {
  const fs::path unit = mount_ / "system.slice/vesicle-hostd.service";
  fs::create_directories(unit);
  write_text(unit / "cgroup.controllers", "cpu io memory pids\n");
  write_text(unit / "cgroup.subtree_control", "");
  write_text(unit / "cgroup.procs", "4242\n");
  Options options;
  options.dir_ops = fake_ops();
  options.own_cgroup = "/system.slice/vesicle-hostd.service";
  options.self = 4242;
  options.parent = "vesicle-a";
  auto tree = Tree::open(hierarchy(), options);
  ASSERT_TRUE(tree) << tree.error().message();
  ASSERT_EQ(tree->roots(), std::vector<fs::path>{unit / "vesicle-a"});
  EXPECT_EQ(read_text(unit / "hostd/cgroup.procs"), "4242");
  EXPECT_EQ(read_text(unit / "cgroup.subtree_control"), "+memory +pids +cpu");
  EXPECT_EQ(read_text(unit / "vesicle-a/cgroup.subtree_control"), "+memory +pids +cpu");

  // A restarted hostd already in <unit>/hostd divides <unit> again.
  options.own_cgroup = "/system.slice/vesicle-hostd.service/hostd";
  auto again = Tree::open(hierarchy(), options);
  ASSERT_TRUE(again) << again.error().message();
  EXPECT_EQ(again->roots(), tree->roots());
  EXPECT_FALSE(fs::exists(unit / "hostd/hostd"));
}

TEST_F(V2Tree, WithoutADelegatedControllerOpenSaysWhatToSet) {
  const fs::path unit = mount_ / "system.slice/vesicle-hostd.service";
  fs::create_directories(unit);
  write_text(unit / "cgroup.controllers", "memory pids\n");
  Options options;
  options.dir_ops = fake_ops();
  options.own_cgroup = "/system.slice/vesicle-hostd.service";
  auto tree = Tree::open(hierarchy(), options);
  ASSERT_FALSE(tree);
  EXPECT_NE(tree.error().message().find("controller cpu is not available"), std::string::npos);
  EXPECT_NE(tree.error().message().find("Delegate=yes"), std::string::npos);
}

TEST_F(V2Tree, ALeafIsNamedForItsSandboxAndGetsEachLimit) {
  Options options;
  options.dir_ops = fake_ops();
  auto tree = Tree::open(hierarchy(), options);
  ASSERT_TRUE(tree) << tree.error().message();
  Limits limits;
  limits.guest_ram_bytes = 512ull << 20;
  limits.vmm_overhead_bytes = 64ull << 20;
  limits.pids_max = 100;
  limits.vcpus = 2;
  auto leaf = tree->create("sb-0123abcd", limits);
  ASSERT_TRUE(leaf) << leaf.error().message();
  const fs::path dir = mount_ / "vesicle/sb-0123abcd";
  EXPECT_EQ(leaf->dirs(), std::vector<fs::path>{dir});
  EXPECT_EQ(read_text(dir / "memory.max"), std::to_string(576ull << 20));
  EXPECT_EQ(read_text(dir / "memory.swap.max"), "0");
  EXPECT_EQ(read_text(dir / "pids.max"), "100");
  EXPECT_EQ(read_text(dir / "cpu.max"), "200000 100000");

  auto fds = leaf->open_procs();
  ASSERT_TRUE(fds) << fds.error().message();
  ASSERT_EQ(fds->size(), 1u);
  EXPECT_EQ(::fcntl((*fds)[0].get(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  EXPECT_EQ(::fcntl((*fds)[0].get(), F_GETFL) & O_ACCMODE, O_WRONLY);

  // What the kernel reports, read back.
  EXPECT_EQ(leaf->oom_kills().value(), 0u);
  EXPECT_EQ(leaf->oom_report().value(), std::nullopt);
  write_text(dir / "memory.events", "low 0\nhigh 0\nmax 9\noom 1\noom_kill 2\noom_group_kill 0\n");
  write_text(dir / "memory.peak", std::to_string(575ull << 20) + "\n");
  EXPECT_EQ(leaf->oom_kills().value(), 2u);
  EXPECT_EQ(leaf->memory_peak().value(), 575ull << 20);
  EXPECT_EQ(leaf->oom_report().value(), oom_message(limits));

  ASSERT_TRUE(leaf->remove());
  EXPECT_TRUE(leaf->removed());
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(fs::exists(mount_ / "vesicle"));
}

TEST_F(V2Tree, MemoryInUseIsTheLeafsUsageLessItsPageCache) {
  Options options;
  options.dir_ops = fake_ops();
  auto tree = Tree::open(hierarchy(), options);
  ASSERT_TRUE(tree) << tree.error().message();
  auto leaf = tree->create("sb-usage", Limits{});
  ASSERT_TRUE(leaf) << leaf.error().message();
  const fs::path dir = mount_ / "vesicle/sb-usage";
  write_text(dir / "memory.current", std::to_string(300ull << 20) + "\n");
  write_text(dir / "memory.stat", "anon 4096\nfile 104857600\nshmem 209715200\n"
                                  "active_file 62914560\ninactive_file 41943040\n");
  auto used = tree->memory_in_use("sb-usage");
  ASSERT_TRUE(used) << used.error().message();
  EXPECT_EQ(*used, 200ull << 20);
  // A leaf that is not there (the VM already gone): an error, so the caller
  // counts the sandbox whole.
  EXPECT_FALSE(tree->memory_in_use("sb-gone"));
  EXPECT_FALSE(tree->memory_in_use("../escape"));
  ASSERT_TRUE(leaf->remove());
}

TEST_F(V2Tree, RenameMovesTheLeafToItsNewName) {
  Options options;
  options.dir_ops = fake_ops();
  auto tree = Tree::open(hierarchy(), options);
  ASSERT_TRUE(tree) << tree.error().message();
  auto leaf = tree->create("vesicle-pool-1f", Limits::for_qemu(256, 1, 64));
  ASSERT_TRUE(leaf) << leaf.error().message();
  ASSERT_TRUE(leaf->rename("sb-handed-out")) << "pool VM handed out";
  EXPECT_EQ(leaf->name(), "sb-handed-out");
  EXPECT_FALSE(fs::exists(mount_ / "vesicle/vesicle-pool-1f"));
  EXPECT_TRUE(fs::exists(mount_ / "vesicle/sb-handed-out/memory.max"));
}

TEST_F(V2Tree, BadNamesAndLeftoversAreRefused) {
  Options options;
  options.dir_ops = fake_ops();
  auto tree = Tree::open(hierarchy(), options);
  ASSERT_TRUE(tree) << tree.error().message();
  for (const char* bad : {"", "..", "a/b", "sb 1", "x.y"}) {
    auto leaf = tree->create(bad, Limits{});
    ASSERT_FALSE(leaf) << bad;
    EXPECT_EQ(leaf.error().kind, ErrorKind::invalid_argument);
  }
  fs::create_directory(mount_ / "vesicle/sb-old");
  auto leaf = tree->create("sb-old", Limits{});
  ASSERT_FALSE(leaf);
  EXPECT_NE(leaf.error().message().find("leftover"), std::string::npos);
}

TEST_F(V2Tree, ALeafDroppedWithoutRemoveIsRemovedAndAHalfMadeOneLeavesNothing) {
  Options options;
  options.dir_ops = fake_ops();
  auto tree = Tree::open(hierarchy(), options);
  ASSERT_TRUE(tree) << tree.error().message();
  { auto leaf = tree->create("sb-dropped", Limits{}); }
  EXPECT_FALSE(fs::exists(mount_ / "vesicle/sb-dropped"));

  // The memory controller not enabled: memory.max is missing, creation
  // fails, and its directory goes.
  write_text(mount_ / "vesicle/cgroup.subtree_control", "+pids +cpu");
  auto leaf = tree->create("sb-half", Limits{});
  ASSERT_FALSE(leaf);
  EXPECT_NE(leaf.error().message().find("memory.max"), std::string::npos);
  EXPECT_FALSE(fs::exists(mount_ / "vesicle/sb-half"));
}

TEST_F(V2Tree, SweepRemovesEveryLeaf) {
  Options options;
  options.dir_ops = fake_ops();
  auto tree = Tree::open(hierarchy(), options);
  ASSERT_TRUE(tree) << tree.error().message();
  auto a = tree->create("sb-a", Limits{});
  auto b = tree->create("sb-b", Limits{});
  ASSERT_TRUE(a && b);
  auto report = tree->sweep();
  EXPECT_EQ(report.removed, (std::vector<std::string>{"sb-a", "sb-b"}));
  EXPECT_TRUE(report.failed.empty());
  EXPECT_FALSE(fs::exists(mount_ / "vesicle/sb-a"));
  EXPECT_TRUE(tree->remove_roots());
  EXPECT_FALSE(fs::exists(mount_ / "vesicle"));
}

// ---- v1, for real -----------------------------------------------------------------

// Starts `probe args...` in `leaf` the launcher's way; its stdout is a pipe
// the caller reads, its stdin a pipe the caller closes to end `wait`.
struct Child {
  pid_t pid = -1;
  int out = -1; // read end of its stdout
  int in = -1;  // write end of its stdin
};

// With `uid`, the child drops to it (and its gid) before joining, as a
// launcher that sheds root first would.
Child start_in(const Leaf& leaf, std::vector<std::string> args, uid_t uid = 0) {
  auto fds = leaf.open_procs();
  EXPECT_TRUE(fds) << fds.error().message();
  if (!fds) return {};
  for (const auto& fd : *fds)
    EXPECT_EQ(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  int out[2], in[2];
  EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
  EXPECT_EQ(::pipe2(in, O_CLOEXEC), 0);
  args.insert(args.begin(), VESICLE_CGROUP_PROBE);
  std::vector<char*> argv;
  for (auto& arg : args)
    argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::vector<int> procs;
  for (const auto& fd : *fds)
    procs.push_back(fd.get());
  pid_t pid = ::fork();
  if (pid == 0) {
    if (uid != 0 && (::setgroups(0, nullptr) != 0 || ::setgid(uid) != 0 || ::setuid(uid) != 0))
      ::_exit(121);
    for (int fd : procs)
      if (::write(fd, "0", 1) != 1) ::_exit(120);
    ::dup2(out[1], 1);
    ::dup2(in[0], 0);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  ::close(in[0]);
  return {pid, out[0], in[1]};
}

std::string read_all(int fd) {
  std::string text;
  char buffer[256];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof buffer)) > 0)
    text.append(buffer, n);
  ::close(fd);
  return text;
}

int reap(Child& child) {
  if (child.in >= 0) ::close(child.in);
  int status = 0;
  ::waitpid(child.pid, &status, 0);
  child.pid = -1;
  return status;
}

class V1Host : public ::testing::Test {
protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to make cgroups";
    std::ifstream in("/proc/self/mountinfo");
    std::stringstream text;
    text << in.rdbuf();
    auto hierarchy = parse_mountinfo(text.str());
    if (!hierarchy || hierarchy->version != Version::v1)
      GTEST_SKIP() << "this host has no cgroup v1 memory, pids and cpu";
    // A root of our own: a hostd on this host keeps its "vesicle".
    auto tree = Tree::open_host("vesicle-test-" + std::to_string(::getpid()));
    ASSERT_TRUE(tree) << tree.error().message();
    tree_.emplace(std::move(*tree));
  }
  // Whatever a failed assertion left: processes killed, leaves and roots gone.
  void TearDown() override {
    if (!tree_) return;
    auto report = tree_->sweep();
    for (const auto& error : report.failed)
      ADD_FAILURE() << error.message();
    auto gone = tree_->remove_roots();
    EXPECT_TRUE(gone) << gone.error().message();
  }

  std::optional<Tree> tree_;
};

TEST_F(V1Host, ALeafGetsEachLimitInItsController) {
  Limits limits;
  limits.guest_ram_bytes = 512ull << 20;
  limits.vmm_overhead_bytes = 64ull << 20;
  limits.pids_max = 100;
  limits.vcpus = 2;
  auto leaf = tree_->create("sb-limits", limits);
  ASSERT_TRUE(leaf) << leaf.error().message();
  ASSERT_EQ(leaf->dirs().size(), 3u);
  const fs::path& memory = leaf->dirs()[0];
  EXPECT_EQ(memory, tree_->roots()[0] / "sb-limits");
  EXPECT_EQ(read_text(memory / "memory.limit_in_bytes"), std::to_string(576ull << 20) + "\n");
  if (fs::exists(memory / "memory.memsw.limit_in_bytes")) {
    EXPECT_EQ(read_text(memory / "memory.memsw.limit_in_bytes"),
              std::to_string(576ull << 20) + "\n");
  }
  EXPECT_EQ(read_text(memory / "memory.swappiness"), "0\n");
  EXPECT_EQ(read_text(leaf->dirs()[1] / "pids.max"), "100\n");
  EXPECT_EQ(read_text(leaf->dirs()[2] / "cpu.cfs_period_us"), "100000\n");
  EXPECT_EQ(read_text(leaf->dirs()[2] / "cpu.cfs_quota_us"), "200000\n");
  ASSERT_TRUE(leaf->remove());
  for (const auto& root : tree_->roots())
    EXPECT_FALSE(fs::exists(root / "sb-limits"));
}

TEST_F(V1Host, AProcessPastItsMemoryLimitIsKilledAndCountedAsOom) {
  Limits limits;
  limits.guest_ram_bytes = 64ull << 20;
  limits.pids_max = 16;
  auto leaf = tree_->create("sb-memhog", limits);
  ASSERT_TRUE(leaf) << leaf.error().message();
  Child child = start_in(*leaf, {"memhog", "256"});
  ASSERT_GT(child.pid, 0);
  const std::string output = read_all(child.out);
  const int status = reap(child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "status " << status << ", output: " << output;
  EXPECT_EQ(output.find("done"), std::string::npos);
  auto kills = leaf->oom_kills();
  ASSERT_TRUE(kills) << kills.error().message();
  EXPECT_GE(*kills, 1u);
  auto peak = leaf->memory_peak();
  ASSERT_TRUE(peak) << peak.error().message();
  EXPECT_GT(*peak, 56ull << 20);
  EXPECT_LE(*peak, 64ull << 20);
  auto report = leaf->oom_report();
  ASSERT_TRUE(report) << report.error().message();
  EXPECT_EQ(*report, "oom: the sandbox's VM used its whole memory limit (64 MiB: 64 MiB guest RAM "
                     "+ 0 MiB VMM overhead) and was killed by the kernel");
  auto gone = leaf->remove();
  EXPECT_TRUE(gone) << gone.error().message();
}

TEST_F(V1Host, MemoryInUseCountsSharedMemoryTheLeafHolds) {
  auto leaf = tree_->create("sb-shmem", Limits{.guest_ram_bytes = 256ull << 20});
  ASSERT_TRUE(leaf) << leaf.error().message();
  auto idle = tree_->memory_in_use("sb-shmem");
  ASSERT_TRUE(idle) << idle.error().message();
  EXPECT_LT(*idle, 8ull << 20);
  Child child = start_in(*leaf, {"shmem", "64"});
  ASSERT_GT(child.pid, 0);
  char line[8] = {};
  ASSERT_EQ(::read(child.out, line, 5), 5);
  EXPECT_STREQ(line, "held\n");
  auto held = tree_->memory_in_use("sb-shmem");
  ASSERT_TRUE(held) << held.error().message();
  EXPECT_GE(*held, 64ull << 20);
  EXPECT_LT(*held, 80ull << 20);
  ::close(child.out);
  EXPECT_EQ(reap(child), 0);
  auto gone = leaf->remove();
  EXPECT_TRUE(gone) << gone.error().message();
}

TEST_F(V1Host, ThePidsLimitRefusesThe17thTask) {
  Limits limits;
  limits.guest_ram_bytes = 64ull << 20;
  limits.pids_max = 16;
  auto leaf = tree_->create("sb-forks", limits);
  ASSERT_TRUE(leaf) << leaf.error().message();
  Child child = start_in(*leaf, {"forks", "20"});
  ASSERT_GT(child.pid, 0);
  const std::string output = read_all(child.out);
  const int status = reap(child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // The probe is task 1; 15 children make 16; the next fork fails.
  EXPECT_EQ(output, "forked 15 then EAGAIN\n");
  EXPECT_EQ(leaf->oom_kills().value(), 0u);
  auto gone = leaf->remove();
  EXPECT_TRUE(gone) << gone.error().message();
}

TEST_F(V1Host, ProcCgroupNamesTheSandboxAlsoAfterARename) {
  auto leaf = tree_->create("vesicle-pool-7a", Limits::for_qemu(64, 1, 0));
  ASSERT_TRUE(leaf) << leaf.error().message();
  Child child = start_in(*leaf, {"wait"});
  ASSERT_GT(child.pid, 0);
  const std::string parent = tree_->roots()[0].filename().string();
  // Wait until the child has joined (it writes before exec).
  std::string cgroups;
  for (int i = 0; i < 200; ++i) {
    cgroups = read_text("/proc/" + std::to_string(child.pid) + "/cgroup");
    // Joined in every controller (the child writes them one by one).
    if (cgroups.find("memory:/" + parent + "/vesicle-pool-7a\n") != std::string::npos &&
        cgroups.find("pids:/" + parent + "/vesicle-pool-7a\n") != std::string::npos &&
        cgroups.find("cpu:/" + parent + "/vesicle-pool-7a\n") != std::string::npos)
      break;
    ::usleep(5000);
  }
  EXPECT_NE(cgroups.find("memory:/" + parent + "/vesicle-pool-7a\n"), std::string::npos) << cgroups;
  EXPECT_NE(cgroups.find("pids:/" + parent + "/vesicle-pool-7a\n"), std::string::npos) << cgroups;
  auto pids = leaf->pids();
  ASSERT_TRUE(pids) << pids.error().message();
  EXPECT_EQ(*pids, std::vector<pid_t>{child.pid});

  ASSERT_TRUE(leaf->rename("sb-7a"));
  cgroups = read_text("/proc/" + std::to_string(child.pid) + "/cgroup");
  EXPECT_NE(cgroups.find("memory:/" + parent + "/sb-7a\n"), std::string::npos) << cgroups;
  EXPECT_NE(cgroups.find("pids:/" + parent + "/sb-7a\n"), std::string::npos) << cgroups;

  // A live process keeps the leaf: remove fails (within ~130 ms per try),
  // says so, and can be retried once it is gone.
  const auto before = std::chrono::steady_clock::now();
  auto busy = leaf->remove();
  const auto waited = std::chrono::steady_clock::now() - before;
  ASSERT_FALSE(busy);
  EXPECT_EQ(busy.error().errno_value, EBUSY);
  EXPECT_LT(waited, std::chrono::milliseconds(1000));
  EXPECT_FALSE(leaf->removed());
  const int status = reap(child);
  EXPECT_TRUE(WIFEXITED(status)) << status;
  ::close(child.out);
  auto gone = leaf->remove();
  EXPECT_TRUE(gone) << gone.error().message();
}

// The kernel checks a cgroup.procs write against the credentials the file
// was opened with (5.16+), so a child that has already dropped root still
// joins through the fds hostd opened.
TEST_F(V1Host, AChildThatDroppedRootJoinsThroughTheFds) {
  Limits limits;
  limits.guest_ram_bytes = 64ull << 20;
  limits.pids_max = 16;
  auto leaf = tree_->create("sb-nobody", limits);
  ASSERT_TRUE(leaf) << leaf.error().message();
  Child child = start_in(*leaf, {"memhog", "256"}, 65534);
  ASSERT_GT(child.pid, 0);
  const std::string output = read_all(child.out);
  const int status = reap(child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "status " << status << ", output: " << output;
  EXPECT_GE(leaf->oom_kills().value(), 1u);
}

TEST_F(V1Host, SweepKillsWhatIsLeftAndRemovesEveryLeaf) {
  auto leaf = tree_->create("sb-crashed", Limits::for_qemu(64, 1, 0));
  ASSERT_TRUE(leaf) << leaf.error().message();
  auto empty = tree_->create("sb-empty", Limits::for_qemu(64, 1, 0));
  ASSERT_TRUE(empty) << empty.error().message();
  Child child = start_in(*leaf, {"wait"});
  ASSERT_GT(child.pid, 0);
  for (int i = 0; i < 200 && leaf->pids().value().empty(); ++i)
    ::usleep(5000);

  // Not yet reaped: a killed process leaves its cgroup when it exits, not
  // when its parent waits for it.
  auto report = tree_->sweep();
  EXPECT_TRUE(report.failed.empty()) << report.failed.front().message();
  EXPECT_EQ(report.removed, (std::vector<std::string>{"sb-crashed", "sb-empty"}));
  EXPECT_EQ(report.killed, std::vector<pid_t>{child.pid});
  for (const auto& root : tree_->roots())
    for (const auto& entry : fs::directory_iterator(root))
      EXPECT_FALSE(entry.is_directory()) << entry.path();
  const int status = reap(child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  ::close(child.out);
  // The swept leaves' objects find nothing left to remove.
  EXPECT_TRUE(leaf->remove());
  EXPECT_TRUE(empty->remove());
}

} // namespace
} // namespace vesicle::vmm::cgroup
