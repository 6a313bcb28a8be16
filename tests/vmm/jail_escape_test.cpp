// The jail-escape probe (tests/vmm/jail_probe.cpp) against a real target:
// one VM is booted through the driver the normal way (a real QEMU with its
// RAM memfd and its disk overlay), then the probe is started through the
// launcher code path a VM's QEMU takes — Process::spawn with vm_jail() for a
// VM directory of its own (with a real qcow2 overlay over the shared base
// image), a uid leased from a UidPool, a cgroup v1 leaf with a small memory
// limit, and a sealed GuestMemory passed as a descriptor, as a restored VM
// gets it — and tries to reach the target, the host and its own limits.
// Every attempt must print BLOCKED; the last one allocates past the leaf's
// limit and must end in an OOM kill reported as oom. One TCG boot; needs
// root and cgroup v1.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common/unique_fd.hpp"
#include "tests/vmm/test_support.hpp"
#include "tests/vmm/vm_world.hpp"
#include "vmm/cgroup.hpp"
#include "vmm/guest_memory.hpp"
#include "vmm/process.hpp"
#include "vmm/uid_pool.hpp"
#include "vmm/vm_jail.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::test {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using vmm::detail::Process;
using vmm::detail::SpawnOptions;

// Every attempt the probe makes; each must print "BLOCKED <name> ...".
const char* const kAttempts[] = {
    "read_other_overlay",
    "read_other_memory",
    "write_shared_disk",
    "read_key_file",
    "read_shadow",
    "signal_other_vmm",
    "signal_every_process",
    "ptrace_other_vmm",
    "read_other_vmm_memory",
    "exec_shell",
    "exec_written_file",
    "exec_memfd",
    "become_root",
    "mount_tmpfs",
    "unmount_proc",
    "chroot",
    "make_device_node",
    "unshare_user",
    "unshare_mount",
    "unshare_net",
    "unshare_pid",
    "unshare_cgroup",
    "clone_new_user",
    "user_then_mount_namespace",
    "raise_rlimit_nofile",
    "raise_rlimit_nproc",
    "raise_rlimit_core",
    "connect_api",
    "connect_abstract_socket",
    "write_shared_memory",
    "write_shared_memory_reopened",
    "map_shared_memory_writable",
    "resize_shared_memory",
    "private_copy_leaks",
};

// The probe's lines: name -> ("BLOCKED"/"ESCAPED", how), and the bare
// markers (DONE, ALLOCATING).
struct ProbeOutput {
  std::map<std::string, std::pair<std::string, std::string>> attempts;
  std::set<std::string> markers;
  std::vector<std::string> duplicates;
};

ProbeOutput parse(const std::string& text) {
  ProbeOutput out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string verdict, name, how;
    words >> verdict >> name;
    std::getline(words >> std::ws, how);
    if (verdict == "BLOCKED" || verdict == "ESCAPED") {
      if (!out.attempts.emplace(name, std::pair{verdict, how}).second)
        out.duplicates.push_back(name);
    } else if (!verdict.empty()) {
      out.markers.insert(verdict);
    }
  }
  return out;
}

// The fd of `pid` that is the memfd named "vesicle-<id>": /proc/<pid>/fd/<n>.
std::optional<fs::path> memfd_of(pid_t pid, const std::string& id) {
  const fs::path dir = "/proc/" + std::to_string(pid) + "/fd";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    char target[PATH_MAX];
    const ssize_t n = ::readlink(entry.path().c_str(), target, sizeof target);
    if (n > 0 &&
        std::string(target, static_cast<std::size_t>(n)).rfind("/memfd:vesicle-" + id + " ", 0) ==
            0) {
      return entry.path();
    }
  }
  return std::nullopt;
}

// A listening socket the probe must not reach (TCP on 127.0.0.1, or an
// abstract unix name).
UniqueFd listen_tcp(std::uint16_t& port) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (!s || ::bind(s.get(), reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      ::listen(s.get(), 4) != 0 ||
      ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return UniqueFd{};
  }
  port = ntohs(address.sin_port);
  return s;
}

UniqueFd listen_abstract(const std::string& name) {
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path + 1, name.data(), name.size());
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  if (!s || ::bind(s.get(), reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      ::listen(s.get(), 4) != 0) {
    return UniqueFd{};
  }
  return s;
}

