// The jail launcher (vmm/jail.hpp through Process::spawn) and the uid pool,
// on the real kernel: a probe (jail_check) is started confined and checked
// from outside (/proc/<pid>/...) and by what it reports from inside; a real
// QEMU is started in a jail to show its runtime is complete. No VM boots
// (QEMU stays stopped at -S). Needs root and cgroup v1's pids controller.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "tests/integration/qemu_proc.hpp"
#include "tests/vmm/test_support.hpp"
#include "vmm/jail.hpp"
#include "vmm/process.hpp"
#include "vmm/uid_pool.hpp"

namespace vesicle {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::IoThread;
using test::proc_status;
using test::read_file;
using test::TempDir;
using vmm::detail::Process;
using vmm::detail::SpawnOptions;

// A uid range no other test run on the machine uses (sweep() kills
// whatever runs in it).
uid_t test_range_start() {
  return 2'100'000'000u + static_cast<uid_t>(::getpid() % 100'000) * 16;
}

// A pids cgroup (v1) leaf, removed at the end.
class CgroupLeaf {
public:
  CgroupLeaf()
      : path_("/sys/fs/cgroup/pids/vesicle-jail-test-" + std::to_string(::getpid()) + "-" +
              std::to_string(++count_)) {
    ok_ = ::mkdir(path_.c_str(), 0755) == 0;
  }
  ~CgroupLeaf() {
    // The processes in it are gone by now; the kernel frees the cgroup a
    // moment after the last one is reaped.
    for (int i = 0; i < 100 && ::rmdir(path_.c_str()) != 0 && errno == EBUSY; ++i)
      std::this_thread::sleep_for(10ms);
  }
  CgroupLeaf(const CgroupLeaf&) = delete;
  CgroupLeaf& operator=(const CgroupLeaf&) = delete;
  bool ok() const { return ok_; }
  const fs::path& path() const { return path_; }
  std::string name() const { return "/" + path_.filename().string(); }

private:
  static inline int count_ = 0;
  fs::path path_;
  bool ok_ = false;
};

// The probe's "name=value" lines.
std::map<std::string, std::string> probe_report(const fs::path& log) {
  std::map<std::string, std::string> report;
  std::istringstream in(read_file(log));
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) report[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return report;
}

bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

class JailTest : public ::testing::Test {
protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "the jail needs root";
    auto pool = vmm::UidPool::create(test_range_start(), 16, locks_.path());
    ASSERT_TRUE(pool) << pool.error().message();
    pool_.emplace(std::move(pool.value()));
  }

  void TearDown() override {
    // Processes are destroyed (killed, reaped) on the thread that spawned
    // them.
    io_.call_void([this] { process_.reset(); });
  }

  Result<void> spawn(SpawnOptions options) {
    auto spawned = io_.call([&] { return Process::spawn(io_.executor(), options); });
    if (!spawned) return std::move(spawned).error();
    process_ = std::move(spawned.value());
    return {};
  }

  IoThread io_;
  TempDir locks_;
  std::optional<vmm::UidPool> pool_;
  std::unique_ptr<Process> process_;
};

