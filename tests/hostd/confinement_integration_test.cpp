// Issue 13's wall, checked from outside on the real hostd: the QEMU behind a
// pool sandbox, a cold-booted one, a fork child and a resumed Space each run
// as a uid of their own with no capabilities, no_new_privs and seccomp, in
// their own namespaces and an empty root, in a cgroup leaf named after the
// sandbox with memory and pids limits, and every file they hold open is
// theirs (0600) or read-only to them. Then a kill -9 of hostd and a restart:
// nothing of the dead run's confinement is left.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "messages/api.pb.h"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/hostd_test_support.hpp"
#include "tests/hostd/http_client.hpp"
#include "tests/integration/qemu_proc.hpp"

using namespace vesicle;
using namespace vesicle::testing;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string word; in >> word;)
    out.push_back(word);
  return out;
}

fs::path link_of(const fs::path& path) {
  std::error_code ec;
  return fs::read_symlink(path, ec);
}

// The top-level directory of an absolute path ("/tmp/x/y" -> "tmp").
std::string top_of(const fs::path& path) {
  auto it = path.begin();
  return ++it == path.end() ? "" : it->string();
}

// The v1 memory controller's path of a process (/proc/<pid>/cgroup).
std::string memory_cgroup_of(pid_t pid) {
  std::istringstream lines(read_file("/proc/" + std::to_string(pid) + "/cgroup"));
  for (std::string line; std::getline(lines, line);) {
    const auto first = line.find(':'), second = line.find(':', first + 1);
    const auto controllers = line.substr(first + 1, second - first - 1);
    if (controllers == "memory" || (controllers.empty() && line.rfind("0::", 0) == 0))
      return line.substr(second + 1);
  }
  return "";
}