TEST(JailEscapeTest, EveryAttemptFromAJailedProbeIsBlockedAndItsMemoryEndsInOom) {
  if (::geteuid() != 0) GTEST_SKIP() << "the jail needs root";
  if (!vmm::GuestImages::in(images_dir()).check().ok()) {
    GTEST_SKIP() << "no guest images in " << images_dir()
                 << " (images/build.sh, or VESICLE_IMAGES_DIR)";
  }
  auto tree = vmm::cgroup::Tree::open_host("vesicle-test-" + std::to_string(::getpid()));
  ASSERT_TRUE(tree) << tree.error().message();
  if (tree->version() != vmm::cgroup::Version::v1) {
    // The sweep-free cleanup below assumes v1's three roots; v2 hosts run
    // cgroup_test's writer tests instead.
    (void)tree->remove_roots();
    GTEST_SKIP() << "this test drives cgroup v1 leaves";
  }
  struct RemoveRoots {
    vmm::cgroup::Tree& tree;
    ~RemoveRoots() {
      auto removed = tree.remove_roots();
      EXPECT_TRUE(removed) << removed.error().message();
    }
  } remove_roots{*tree};

  // The target: a VM booted the normal way.
  VmWorld world("je");
  VmList vms{world.io, {}};
  {
    auto config = world.config("target");
    config.vcpus = 1;
    config.memory_mib = 256;
    auto booted = world.io.run(world.driver->boot(config));
    ASSERT_TRUE(booted) << booted.error().message();
    vms.vms.push_back(std::move(booted.value()));
  }
  vmm::Vm& target = *vms.vms.front();
  const pid_t target_pid = target.qemu_pid();
  const fs::path target_overlay = world.runtime.path() / target.id() / "overlay.qcow2";
  ASSERT_TRUE(fs::exists(target_overlay)) << target_overlay;
  const auto target_memory = memfd_of(target_pid, target.id());
  ASSERT_TRUE(target_memory) << "no memfd:vesicle-" << target.id() << " among QEMU's fds";
  // The targets are real: from the host (as root) they open.
  ASSERT_TRUE(UniqueFd(::open(target_memory->c_str(), O_RDONLY | O_CLOEXEC)));
  ASSERT_TRUE(UniqueFd(::open(target_overlay.c_str(), O_RDONLY | O_CLOEXEC)));

  // The probe's own VM: a uid, a directory with an overlay over the shared
  // base image, a leaf, a sealed snapshot memory.
  TempDir locks;
  auto pool = vmm::UidPool::create(2'300'000'000u + static_cast<uid_t>(::getpid() % 100'000) * 16,
                                   16, locks.path());
  ASSERT_TRUE(pool) << pool.error().message();
  auto lease = pool->acquire();
  ASSERT_TRUE(lease) << lease.error().message();
  TempDir probe_dir, logs, state;
  ASSERT_EQ(::chown(probe_dir.path().c_str(), lease->uid(), lease->gid()), 0);
  const vmm::GuestImages images = vmm::GuestImages::in(images_dir());
  const fs::path shared_disk = fs::absolute(images.base_disk);
  const fs::path overlay = probe_dir.path() / "overlay.qcow2";
  {
    SpawnOptions create;
    create.argv = {"qemu-img", "create", "-q", "-f",        "qcow2",
                   "-F",       "raw",    "-b", shared_disk, overlay.string()};
    create.output = logs.path() / "qemu-img.log";
    auto made = world.io.run(vmm::detail::run_helper(world.io.executor(), create));
    ASSERT_TRUE(made) << made.error().message();
    ASSERT_EQ(::chown(overlay.c_str(), lease->uid(), lease->gid()), 0);
    ASSERT_EQ(::chmod(overlay.c_str(), 0600), 0);
  }
  vmm::cgroup::Limits limits;
  limits.guest_ram_bytes = std::uint64_t{64} << 20;
  limits.vmm_overhead_bytes = 0;
  limits.pids_max = 64;
  limits.vcpus = 1;
  auto leaf = tree->create("probe", limits);
  ASSERT_TRUE(leaf) << leaf.error().message();
  auto procs = leaf->open_procs();
  ASSERT_TRUE(procs) << procs.error().message();
  auto shared = vmm::GuestMemory::create("vesicle-probe-shared", std::uint64_t{4} << 20);
  ASSERT_TRUE(shared) << shared.error().message();
  ASSERT_EQ(::pwrite((*shared)->fd(), "snapshot", 8, 0), 8);
  auto sealed = (*shared)->seal();
  ASSERT_TRUE(sealed) << sealed.error().message();
  const fs::path key_file = state.path() / "key";
  {
    UniqueFd key(::open(key_file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    ASSERT_TRUE(key);
    ASSERT_EQ(::write(key.get(), "secret", 6), 6);
  }
  std::uint16_t port = 0;
  const UniqueFd api = listen_tcp(port);
  ASSERT_TRUE(api) << std::strerror(errno);
  const std::string abstract_name = "vesicle-jail-escape-" + std::to_string(::getpid());
  const UniqueFd abstract = listen_abstract(abstract_name);
  ASSERT_TRUE(abstract) << std::strerror(errno);

  vmm::VmJailInputs inputs;
  inputs.uid = lease->uid();
  inputs.gid = lease->gid();
  inputs.vm_dir = probe_dir.path();
  inputs.overlay = overlay;
  inputs.images = images;
  inputs.accel = vmm::Accel::tcg;
  for (const auto& fd : procs.value())
    inputs.cgroup_procs_fds.push_back(fd.get());
  auto jail = vmm::vm_jail(inputs);
  ASSERT_TRUE(jail) << jail.error().message();

  SpawnOptions options;
  options.argv = {JAIL_PROBE_PATH,
                  "other_overlay=" + target_overlay.string(),
                  "other_memory=" + target_memory->string(),
                  "other_pid=" + std::to_string(target_pid),
                  "shared_disk=" + shared_disk.string(),
                  "sealed_fd=3",
                  "own_dir=" + probe_dir.path().string(),
                  "key_file=" + key_file.string(),
                  "api_port=" + std::to_string(port),
                  "abstract_socket=" + abstract_name,
                  "allocate_mib=256"};
  options.output = logs.path() / "probe.log";
  options.pass_fds = {(*shared)->fd()};
  options.jail = std::move(jail.value());
  auto spawned = world.io.call([&] { return Process::spawn(world.io.executor(), options); });
  ASSERT_TRUE(spawned) << spawned.error().message();
  std::unique_ptr<Process> probe = std::move(spawned.value());
  procs.value().clear(); // the child has joined
  // Killed and reaped on the io thread (where it was spawned) before the
  // leaf, lease and directories go, even when an assertion returns early.
  struct Reap {
    IoThread& io;
    std::unique_ptr<Process>& probe;
    ~Reap() {
      io.call_void([this] { probe.reset(); });
    }
  } reap{world.io, probe};

  {
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, probe->pid(), 0)));
    ASSERT_TRUE(pidfd);
    pollfd exited{pidfd.get(), POLLIN, 0};
    ASSERT_EQ(::poll(&exited, 1, 120'000), 1) << "the probe still runs after 2 minutes:\n"
                                              << read_file(options.output);
  }
  const vmm::detail::ExitStatus status = world.io.run(probe->wait());
  const std::string log = read_file(options.output);
  const ProbeOutput out = parse(log);

  for (const char* name : kAttempts) {
    const auto found = out.attempts.find(name);
    if (found == out.attempts.end()) {
      ADD_FAILURE() << name << ": the probe printed no line for it";
    } else {
      EXPECT_EQ(found->second.first, "BLOCKED") << name << ": " << found->second.second;
    }
  }
  for (const auto& [name, result] : out.attempts) {
    if (std::find_if(std::begin(kAttempts), std::end(kAttempts),
                     [&](const char* known) { return name == known; }) == std::end(kAttempts)) {
      EXPECT_EQ(result.first, "BLOCKED") << "unlisted attempt " << name << ": " << result.second;
    }
  }
  EXPECT_TRUE(out.duplicates.empty()) << "attempts printed twice: " << out.duplicates.front();
  EXPECT_TRUE(out.markers.count("DONE")) << "the probe did not finish its attempts";
  EXPECT_TRUE(out.markers.count("ALLOCATING")) << "the probe never reached its allocation";
  EXPECT_FALSE(out.attempts.count("allocate_past_limit")) << "it allocated past its limit";
  EXPECT_TRUE(status.signaled && status.code == SIGKILL) << status.describe();
  auto oom = leaf->oom_report();
  ASSERT_TRUE(oom) << oom.error().message();
  EXPECT_TRUE(oom.value().has_value()) << "the leaf reports no OOM kill";
  if (oom.value()) {
    EXPECT_EQ(oom.value()->rfind("oom:", 0), 0u) << *oom.value();
  }
  // The target never noticed.
  EXPECT_TRUE(target.running());

  // The record of what was tried and how each attempt was refused.
  std::cout << "probe output:\n" << log;
  world.io.call_void([&] { probe.reset(); });
  auto removed = leaf->remove();
  EXPECT_TRUE(removed) << removed.error().message();
  world.io.call_void([&] { vms.vms.clear(); });
  world.expect_clean("after the probe");
}

} // namespace
} // namespace vesicle::test