TEST_F(JailTest, ConfinesTheProbe) {
  auto lease = pool_->acquire();
  ASSERT_TRUE(lease) << lease.error().message();
  const uid_t uid = lease->uid();
  TempDir dir;
  const fs::path ro = dir.path() / "ro", rw = dir.path() / "rw";
  fs::create_directory(ro);
  fs::create_directory(rw);
  test::write_file(ro / "seen", "x");
  ASSERT_EQ(::chmod(ro.c_str(), 0755), 0);
  ASSERT_EQ(::chown(rw.c_str(), uid, uid), 0);
  test::write_file(dir.path() / "passed", "passed");
  UniqueFd passed(::open((dir.path() / "passed").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(passed);
  int hold[2];
  ASSERT_EQ(::pipe2(hold, O_CLOEXEC), 0);
  UniqueFd hold_read(hold[0]), hold_write(hold[1]);
  CgroupLeaf leaf;
  ASSERT_TRUE(leaf.ok()) << "cannot create " << leaf.path() << ": " << std::strerror(errno);
  UniqueFd procs(::open((leaf.path() / "cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(procs);

  vmm::Jail jail;
  jail.uid = uid;
  jail.gid = lease->gid();
  jail.mounts = {{ro, "/ro", true}, {rw, "/rw", false}};
  jail.devices = {"/dev/null"};
  jail.cgroup_procs_fds = {procs.get()};
  jail.environment = {"JAIL_CHECK=1"};
  SpawnOptions options;
  options.argv = {JAIL_CHECK_PATH, "/ro", "/rw"};
  options.output = dir.path() / "probe.log";
  options.pass_fds = {hold_read.get(), passed.get()};
  options.jail = jail;
  auto spawned = spawn(options);
  ASSERT_TRUE(spawned) << spawned.error().message();
  hold_read.reset();
  const pid_t pid = process_->pid();
  ASSERT_TRUE(wait_until([&] { return probe_report(options.output).count("ready"); }, 10s))
      << read_file(options.output);

  // Every failure below shows what the probe said.
  SCOPED_TRACE("probe report:\n" + read_file(options.output));
  if (std::getenv("JAIL_TEST_SHOW")) std::printf("%s", read_file(options.output).c_str());

  // From outside.
  auto status = proc_status(pid);
  const std::string id = std::to_string(uid);
  EXPECT_EQ(status["Uid"], id + "\t" + id + "\t" + id + "\t" + id);
  EXPECT_EQ(status["Gid"], id + "\t" + id + "\t" + id + "\t" + id);
  EXPECT_EQ(status["Groups"], "");
  for (const char* caps : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"})
    EXPECT_EQ(status[caps], "0000000000000000") << caps;
  EXPECT_EQ(status["NoNewPrivs"], "1");
  EXPECT_EQ(status["Seccomp"], "2");
  for (const char* ns : {"mnt", "pid", "net", "ipc", "uts"}) {
    const auto theirs = fs::read_symlink("/proc/" + std::to_string(pid) + "/ns/" + ns);
    const auto ours = fs::read_symlink(std::string("/proc/self/ns/") + ns);
    EXPECT_NE(theirs, ours) << ns;
  }
  EXPECT_NE(read_file(leaf.path() / "cgroup.procs").find(std::to_string(pid)), std::string::npos);
  // Mount flags, by mount point in the jail.
  std::map<std::string, std::string> mount_options;
  std::istringstream mountinfo(read_file("/proc/" + std::to_string(pid) + "/mountinfo"));
  for (std::string line; std::getline(mountinfo, line);) {
    std::istringstream fields(line);
    std::string id, parent, device, root, point, options;
    fields >> id >> parent >> device >> root >> point >> options;
    mount_options[point] = options;
  }
  EXPECT_EQ(mount_options["/"], "ro,nosuid,nodev,noexec,relatime");
  EXPECT_EQ(mount_options["/ro"], "ro,nosuid,nodev,noexec,relatime");
  EXPECT_EQ(mount_options["/rw"], "rw,nosuid,nodev,noexec,relatime");
  EXPECT_EQ(mount_options["/dev/null"], "rw,nosuid,noexec,relatime");
  EXPECT_EQ(mount_options[JAIL_CHECK_PATH], "ro,nosuid,nodev,relatime");
  EXPECT_EQ(mount_options["/proc"], "rw,nosuid,nodev,noexec,relatime");
  const std::string limits = "/proc/" + std::to_string(pid) + "/limits";
  EXPECT_EQ(test::kib_field(limits, "Max core file size"), 0u);
  EXPECT_EQ(test::kib_field(limits, "Max open files"), jail.nofile);
  EXPECT_EQ(test::kib_field(limits, "Max processes"), jail.nproc);

  // From inside.
  auto seen = probe_report(options.output);
  EXPECT_EQ(seen["pid"], "1");
  // The root holds the mounts, the devices, procfs, the probe's directory
  // and its runtime (/usr/lib/<arch>, the loader's /lib64, /lib symlinks).
  const std::string probe_top = *std::next(fs::path(JAIL_CHECK_PATH).begin());
  std::set<std::string> entries;
  std::istringstream names(seen["root"]);
  for (std::string name; std::getline(names, name, ',');)
    entries.insert(name);
  const std::set<std::string> allowed{"dev", "proc", "ro", "rw", "usr", "lib", "lib64", probe_top};
  for (const auto& entry : entries)
    EXPECT_TRUE(allowed.count(entry)) << "unexpected /" << entry << " in the jail";
  for (const char* needed : {"dev", "proc", "ro", "rw"})
    EXPECT_TRUE(entries.count(needed)) << "no /" << needed << " in the jail: " << seen["root"];
  EXPECT_EQ(seen["bin_sh"], "ENOENT");
  EXPECT_EQ(seen["etc_shadow"], "ENOENT");
  EXPECT_EQ(seen["ro_write"], "EROFS");
  EXPECT_EQ(seen["ro_read"], "seen");
  EXPECT_EQ(seen["rw_write"], "ok");
  struct stat written {};
  EXPECT_EQ(::stat((rw / "probe").c_str(), &written), 0);
  EXPECT_EQ(written.st_uid, uid);
  EXPECT_NE(seen["root_write"], "ok");
  EXPECT_EQ(seen["mount"], "EPERM");
  EXPECT_EQ(seen["unshare"], "EPERM");
  EXPECT_EQ(seen["clone3"], "ENOSYS");
  EXPECT_EQ(seen["clone_newnet"], "EPERM");
  EXPECT_EQ(seen["setuid0"], "EPERM");
  EXPECT_EQ(seen["chroot"], "EPERM");
  EXPECT_EQ(seen["ptrace"], "EPERM");
  EXPECT_EQ(seen["inet_socket_connect"], "ENETUNREACH");
  EXPECT_EQ(seen["proc"], "1,self,thread-self");
  EXPECT_EQ(seen["pids_cgroup"], leaf.name());
  EXPECT_EQ(seen["fd4"], "passed");
  EXPECT_EQ(seen["fd4_reopened"], "passed");
  EXPECT_EQ(seen["fd5"], "EBADF");
  EXPECT_EQ(seen["environment"], "JAIL_CHECK=1");

  hold_write.reset();
  auto ended = io_.run(process_->wait());
  EXPECT_FALSE(ended.signaled);
  EXPECT_EQ(ended.code, 0) << read_file(options.output);
}

TEST_F(JailTest, QemuStartsInAJail) {
  auto lease = pool_->acquire();
  ASSERT_TRUE(lease) << lease.error().message();
  TempDir vm_dir;
  ASSERT_EQ(::chown(vm_dir.path().c_str(), lease->uid(), lease->gid()), 0);
  TempDir logs;

  vmm::Jail jail;
  jail.uid = lease->uid();
  jail.gid = lease->gid();
  jail.mounts = vmm::qemu_runtime_mounts();
  jail.mounts.push_back({vm_dir.path(), "/vm", false});
  jail.devices = {"/dev/null", "/dev/urandom"};
  // The shape of vmm/qemu.cpp's command line (RAM file, qcow2 overlay,
  // agent socket, pidfile, QEMU's own seccomp filter on top of the jail's),
  // stopped before the guest's first instruction (-S, no kernel).
  SpawnOptions image;
  image.argv = {"qemu-img", "create", "-q", "-f", "qcow2", (vm_dir.path() / "disk.qcow2").string(),
                "64M"};
  image.output = logs.path() / "qemu-img.log";
  ASSERT_TRUE(io_.run(vmm::detail::run_helper(io_.executor(), image)));
  ASSERT_EQ(::chown((vm_dir.path() / "disk.qcow2").c_str(), lease->uid(), lease->gid()), 0);
  SpawnOptions options;
  options.argv = {"qemu-system-x86_64",
                  "-M",
                  "microvm,x-option-roms=off,rtc=on,memory-backend=mem",
                  "-nodefaults",
                  "-no-user-config",
                  "-nographic",
                  "-accel",
                  "tcg",
                  "-cpu",
                  "max",
                  "-smp",
                  "2",
                  "-m",
                  "64",
                  "-object",
                  "memory-backend-file,id=mem,size=64M,mem-path=/vm/ram,share=on",
                  "-drive",
                  "id=root,file=/vm/disk.qcow2,format=qcow2,if=none,discard=unmap",
                  "-device",
                  "virtio-blk-device,drive=root",
                  "-device",
                  "virtio-serial-device",
                  "-chardev",
                  "socket,id=agent,path=/vm/agent.sock,server=on,wait=off",
                  "-device",
                  "virtserialport,chardev=agent,name=agent",
                  "-chardev",
                  "ringbuf,id=console,size=65536",
                  "-serial",
                  "chardev:console",
                  "-qmp",
                  "unix:/vm/qmp.sock,server=on,wait=off",
                  "-name",
                  "vesicle-jail-test,process=vesicle-jail-test",
                  "-pidfile",
                  "/vm/qemu.pid",
                  "-sandbox",
                  "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
                  "-S"};
  options.output = logs.path() / "qemu.log";
  options.jail = jail;
  options.oom_score_adj = 500; // as vmm/qemu.cpp starts QEMU
  auto spawned = spawn(options);
  ASSERT_TRUE(spawned) << spawned.error().message();
  const pid_t pid = process_->pid();
  EXPECT_EQ(read_file("/proc/" + std::to_string(pid) + "/oom_score_adj"), "500\n");

  const fs::path socket = vm_dir.path() / "qmp.sock";
  ASSERT_TRUE(wait_until([&] { return fs::exists(socket); }, 10s)) << read_file(options.output);
  std::this_thread::sleep_for(1s);
  auto status = proc_status(pid);
  ASSERT_FALSE(status.empty()) << "QEMU exited: " << read_file(options.output);
  EXPECT_NE(status["State"].rfind("Z", 0), 0u) << "QEMU exited: " << read_file(options.output);
  EXPECT_EQ(status["Uid"].substr(0, status["Uid"].find('\t')), std::to_string(lease->uid()));
  EXPECT_EQ(status["Seccomp"], "2");

  // The socket answers with QMP's greeting.
  UniqueFd client(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, socket.c_str(), sizeof address.sun_path - 1);
  ASSERT_EQ(::connect(client.get(), reinterpret_cast<sockaddr*>(&address), sizeof address), 0)
      << std::strerror(errno);
  timeval timeout{5, 0};
  ::setsockopt(client.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  auto read_reply = [&] {
    char buffer[4096] = {};
    const ssize_t n = ::read(client.get(), buffer, sizeof buffer - 1);
    return n > 0 ? std::string(buffer, static_cast<std::size_t>(n)) : std::string();
  };
  const std::string greeting = read_reply();
  EXPECT_NE(greeting.find("\"QMP\""), std::string::npos) << greeting;
  const std::string commands = R"({"execute":"qmp_capabilities"})"
                               "\n"
                               R"({"execute":"query-status"})"
                               "\n";
  ASSERT_EQ(::write(client.get(), commands.data(), commands.size()),
            static_cast<ssize_t>(commands.size()));
  std::string replies;
  ASSERT_TRUE(wait_until(
      [&] {
        replies += read_reply();
        return replies.find("prelaunch") != std::string::npos;
      },
      5s))
      << replies;
  // What the jailed QEMU made in its directory is its own.
  for (const char* name : {"ram", "qemu.pid", "agent.sock"}) {
    struct stat st {};
    EXPECT_EQ(::stat((vm_dir.path() / name).c_str(), &st), 0) << name;
    EXPECT_EQ(st.st_uid, lease->uid()) << name;
  }

  // hostd's SIGKILL reaches the PID 1 of the jail's namespace.
  auto ended = io_.call([&] { return process_->kill_and_reap(); });
  EXPECT_TRUE(ended.signaled);
  EXPECT_EQ(ended.code, SIGKILL);
}

TEST_F(JailTest, DiesWithTheThreadThatSpawnedIt) {
  // PR_SET_PDEATHSIG follows the spawning thread. Changing uid clears it
  // (so the jail sets it again), and the jailed process is PID 1 of its
  // namespace, which ignores most signals, but not a SIGKILL from outside.
  auto lease = pool_->acquire();
  ASSERT_TRUE(lease) << lease.error().message();
  TempDir dir;
  int hold[2];
  ASSERT_EQ(::pipe2(hold, O_CLOEXEC), 0);
  UniqueFd hold_read(hold[0]), hold_write(hold[1]); // the probe waits on it forever
  vmm::Jail jail;
  jail.uid = lease->uid();
  jail.gid = lease->gid();
  SpawnOptions options;
  options.argv = {JAIL_CHECK_PATH, "/", "/"};
  options.output = dir.path() / "probe.log";
  options.pass_fds = {hold_read.get()};
  options.jail = jail;
  boost::asio::io_context context; // outlives the thread, and the Process
  std::unique_ptr<Process> process;
  std::thread([&] {
    auto spawned = Process::spawn(context.get_executor(), options);
    if (spawned) process = std::move(spawned.value());
  }).join();
  ASSERT_TRUE(process);
  const pid_t pid = process->pid();
  EXPECT_TRUE(wait_until([&] { return proc_status(pid)["State"].rfind("Z", 0) == 0; }, 5s))
      << "still " << proc_status(pid)["State"];
  process.reset();
}

TEST_F(JailTest, SaysWhatWentWrong) {
  auto lease = pool_->acquire();
  ASSERT_TRUE(lease) << lease.error().message();
  TempDir dir;
  vmm::Jail jail;
  jail.uid = lease->uid();
  jail.gid = lease->gid();
  SpawnOptions options;
  options.argv = {JAIL_CHECK_PATH, "/", "/"};
  options.output = dir.path() / "log";

  {
    // A mount whose source does not exist.
    options.jail = jail;
    options.jail->mounts = {{"/nonexistent-vesicle-source", "/x", true}};
    auto spawned = spawn(options);
    ASSERT_FALSE(spawned);
    EXPECT_EQ(spawned.error().message(),
              "confining " JAIL_CHECK_PATH ": jail mount source /nonexistent-vesicle-source: No "
              "such file or directory");
  }
  {
    // A binary that is not there.
    SpawnOptions missing = options;
    missing.jail = jail;
    missing.argv = {"/nonexistent-vesicle-binary"};
    auto spawned = spawn(missing);
    ASSERT_FALSE(spawned);
    EXPECT_NE(spawned.error().message().find("/nonexistent-vesicle-binary: No such file"),
              std::string::npos)
        << spawned.error().message();
  }
  {
    // A shell script: its interpreter, /bin/sh, is not in the jail.
    const fs::path script = dir.path() / "script.sh";
    test::write_file(script, "#!/bin/sh\necho escaped\n");
    ASSERT_EQ(::chmod(script.c_str(), 0755), 0);
    ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
    SpawnOptions shell = options;
    shell.jail = jail;
    shell.argv = {script.string()};
    auto spawned = spawn(shell);
    ASSERT_FALSE(spawned);
    EXPECT_EQ(spawned.error().message(),
              "execute " + script.string() + ": No such file or directory");
  }
  {
    // A step in the child: joining a cgroup removed after it was opened.
    CgroupLeaf leaf;
    ASSERT_TRUE(leaf.ok());
    UniqueFd procs(::open((leaf.path() / "cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(procs);
    ASSERT_EQ(::rmdir(leaf.path().c_str()), 0);
    options.jail = jail;
    options.jail->cgroup_procs_fds = {procs.get()};
    auto spawned = spawn(options);
    ASSERT_FALSE(spawned);
    EXPECT_EQ(spawned.error().message().rfind("starting " JAIL_CHECK_PATH ": jail: join cgroup " +
                                                  (leaf.path() / "cgroup.procs").string() + ": ",
                                              0),
              0u)
        << spawned.error().message();
  }
  {
    jail.uid = 0;
    options.jail = jail;
    auto spawned = spawn(options);
    ASSERT_FALSE(spawned);
    EXPECT_NE(spawned.error().message().find("uid must be neither 0"), std::string::npos)
        << spawned.error().message();
  }
}

// A pipe that a forked child reports numbers through, one per line.
class Pipe {
public:
  Pipe() { ok_ = ::pipe2(fds_, O_CLOEXEC) == 0; }
  ~Pipe() {
    close_read();
    close_write();
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  bool ok() const { return ok_; }
  void close_read() {
    if (fds_[0] >= 0) ::close(std::exchange(fds_[0], -1));
  }
  void close_write() {
    if (fds_[1] >= 0) ::close(std::exchange(fds_[1], -1));
  }
  // In the child (async-signal-safe enough: no allocation).
  void write_number(unsigned long value) {
    char text[24];
    const int n = std::snprintf(text, sizeof text, "%lu\n", value);
    if (::write(fds_[1], text, static_cast<std::size_t>(n)) != n) ::_exit(3);
  }
  // In the parent: the next number, or nullopt at end of file.
  std::optional<unsigned long> read_number() {
    std::string text;
    char c;
    while (::read(fds_[0], &c, 1) == 1) {
      if (c == '\n') return std::stoul(text);
      text += c;
    }
    return std::nullopt;
  }

private:
  int fds_[2] = {-1, -1};
  bool ok_ = false;
};

// Kills (through a pidfd, so a reused pid is safe) and reaps a process the
// test started (a child, or an orphan reparented to the test as subreaper),
// unless the test already did.
struct KillOnExit {
  explicit KillOnExit(pid_t pid)
      : pid(pid), pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))) {}
  KillOnExit(const KillOnExit&) = delete;
  KillOnExit& operator=(const KillOnExit&) = delete;
  pid_t pid;
  UniqueFd pidfd;
  ~KillOnExit() {
    if (pid <= 0) return;
    if (pidfd) ::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0);
    ::waitpid(pid, nullptr, 0);
  }
};

TEST(UidPoolTest, LeasesAreDistinctAndComeBack) {
  TempDir locks;
  auto pool = vmm::UidPool::create(test_range_start(), 2, locks.path());
  ASSERT_TRUE(pool) << pool.error().message();
  auto a = pool->acquire();
  auto b = pool->acquire();
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->uid(), b->uid());
  EXPECT_EQ(a->gid(), a->uid());
  auto c = pool->acquire();
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().kind, ErrorKind::capacity);
  const uid_t freed = a->uid();
  // A held uid's lock file exists; a released one's is removed.
  EXPECT_TRUE(fs::exists(locks.path() / std::to_string(freed)));
  { auto gone = std::move(a.value()); }
  EXPECT_FALSE(fs::exists(locks.path() / std::to_string(freed)));
  EXPECT_EQ(pool->leased(), 1u);
  auto d = pool->acquire();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->uid(), freed);
}

TEST(UidPoolTest, RejectsRangesWithZeroOrWrapping) {
  TempDir locks;
  EXPECT_FALSE(vmm::UidPool::create(0, 10, locks.path()));
  EXPECT_FALSE(vmm::UidPool::create(100, 0, locks.path()));
  EXPECT_FALSE(vmm::UidPool::create(4'294'967'290u, 10, locks.path()));
  EXPECT_FALSE(vmm::UidPool::create(4'294'967'290u, 6, locks.path())); // would hold -1
  EXPECT_TRUE(vmm::UidPool::create(4'294'967'290u, 5, locks.path()));
}

TEST(UidPoolTest, RefusesALockDirectoryOthersMayWrite) {
  TempDir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0777), 0);
  auto pool = vmm::UidPool::create(test_range_start(), 2, dir.path());
  ASSERT_FALSE(pool);
  EXPECT_EQ(pool.error().kind, ErrorKind::invalid_argument);
  ASSERT_EQ(::chmod(dir.path().c_str(), 0700), 0);
  EXPECT_TRUE(vmm::UidPool::create(test_range_start(), 2, dir.path()));
  // Made when missing, 0700.
  const fs::path fresh = dir.path() / "uids";
  EXPECT_TRUE(vmm::UidPool::create(test_range_start(), 2, fresh));
  EXPECT_EQ(fs::status(fresh).permissions(), fs::perms::owner_all);
}

// Two hostds: a forked child with its own pool over the same range and lock
// directory holds half the range; this process gets only the other half,
// and the child's half once the child is killed (the kernel drops its
// locks).
TEST(UidPoolTest, PoolsInTwoProcessesNeverShareAUidAndADeadOnesComeBack) {
  TempDir locks;
  const uid_t first = test_range_start();
  constexpr int kRange = 8, kChild = 4;
  Pipe report;
  ASSERT_TRUE(report.ok());
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    report.close_read();
    auto pool = vmm::UidPool::create(first, kRange, locks.path());
    if (!pool) ::_exit(1);
    std::vector<vmm::UidLease> held;
    for (int i = 0; i < kChild; ++i) {
      auto lease = pool->acquire();
      if (!lease) ::_exit(2);
      report.write_number(lease->uid());
      held.push_back(std::move(lease.value()));
    }
    for (;;)
      ::pause();
  }
  KillOnExit kill{child};
  report.close_write();
  std::set<uid_t> childs;
  for (int i = 0; i < kChild; ++i) {
    auto uid = report.read_number();
    ASSERT_TRUE(uid) << "the child's pool failed after " << i << " leases";
    childs.insert(static_cast<uid_t>(*uid));
  }
  ASSERT_EQ(childs.size(), std::size_t{kChild});

  auto pool = vmm::UidPool::create(first, kRange, locks.path());
  ASSERT_TRUE(pool) << pool.error().message();
  std::vector<vmm::UidLease> mine;
  for (int i = 0; i < kRange - kChild; ++i) {
    auto lease = pool->acquire();
    ASSERT_TRUE(lease) << lease.error().message();
    EXPECT_FALSE(childs.count(lease->uid())) << "uid " << lease->uid() << " leased twice";
    mine.push_back(std::move(lease.value()));
  }
  auto full = pool->acquire();
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().kind, ErrorKind::capacity);

  ASSERT_EQ(::kill(child, SIGKILL), 0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  kill.pid = 0;
  std::set<uid_t> regained;
  for (int i = 0; i < kChild; ++i) {
    auto lease = pool->acquire();
    ASSERT_TRUE(lease) << lease.error().message();
    regained.insert(lease->uid());
    mine.push_back(std::move(lease.value()));
  }
  EXPECT_EQ(regained, childs);
}

// A process under a uid (the child of a holder that keeps its lease) must
// survive another pool's sweep while its holder lives, and be swept once the
// holder is dead.
TEST(UidPoolTest, SweepSparesUidsALivePoolHoldsAndKillsADeadOnes) {
  if (::geteuid() != 0) GTEST_SKIP() << "changing uid needs root";
  TempDir locks;
  const uid_t first = test_range_start();
  Pipe report;
  ASSERT_TRUE(report.ok());
  // The holder's orphaned VM is reparented to this process, which reaps it.
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  struct NoSubreaper {
    ~NoSubreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
  } no_subreaper;
  const pid_t holder = ::fork();
  ASSERT_GE(holder, 0);
  if (holder == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    report.close_read();
    auto pool = vmm::UidPool::create(first, 4, locks.path());
    if (!pool) ::_exit(1);
    auto lease = pool->acquire();
    if (!lease) ::_exit(2);
    const uid_t uid = lease->uid();
    const pid_t vm = ::fork();
    if (vm < 0) ::_exit(3);
    if (vm == 0) {
      // What a jailed VM is: not the lock's holder (no copy of its fd), no
      // death signal tied to its parent (a QEMU survives a dead hostd
      // until swept).
      ::syscall(SYS_close_range, 3u, ~0u, 0u);
      if (::syscall(SYS_setresgid, uid, uid, uid) != 0 ||
          ::syscall(SYS_setresuid, uid, uid, uid) != 0) {
        ::_exit(4);
      }
      for (;;)
        ::pause();
    }
    report.write_number(uid);
    report.write_number(static_cast<unsigned long>(vm));
    for (;;)
      ::pause();
  }
  KillOnExit kill_holder{holder};
  report.close_write();
  auto uid = report.read_number();
  auto vm = report.read_number();
  ASSERT_TRUE(uid && vm) << "the holder failed";
  KillOnExit kill_vm{static_cast<pid_t>(*vm)};
  ASSERT_TRUE(kill_vm.pidfd);
  ASSERT_TRUE(wait_until(
      [&] { return proc_status(kill_vm.pid)["Uid"].rfind(std::to_string(*uid), 0) == 0; }, 5s));

  auto pool = vmm::UidPool::create(first, 4, locks.path());
  ASSERT_TRUE(pool) << pool.error().message();
  auto swept = pool->sweep();
  ASSERT_TRUE(swept) << swept.error().message();
  EXPECT_EQ(swept.value(), 0);
  pollfd alive{kill_vm.pidfd.get(), POLLIN, 0};
  EXPECT_EQ(::poll(&alive, 1, 0), 0) << "the sweep killed a live pool's VM";
  EXPECT_TRUE(fs::exists(locks.path() / std::to_string(*uid)));

  // The holder dies (hostd killed): its lock goes, its VM stays.
  ASSERT_EQ(::kill(holder, SIGKILL), 0);
  ASSERT_EQ(::waitpid(holder, nullptr, 0), holder);
  kill_holder.pid = 0;
  EXPECT_EQ(::poll(&alive, 1, 0), 0);
  swept = pool->sweep();
  ASSERT_TRUE(swept) << swept.error().message();
  EXPECT_EQ(swept.value(), 1);
  EXPECT_EQ(::poll(&alive, 1, 1000), 1) << "the dead holder's VM was not killed";
  int status = 0;
  EXPECT_EQ(::waitpid(kill_vm.pid, &status, 0), kill_vm.pid);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  kill_vm.pid = 0;
  // Its lock file went with it; the uid can be leased again.
  EXPECT_FALSE(fs::exists(locks.path() / std::to_string(*uid)));
  EXPECT_EQ(pool->leased(), 0u);
}

TEST(UidPoolTest, SweepKillsWhatRunsInTheRange) {
  if (::geteuid() != 0) GTEST_SKIP() << "changing uid needs root";
  TempDir locks;
  auto pool = vmm::UidPool::create(test_range_start(), 16, locks.path());
  ASSERT_TRUE(pool) << pool.error().message();
  const uid_t uid = pool->first() + 3;
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::syscall(SYS_setresgid, uid, uid, uid) != 0 ||
        ::syscall(SYS_setresuid, uid, uid, uid) != 0) {
      ::_exit(1);
    }
    for (;;)
      ::pause();
  }
  // Kills and reaps the child if the test stops before it is reaped.
  struct Reap {
    pid_t pid;
    ~Reap() {
      if (pid <= 0) return;
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reap{child};
  ASSERT_TRUE(
      wait_until([&] { return proc_status(child)["Uid"].rfind(std::to_string(uid), 0) == 0; }, 5s));
  auto swept = pool->sweep();
  ASSERT_TRUE(swept) << swept.error().message();
  EXPECT_EQ(swept.value(), 1);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  reap.pid = 0;
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  // Nothing left to sweep, and no lock file left behind.
  auto again = pool->sweep();
  ASSERT_TRUE(again);
  EXPECT_EQ(again.value(), 0);
  EXPECT_TRUE(fs::is_empty(locks.path()));
}

} // namespace
} // namespace vesicle