class Confinement : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    skip_reason = missing_images_reason();
    if (!skip_reason.empty()) return;
    char pattern[] = "/tmp/vesicle-confine-it-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    home = new fs::path(pattern);
    start();
  }
  static void TearDownTestSuite() {
    delete hostd;
    hostd = nullptr;
    if (home) {
      std::error_code ignored;
      fs::remove_all(*home, ignored);
      fs::remove_all(fs::path("/dev/shm") / home->filename(), ignored);
      delete home;
      home = nullptr;
    }
  }
  static void start() {
    HostdOptions options;
    options.binary = HOSTD_BINARY;
    options.images_dir = images_dir();
    options.max_sandboxes = 6;
    options.memory_mib = 512;
    options.home = *home;
    options.extra_config = "\"pools\": [{\"memory_mib\": 512, \"min_ready\": 1, \"max\": 3}]";
    hostd = new HostdProcess(options);
  }
  void SetUp() override {
    if (!skip_reason.empty()) GTEST_SKIP() << skip_reason;
    ASSERT_NE(hostd, nullptr);
  }
  void TearDown() override {
    if (HasFailure() && hostd) std::fprintf(stderr, "hostd's log:\n%s\n", hostd->log().c_str());
  }
  static HttpClient client() { return HttpClient("127.0.0.1", hostd->port(), hostd->key()); }

  static api::Sandbox create(const std::string& body) {
    auto created = client().request("POST", "/v1/sandboxes", body);
    EXPECT_EQ(created.status, 201u) << created.body;
    return parse<api::Sandbox>(created.body);
  }
  static void exec_ok(const std::string& id, const std::string& code) {
    auto ran =
        client().request("POST", "/v1/sandboxes/" + id + "/exec", "{\"code\": \"" + code + "\"}");
    EXPECT_EQ(ran.status, 200u) << ran.body;
    EXPECT_NE(ran.body.find("\"exit_code\":0"), std::string::npos) << ran.body;
  }

  // The QEMU serving a sandbox: the one whose cgroup leaf bears its id (a
  // pool VM's leaf is renamed when the sandbox takes it).
  static pid_t qemu_of(const std::string& id) {
    for (pid_t pid : hostd->qemu_pids())
      if (fs::path(memory_cgroup_of(pid)).filename() == id) return pid;
    return 0;
  }

  // Every check of the "Done when" on one sandbox's QEMU; returns
  // its uid.
  static uid_t expect_confined(const api::Sandbox& sandbox, const std::string& what) {
    SCOPED_TRACE(what + " " + sandbox.id());
    const pid_t pid = qemu_of(sandbox.id());
    EXPECT_GT(pid, 0);
    if (pid <= 0) return 0;
    const fs::path proc = "/proc/" + std::to_string(pid);
    auto status = test::proc_status(pid);
    const auto uids = words(status["Uid"]), gids = words(status["Gid"]);
    EXPECT_EQ(uids.size(), 4u);
    EXPECT_EQ(gids.size(), 4u);
    for (const auto& id : uids)
      EXPECT_NE(id, "0") << "Uid: " << status["Uid"];
    for (const auto& id : gids)
      EXPECT_NE(id, "0") << "Gid: " << status["Gid"];
    EXPECT_EQ(std::set<std::string>(uids.begin(), uids.end()).size(), 1u) << status["Uid"];
    EXPECT_EQ(status["Groups"], "") << "supplementary groups";
    EXPECT_EQ(status["CapEff"], "0000000000000000");
    EXPECT_EQ(status["CapPrm"], "0000000000000000");
    EXPECT_EQ(status["CapInh"], "0000000000000000");
    EXPECT_EQ(status["CapBnd"], "0000000000000000");
    EXPECT_EQ(status["CapAmb"], "0000000000000000");
    EXPECT_EQ(status["NoNewPrivs"], "1");
    EXPECT_EQ(status["Seccomp"], "2");
    for (const char* ns : {"mnt", "pid", "net", "ipc", "uts"})
      EXPECT_NE(link_of(proc / "ns" / ns), link_of(fs::path("/proc/self/ns") / ns)) << ns;

    // Its root: only what QEMU needs.
    std::set<std::string> allowed = {"dev", "proc", "usr", "lib", "lib64"};
    for (const auto& path : {hostd->runtime_dir(), fs::path(images_dir()), *home})
      allowed.insert(top_of(fs::absolute(path)));
    std::set<std::string> root;
    for (const auto& entry : fs::directory_iterator(proc / "root"))
      root.insert(entry.path().filename().string());
    for (const auto& name : root)
      EXPECT_TRUE(allowed.count(name)) << "unexpected /" << name << " in the jail's root";
    for (const char* absent : {"etc", "bin", "root", "home", "sys"})
      EXPECT_FALSE(root.count(absent)) << "/" << absent << " is in the jail";
    EXPECT_FALSE(fs::exists(proc / "root/etc/shadow"));
    EXPECT_FALSE(fs::exists(proc / "root/bin/sh"));

    // Its cgroup leaf names the sandbox and has limits.
    const std::string leaf = memory_cgroup_of(pid);
    EXPECT_EQ(fs::path(leaf).filename().string(), sandbox.id()) << leaf;
    const fs::path memory_dir = fs::path("/sys/fs/cgroup/memory") / leaf.substr(1);
    const fs::path pids_dir = fs::path("/sys/fs/cgroup/pids") / leaf.substr(1);
    if (fs::exists(memory_dir)) {
      const auto limit = std::stoull(read_file(memory_dir / "memory.limit_in_bytes"));
      EXPECT_GE(limit, std::uint64_t{sandbox.memory_mib()} << 20);
      EXPECT_LT(limit, (std::uint64_t{sandbox.memory_mib()} + 1024) << 20);
      EXPECT_NE(read_file(pids_dir / "pids.max"), "max\n");
    } else {
      ADD_FAILURE() << "no v1 memory cgroup at " << memory_dir;
    }

    // Every regular file it holds open (past stdio) is its own and 0600, or
    // one it cannot change: a sealed memfd, or read-only and root's.
    const uid_t uid = static_cast<uid_t>(std::stoul(uids[0]));
    for (const auto& fd : fs::directory_iterator(proc / "fd")) {
      const int number = std::stoi(fd.path().filename().string());
      if (number <= 2) continue; // /dev/null and the log hostd opened
      struct stat st {};
      if (::stat(fd.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      const std::string target = link_of(fd.path()).string();
      const bool own = st.st_uid == uid && (st.st_mode & 0777) == 0600;
      bool read_only = false;
      if (target.rfind("/memfd:", 0) == 0) {
        const int opened = ::open(fd.path().c_str(), O_RDONLY | O_CLOEXEC);
        const int seals = opened >= 0 ? ::fcntl(opened, F_GET_SEALS) : -1;
        if (opened >= 0) ::close(opened);
        read_only = seals >= 0 && (seals & F_SEAL_WRITE) != 0;
      } else {
        const std::string info = read_file(proc / "fdinfo" / std::to_string(number));
        const auto flags_at = info.find("flags:");
        const auto flags =
            flags_at == std::string::npos ? 0 : std::stoul(info.substr(flags_at + 6), nullptr, 8);
        read_only = (flags & O_ACCMODE) == O_RDONLY && st.st_uid == 0 && (st.st_mode & 0222) == 0;
      }
      EXPECT_TRUE(own || read_only) << "fd " << number << " -> " << target << " owner " << st.st_uid
                                    << " mode " << std::oct << (st.st_mode & 0777);
    }
    return uid;
  }

  static std::string skip_reason;
  static fs::path* home;
  static HostdProcess* hostd;
};

std::string Confinement::skip_reason;
fs::path* Confinement::home = nullptr;
HostdProcess* Confinement::hostd = nullptr;

TEST_F(Confinement, EveryKindOfSandboxRunsItsQemuConfinedAsItsOwnUser) {
  std::set<uid_t> uids;
  // A pool sandbox (wait for the pool: its first VM restores from the template).
  api::Sandbox pooled;
  for (int i = 0; i < 240; ++i) {
    auto capacity = parse<api::Capacity>(client().request("GET", "/v1/capacity").body);
    if (capacity.pools_size() == 1 && capacity.pools(0).ready() >= 1) break;
    std::this_thread::sleep_for(1s);
  }
  pooled = create("{}");
  ASSERT_FALSE(pooled.id().empty());
  EXPECT_EQ(pooled.source(), "pool");
  exec_ok(pooled.id(), "x = 6 * 7");
  uids.insert(expect_confined(pooled, "pool"));

  // A cold-booted one (a size no pool serves).
  auto booted = create("{\"memory_mib\": 384}");
  ASSERT_FALSE(booted.id().empty());
  EXPECT_EQ(booted.source(), "boot");
  uids.insert(expect_confined(booted, "cold boot"));

  // A fork child of the pool sandbox (and the parent's continuation).
  const pid_t pooled_pid = qemu_of(pooled.id());
  auto forked = client().request("POST", "/v1/sandboxes/" + pooled.id() + "/fork", "{\"n\": 1}");
  ASSERT_EQ(forked.status, 201u) << forked.body;
  auto children = parse<api::ForkResponse>(forked.body);
  ASSERT_EQ(children.children_size(), 1);
  exec_ok(children.children(0).id(), "assert x == 42");
  uids.insert(expect_confined(children.children(0), "fork child"));
  auto parent = parse<api::Sandbox>(client().request("GET", "/v1/sandboxes/" + pooled.id()).body);
  uids.insert(expect_confined(parent, "fork parent"));

  // A resumed Space.
  auto frozen = client().request("POST", "/v1/sandboxes/" + booted.id() + "/freeze", "{}");
  ASSERT_EQ(frozen.status, 200u) << frozen.body;
  auto space = parse<api::Space>(frozen.body);
  auto resumed = client().request("POST", "/v1/spaces/" + space.space_id() + "/resume", "{}");
  ASSERT_EQ(resumed.status, 201u) << resumed.body;
  auto from_space = parse<api::Sandbox>(resumed.body);
  uids.insert(expect_confined(from_space, "resumed Space"));

  // Four sandboxes: the fork's parent is the pool sandbox, and it keeps
  // its QEMU (a fork copies its RAM while it runs on).
  EXPECT_EQ(qemu_of(pooled.id()), pooled_pid) << "the parent runs on in its own QEMU";
  EXPECT_EQ(uids.size(), 4u) << "two live sandboxes shared a uid";
  EXPECT_FALSE(uids.count(0));
}

TEST_F(Confinement, NothingOfAKilledRunIsLeftAfterARestart) {
  auto sandbox = create("{}");
  const pid_t qemu = qemu_of(sandbox.id());
  ASSERT_GT(qemu, 0) << "no QEMU in a leaf named " << sandbox.id();
  const std::string leaf = memory_cgroup_of(qemu);
  ASSERT_FALSE(leaf.empty());
  const fs::path parent =
      fs::path("/sys/fs/cgroup/memory") / fs::path(leaf.substr(1)).parent_path();
  hostd->kill_hard();
  delete hostd;
  hostd = nullptr;
  start();
  // The new hostd swept the dead run's leaves before serving; only its own
  // (the pool's) may exist now.
  std::set<std::string> leaves;
  for (const auto& entry : fs::directory_iterator(parent))
    if (entry.is_directory()) leaves.insert(entry.path().filename().string());
  EXPECT_FALSE(leaves.count(sandbox.id())) << "the killed run's leaf is still there";
  for (const auto& name : leaves)
    EXPECT_EQ(name.rfind("pool-", 0), 0u) << "unexpected leaf " << name;
  // No process of the dead run survives (PDEATHSIG, and the sweep); a
  // zombie waits for init to reap it.
  EXPECT_FALSE(stays_running(qemu)) << "the killed run's QEMU " << qemu << " still runs";
  // Stopping cleanly leaves no leaf, and no root either.
  EXPECT_EQ(hostd->stop(), 0);
  EXPECT_FALSE(fs::exists(parent)) << "the cgroup root is left after a clean stop";
}

TEST_F(Confinement, ARequestTheHostCannotHoldIsRefusedWith503) {
  // Another hostd whose memory reserve is larger than this host: nothing
  // fits, and a create says why instead of booting into the OOM killer.
  HostdOptions options;
  options.binary = HOSTD_BINARY;
  options.images_dir = images_dir();
  options.extra_config =
      "\"disable_pools\": true, \"admission\": {\"memory_reserve_mib\": 100000000}";
  HostdProcess tight(options);
  HttpClient http("127.0.0.1", tight.port(), tight.key());
  auto refused = http.request("POST", "/v1/sandboxes", "{}");
  EXPECT_EQ(refused.status, 503u) << refused.body;
  EXPECT_NE(refused.body.find("MiB of host memory"), std::string::npos) << refused.body;
  EXPECT_NE(refused.body.find("100000000 MiB reserved"), std::string::npos) << refused.body;
  EXPECT_TRUE(tight.qemu_pids().empty()) << "a refused create started a VM";
  EXPECT_EQ(tight.stop(), 0);
}

} // namespace
