// Template snapshots with real VMs: one boot, one save, two restores (three
// QEMU starts in all), and open_snapshot's checks on damaged copies.
//
// Every VM id starts with "sn<pid>-" so the leak check can tell this run's
// QEMU processes from anyone else's.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

#include "common/unique_fd.hpp"
#include "tests/integration/qemu_proc.hpp"
#include "tests/vmm/test_support.hpp"
#include "tests/vmm/vm_world.hpp"
#include "vmm/snapshot.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::test {
using vesicle::UniqueFd;
namespace {

using namespace std::chrono_literals;
using vmm::Vm;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// A sparse copy: only the data extents are copied, holes stay holes.
void sparse_copy(const fs::path& from, const fs::path& to) {
  UniqueFd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  UniqueFd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(in && out) << from << " -> " << to << ": " << std::strerror(errno);
  struct stat st {};
  ASSERT_EQ(::fstat(in.get(), &st), 0);
  ASSERT_EQ(::ftruncate(out.get(), st.st_size), 0);
  off_t offset = 0;
  while (offset < st.st_size) {
    const off_t data = ::lseek(in.get(), offset, SEEK_DATA);
    if (data < 0) break;
    const off_t hole = std::min<off_t>(::lseek(in.get(), data, SEEK_HOLE), st.st_size);
    loff_t src = data, dst = data;
    while (src < hole) {
      const ssize_t n = ::copy_file_range(in.get(), &src, out.get(), &dst,
                                          static_cast<std::size_t>(hole - src), 0);
      ASSERT_GT(n, 0) << std::strerror(errno);
    }
    offset = hole;
  }
}

// The checksums of every file of a snapshot, as the test itself sees them.
std::map<std::string, std::string> fingerprint(const vmm::Snapshot& snapshot) {
  std::map<std::string, std::string> sums;
  for (const auto& name : {"manifest", "state", "disk.qcow2"})
    sums[name] = sha256_hex(read_file(snapshot.dir / name));
  auto memory = vmm::snapshot::digest_sparse_file(snapshot.memory_file);
  sums["memory"] = memory ? memory->sha256 : memory.error().message();
  if (snapshot.memory) {
    auto mapped = vmm::snapshot::digest_sparse_file(snapshot.memory->path());
    sums["memfd"] = mapped ? mapped->sha256 : mapped.error().message();
  }
  return sums;
}

// One suite's world (tests/vmm/vm_world.hpp), VMs named sn<pid>-*.
struct World : VmWorld {
  World() : VmWorld("sn") {}
  // The snapshot: its dir anywhere, its RAM file on the VMs' tmpfs.
  TempDir snapshots{fs::temp_directory_path(), "vesicle-sn-snap"};
  TempDir snapshot_shm{"/dev/shm", "vesicle-sn-snap"};
};

class Snapshots : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    if (!vmm::GuestImages::in(images_dir()).check().ok()) return;
    world_ = new World;
    setup_error_ = new std::string(make_snapshot());
  }

  // Boots, leaves state in the REPL and on disk, saves. "" when it worked.
  static std::string make_snapshot() {
    auto booted = world_->io.run(world_->driver->boot(world_->config("origin")));
    if (!booted) return "boot failed: " + booted.error().message();
    VmList origin{world_->io, {}};
    origin.vms.push_back(std::move(booted).value());
    auto& agent = origin.vms[0]->agent();
    auto set = world_->io.run(python(agent, "x = 41"));
    if (!set.exit || set.exit->exit_code() != 0) return "x = 41 failed";
    auto wrote = world_->io.run(bash(agent, "echo before-the-save > /root/snapshot-marker"));
    if (!wrote.exit || wrote.exit->exit_code() != 0) return "writing the marker failed";
    // Refusals that leave the VM running: an existing dir, an existing
    // file where the RAM's copy on disk would go.
    auto exists = world_->io.run(origin.vms[0]->save_snapshot(
        world_->snapshots.path(), world_->snapshot_shm.path() / "refused.mem"));
    if (exists || exists.error().errno_value != EEXIST)
      return "saving into an existing dir was not refused with EEXIST";
    write_file(world_->snapshot_shm.path() / "taken.mem", "someone else's");
    auto taken = world_->io.run(origin.vms[0]->save_snapshot(
        world_->snapshots.path() / "refused", world_->snapshot_shm.path() / "taken.mem"));
    if (taken || taken.error().errno_value != EEXIST)
      return "an existing RAM copy was not refused with EEXIST";
    if (read_file(world_->snapshot_shm.path() / "taken.mem") != "someone else's")
      return "a refused save overwrote a file";
    fs::remove(world_->snapshot_shm.path() / "taken.mem");
    if (!origin.vms[0]->running()) return "a refused save ended the VM";
    if (!dir_entries(world_->snapshots.path()).empty()) return "a refused save left files";
    if (seccomp_mode(origin.vms[0]->qemu_pid()) != 2)
      return "the booted VM's QEMU does not run under a seccomp filter (Seccomp: " +
             std::to_string(seccomp_mode(origin.vms[0]->qemu_pid())) + ")";
    const auto started = Clock::now();
    auto saved = world_->io.run(origin.vms[0]->save_snapshot(
        world_->snapshots.path() / "template", world_->snapshot_shm.path() / "template.mem"));
    save_ms_ = std::chrono::duration<double, std::milli>(Clock::now() - started).count();
    if (!saved) return "save failed: " + saved.error().message();
    if (origin.vms[0]->running()) return "the saved VM still runs";
    exit_how_ = new std::string(world_->io.run(origin.vms[0]->wait_exit()));
    snapshot_ = new vmm::Snapshot(*saved);
    return "";
  }

  static void TearDownTestSuite() {
    if (!world_) return;
    world_->expect_clean("after the snapshot suite");
    delete world_;
    world_ = nullptr;
    delete snapshot_;
    snapshot_ = nullptr;
    delete setup_error_;
    setup_error_ = nullptr;
    delete exit_how_;
    exit_how_ = nullptr;
  }

  void SetUp() override {
    if (!world_) {
      GTEST_SKIP() << "no guest images in " << images_dir()
                   << " (build them with images/build.sh, or set VESICLE_IMAGES_DIR)";
    }
    ASSERT_TRUE(setup_error_->empty()) << *setup_error_;
  }

  static IoThread& io() { return world_->io; }

  // A copy of the snapshot dir whose manifest names `memory_file`.
  static fs::path copy_snapshot(const std::string& name, const fs::path& memory_file) {
    const fs::path copy = world_->snapshots.path() / name;
    fs::create_directory(copy);
    for (const auto& file : {"state", "disk.qcow2"}) {
      fs::copy_file(snapshot_->dir / file, copy / file);
      fs::permissions(copy / file, fs::perms::owner_read | fs::perms::owner_write);
    }
    auto manifest = vmm::snapshot::parse_manifest(read_file(snapshot_->manifest()));
    EXPECT_TRUE(manifest) << manifest.error().message();
    manifest->memory_file = memory_file;
    write_file(copy / "manifest", vmm::snapshot::format_manifest(*manifest));
    return copy;
  }

  static World* world_;
  static vmm::Snapshot* snapshot_;
  static std::string* setup_error_;
  static std::string* exit_how_;
  static double save_ms_;
};

World* Snapshots::world_ = nullptr;
vmm::Snapshot* Snapshots::snapshot_ = nullptr;
std::string* Snapshots::setup_error_ = nullptr;
std::string* Snapshots::exit_how_ = nullptr;
double Snapshots::save_ms_ = 0;

TEST_F(Snapshots, SaveEndsTheVmAndWritesAReadOnlySnapshotThatOpens) {
  std::cout << "save_snapshot took " << save_ms_ << " ms\n";
  EXPECT_NE(exit_how_->find("saved to a snapshot"), std::string::npos) << *exit_how_;
  EXPECT_EQ(dir_entries(world_->snapshots.path()), std::vector<std::string>{"template"})
      << "no staging dir left beside the snapshot";
  for (const auto& file : {snapshot_->manifest(), snapshot_->device_state(), snapshot_->disk}) {
    struct stat st {};
    ASSERT_EQ(::stat(file.c_str(), &st), 0) << file;
    EXPECT_EQ(st.st_mode & 0777, 0444u) << file;
  }
  // The RAM the restores map is a sealed memfd; the copy on disk (for a
  // later start) is for hostd alone.
  ASSERT_TRUE(snapshot_->memory);
  EXPECT_TRUE(snapshot_->memory->sealed());
  EXPECT_EQ(::fcntl(snapshot_->memory->fd(), F_GET_SEALS),
            F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_EQ(::pwrite(snapshot_->memory->fd(), "x", 1, 0), -1) << "a sealed memfd took a write";
  struct stat memory {};
  ASSERT_EQ(::stat(snapshot_->memory_file.c_str(), &memory), 0);
  EXPECT_EQ(static_cast<std::uint64_t>(memory.st_size), 512ull << 20);
  EXPECT_EQ(memory.st_mode & 0777, 0400u);
  EXPECT_LT(static_cast<std::uint64_t>(memory.st_blocks) * 512, 400ull << 20)
      << "the RAM file stayed sparse";
  const auto started = Clock::now();
  auto opened = vmm::open_snapshot(snapshot_->dir);
  std::cout << "open_snapshot (all checksums) took "
            << std::chrono::duration<double, std::milli>(Clock::now() - started).count()
            << " ms for " << (memory.st_blocks * 512 >> 20) << " MiB of RAM data\n";
  ASSERT_TRUE(opened) << opened.error().message();
  EXPECT_EQ(opened->memory_file, snapshot_->memory_file);
  EXPECT_EQ(opened->disk, snapshot_->disk);
  EXPECT_EQ(opened->vcpus, 2u);
  EXPECT_EQ(opened->memory_mib, 512u);
  EXPECT_EQ(opened->kernel_cmdline, snapshot_->kernel_cmdline);
  EXPECT_FALSE(opened->network);
}

TEST_F(Snapshots, TwoRestoresSeeTheSavedStateAndNotEachOther) {
  const auto before = fingerprint(*snapshot_);
  VmList restored{io(), {}};
  for (const char* name : {"a", "b"}) {
    auto prepared = io().run(world_->driver->prepare_restore(*snapshot_, world_->config(name)));
    ASSERT_TRUE(prepared) << prepared.error().message();
    auto vm = io().run(prepared.value()->finish());
    ASSERT_TRUE(vm) << vm.error().message();
    const auto& t = prepared.value()->times();
    std::cout << "restore " << name << ": QEMU start to QMP " << t.qemu_start.count() / 1000.0
              << " ms, migrate-incoming " << t.incoming.count() / 1000.0
              << " ms, cont to agent ping " << t.resume.count() / 1000.0 << " ms\n";
    io().call_void([&prepared] { prepared.value().reset(); });
    restored.vms.push_back(std::move(vm).value());
    // QEMU runs under its own seccomp filter, and the device state came in
    // through an fd that QEMU closed when the load was done.
    const int pid = restored.vms.back()->qemu_pid();
    EXPECT_EQ(seccomp_mode(pid), 2) << name;
    EXPECT_EQ(open_files_naming(pid, snapshot_->device_state().string()),
              std::vector<std::string>{})
        << name;
  }
  auto& a = restored.vms[0]->agent();
  auto& b = restored.vms[1]->agent();
  for (auto* agent : {&a, &b}) {
    auto x = io().run(python(*agent, "print(x)"));
    ASSERT_TRUE(x.exit) << x.exit.error().message();
    EXPECT_EQ(x.output.out, "41\n");
    auto marker = io().run(bash(*agent, "cat /root/snapshot-marker"));
    ASSERT_TRUE(marker.exit) << marker.exit.error().message();
    EXPECT_EQ(marker.output.out, "before-the-save\n");
  }
  // Each writes memory and disk; neither sees the other's.
  auto set_a = io().run(python(a, "x = 1\nbig_a = bytearray(64 << 20)"));
  ASSERT_TRUE(set_a.exit) << set_a.exit.error().message();
  auto set_b = io().run(python(b, "x = 2"));
  ASSERT_TRUE(set_b.exit) << set_b.exit.error().message();
  auto write_a = io().run(bash(a, "echo from-a > /root/only-a; sync"));
  ASSERT_TRUE(write_a.exit) << write_a.exit.error().message();
  auto x_a = io().run(python(a, "print(x)"));
  auto x_b = io().run(python(b, "print(x)"));
  ASSERT_TRUE(x_a.exit && x_b.exit);
  EXPECT_EQ(x_a.output.out, "1\n");
  EXPECT_EQ(x_b.output.out, "2\n");
  auto seen_b = io().run(bash(b, "test -e /root/only-a && echo seen || echo absent"));
  ASSERT_TRUE(seen_b.exit) << seen_b.exit.error().message();
  EXPECT_EQ(seen_b.output.out, "absent\n");

  // A restored VM has no RAM file of its own to save.
  auto resaved = io().run(restored.vms[0]->save_snapshot(world_->snapshots.path() / "again",
                                                         world_->snapshot_shm.path() / "again"));
  ASSERT_FALSE(resaved);
  EXPECT_NE(resaved.error().message().find("cannot be snapshotted fast"), std::string::npos)
      << resaved.error().message();
  EXPECT_TRUE(restored.vms[0]->running());
  EXPECT_FALSE(fs::exists(world_->snapshots.path() / "again"));

  for (auto& vm : restored.vms) {
    io().run(vm->shutdown(20s));
    const std::string how = io().run(vm->wait_exit());
    EXPECT_NE(how.find("powered off as asked"), std::string::npos) << how;
  }
  EXPECT_EQ(fingerprint(*snapshot_), before) << "a restore changed the snapshot's files";
  world_->expect_clean("after the restores");
}

TEST_F(Snapshots, OpenRefusesDamagedCopies) {
  // A faithful copy opens: what fails below fails for the damage alone.
  const fs::path good = copy_snapshot("copy-good", snapshot_->memory_file);
  auto opened = vmm::open_snapshot(good);
  ASSERT_TRUE(opened) << opened.error().message();

  {
    const fs::path memory = world_->snapshot_shm.path() / "truncated.mem";
    sparse_copy(snapshot_->memory_file, memory);
    ASSERT_EQ(::truncate(memory.c_str(), (512ll << 20) - 4096), 0);
    auto refused = vmm::open_snapshot(copy_snapshot("copy-truncated", memory));
    ASSERT_FALSE(refused);
    const std::string message = refused.error().message();
    EXPECT_NE(message.find("memory file"), std::string::npos) << message;
    EXPECT_NE(message.find("truncated"), std::string::npos) << message;
    EXPECT_NE(message.find("rebuilt"), std::string::npos) << message;
  }
  {
    const fs::path copy = copy_snapshot("copy-flipped", snapshot_->memory_file);
    std::string state = read_file(copy / "state");
    ASSERT_GT(state.size(), 100u);
    state[state.size() / 2] ^= 0x01;
    write_file(copy / "state", state);
    auto refused = vmm::open_snapshot(copy);
    ASSERT_FALSE(refused);
    const std::string message = refused.error().message();
    EXPECT_NE(message.find("device state"), std::string::npos) << message;
    EXPECT_NE(message.find("sha256"), std::string::npos) << message;
  }
  {
    const fs::path copy = copy_snapshot("copy-no-disk", snapshot_->memory_file);
    fs::remove(copy / "disk.qcow2");
    auto refused = vmm::open_snapshot(copy);
    ASSERT_FALSE(refused);
    const std::string message = refused.error().message();
    EXPECT_NE(message.find("disk is missing"), std::string::npos) << message;
    EXPECT_EQ(refused.error().errno_value, ENOENT);
  }
  {
    const fs::path copy = copy_snapshot("copy-version", snapshot_->memory_file);
    std::string manifest = read_file(copy / "manifest");
    manifest.replace(0, manifest.find('\n'), "vesicle-snapshot 999");
    write_file(copy / "manifest", manifest);
    auto refused = vmm::open_snapshot(copy);
    ASSERT_FALSE(refused);
    const std::string message = refused.error().message();
    EXPECT_NE(message.find("format version 999"), std::string::npos) << message;
  }
  // The real snapshot was not touched.
  EXPECT_TRUE(vmm::open_snapshot(snapshot_->dir));
}

TEST_F(Snapshots, FailedRestoresLeaveNothingBehind) {
  // A snapshot that does not fit the config is refused before QEMU starts.
  vmm::Snapshot with_network = *snapshot_;
  with_network.network = true;
  auto refused = io().run(world_->driver->restore(with_network, world_->config("net")));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("attach a network"), std::string::npos)
      << refused.error().message();

  // Device state cut in half (open_snapshot would have refused it; restore
  // trusts the Snapshot it is given): QEMU fails the load and exits.
  const fs::path copy = copy_snapshot("copy-half-state", snapshot_->memory_file);
  const std::string state = read_file(copy / "state");
  write_file(copy / "state", state.substr(0, state.size() / 2));
  vmm::Snapshot damaged = *snapshot_;
  damaged.dir = copy;
  auto failed = io().run(world_->driver->restore(damaged, world_->config("half")));
  ASSERT_FALSE(failed);
  std::cout << "a restore from a cut device state fails with: " << failed.error().message() << "\n";
  EXPECT_NE(failed.error().message().find("load device state"), std::string::npos)
      << failed.error().message();
  // A prepared restore dropped without finish() takes its QEMU along.
  auto prepared = io().run(world_->driver->prepare_restore(*snapshot_, world_->config("dropped")));
  ASSERT_TRUE(prepared) << prepared.error().message();
  io().call_void([&prepared] { prepared.value().reset(); });
  world_->expect_clean("after failed restores");
}

} // namespace
} // namespace vesicle::test
