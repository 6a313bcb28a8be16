// Vm::save_fork_snapshot on real, confined VMs: a VM restored share=off
// from a template (what a pool sandbox is) is snapshotted while it runs,
// two children are restored from that snapshot, and a grandchild from a
// child's. Each sees its parent's Python globals, files and background
// process at the save; none sees another's later writes; the parent runs
// on untouched; and a booted VM forked the same way. Eight QEMU starts
// under TCG: about a minute and a half.
//
// Every VM id starts with "fs<pid>-" so the leak check can tell this run's
// QEMU processes from anyone else's.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <iostream>

#include <gtest/gtest.h>

#include "tests/vmm/test_support.hpp"
#include "tests/vmm/vm_world.hpp"
#include "vmm/private_memory.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::test {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

struct World : VmWorld {
  World() : VmWorld("fs") {}
  TempDir snapshots{fs::temp_directory_path(), "vesicle-fs-snap"};
  TempDir uid_locks;
  std::shared_ptr<const vmm::VmConfinement> confinement;

  // Confined like hostd's VMs (own uid, jail, seccomp; no cgroup leaf):
  // the copy reads a QEMU that runs as another user in its own PID
  // namespace, and QEMU writes its device state into a file it cannot open.
  vmm::VmConfig confined(const std::string& name) const {
    vmm::VmConfig c = config(name);
    c.confinement = confinement;
    return c;
  }
};

// The Python and shell state every copy is checked for.
constexpr const char* kSetUp = "x = 41\nbig = bytearray(b'\\x07') * (24 << 20)\n";
constexpr const char* kBackground =
    "echo parent-file > /root/fork-marker; "
    "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /root/ticks; sleep 0.1; done' "
    ">/dev/null 2>&1 < /dev/null & echo $! > /root/ticker.pid";

class ForkSnapshots : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0 || !vmm::GuestImages::in(images_dir()).check().ok()) return;
    world_ = new World;
    auto pool = vmm::UidPool::create(2'300'000'000u + static_cast<uid_t>(::getpid() % 100'000) * 8,
                                     8, world_->uid_locks.path());
    if (!pool) {
      error_ = "uid pool: " + pool.error().message();
      return;
    }
    auto confinement = std::make_shared<vmm::VmConfinement>();
    confinement->uids = std::make_shared<vmm::UidPool>(std::move(pool).value());
    world_->confinement = std::move(confinement);
    error_ = make_template();
  }

  // Boots a VM and saves it as the template the parent is restored from.
  static std::string make_template() {
    auto booted = io().run(world_->driver->boot(world_->confined("origin")));
    if (!booted) return "boot failed: " + booted.error().message();
    VmList origin{io(), {}};
    origin.vms.push_back(std::move(booted).value());
    auto saved = io().run(origin.vms[0]->save_snapshot(world_->snapshots.path() / "template", {}));
    if (!saved) return "save failed: " + saved.error().message();
    (void)io().run(origin.vms[0]->wait_exit());
    template_ = new vmm::Snapshot(*saved);
    return "";
  }

  static void TearDownTestSuite() {
    if (!world_) return;
    delete template_;
    template_ = nullptr;
    world_->expect_clean("after the fork snapshot suite");
    delete world_;
    world_ = nullptr;
  }

  void SetUp() override {
    if (!world_) GTEST_SKIP() << "needs root and guest images in " << images_dir();
    ASSERT_TRUE(error_.empty()) << error_;
  }

  static IoThread& io() { return world_->io; }

  static std::unique_ptr<vmm::Vm> restore(const vmm::Snapshot& from, const std::string& name) {
    auto restored = io().run(world_->driver->restore(from, world_->confined(name)));
    EXPECT_TRUE(restored) << name << ": " << restored.error().message();
    return restored ? std::move(restored).value() : nullptr;
  }

  // Python's stdout in `vm` for `code`, or what went wrong.
  static std::string py(vmm::Vm& vm, const std::string& code) {
    auto reply = io().run(python(vm.agent(), code, 30'000));
    if (!reply.exit) return "exec failed: " + reply.exit.error().message();
    if (!reply.output.errors.empty()) return "error: " + reply.output.err;
    return reply.output.out;
  }
  static std::string sh(vmm::Vm& vm, const std::string& command) {
    auto reply = io().run(bash(vm.agent(), command, 30'000));
    if (!reply.exit) return "exec failed: " + reply.exit.error().message();
    return reply.output.out;
  }

  // What the copy sees of the state set up before the save: x, big, the
  // file, and the background process still ticking.
  static void expect_parent_state(vmm::Vm& vm, const std::string& x, const char* who) {
    EXPECT_EQ(py(vm, "print(x)"), x + "\n") << who;
    EXPECT_EQ(py(vm, "print(len(big), big[12345], big[-1])"), std::to_string(24 << 20) + " 7 7\n")
        << who;
    EXPECT_EQ(sh(vm, "cat /root/fork-marker"), "parent-file\n") << who;
    // Alive, and its counter moves on in this copy.
    EXPECT_EQ(sh(vm, "kill -0 $(cat /root/ticker.pid) && echo alive"), "alive\n") << who;
    const std::string first = sh(vm, "cat /root/ticks");
    std::this_thread::sleep_for(1500ms);
    EXPECT_NE(sh(vm, "cat /root/ticks"), first) << who << ": the background process stopped";
  }

  static World* world_;
  static vmm::Snapshot* template_;
  static std::string error_;
};

World* ForkSnapshots::world_ = nullptr;
vmm::Snapshot* ForkSnapshots::template_ = nullptr;
std::string ForkSnapshots::error_;

TEST_F(ForkSnapshots, ASharedOffVmIsSnapshottedWhileItRunsAndItsChildrenAreIndependent) {
  VmList vms{io(), {}};
  vms.vms.push_back(restore(*template_, "parent"));
  ASSERT_TRUE(vms.vms[0]);
  vmm::Vm& parent = *vms.vms[0];
  ASSERT_FALSE(parent.maps_memory_shared());
  ASSERT_EQ(py(parent, kSetUp), "");
  ASSERT_EQ(sh(parent, kBackground), "");

  // An existing dir is refused and the VM runs on.
  fs::create_directory(world_->snapshots.path() / "taken");
  auto refused = io().run(parent.save_fork_snapshot(world_->snapshots.path() / "taken"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().errno_value, EEXIST);
  fs::remove(world_->snapshots.path() / "taken");

  vmm::ForkSaveStats stats;
  const auto started = std::chrono::steady_clock::now();
  auto saved = io().run(parent.save_fork_snapshot(world_->snapshots.path() / "fork", &stats));
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  ASSERT_TRUE(saved) << saved.error().message();
  std::cout << "save_fork_snapshot: " << ms << " ms, source copy "
            << stats.data_copy.count() / 1000.0 << " ms, paused " << stats.paused.count() / 1000.0
            << " ms (device state " << stats.device_state.count() / 1000.0 << ", disk "
            << stats.disk.count() / 1000.0 << ", RAM " << stats.memory.count() / 1000.0 << "), "
            << stats.private_pages << " private pages, RAM file " << (stats.memory_bytes >> 20)
            << " MiB\n";
  EXPECT_GE(stats.private_pages * 4096, 24ull << 20) << "the guest's writes were found";
  ASSERT_TRUE(saved->memory && saved->memory->sealed());
  EXPECT_LT(stats.memory_bytes, 512ull << 20);
  EXPECT_FALSE(saved->full_ram);
  auto files = dir_entries(saved->dir);
  std::sort(files.begin(), files.end());
  // No manifest: a fork snapshot is never reopened from disk.
  EXPECT_EQ(files, (std::vector<std::string>{"disk.qcow2", "state"}));

  // The parent ran on through the save and keeps its own state.
  ASSERT_TRUE(parent.running());
  expect_parent_state(parent, "41", "the parent after the save");
  EXPECT_EQ(py(parent, "x = 100\nprint(x)"), "100\n");
  EXPECT_EQ(sh(parent, "echo parent-later > /root/later; cat /root/later"), "parent-later\n");

  vms.vms.push_back(restore(*saved, "child1"));
  vms.vms.push_back(restore(*saved, "child2"));
  ASSERT_TRUE(vms.vms[1] && vms.vms[2]);
  vmm::Vm& child1 = *vms.vms[1];
  vmm::Vm& child2 = *vms.vms[2];
  expect_parent_state(child1, "41", "child 1");
  expect_parent_state(child2, "41", "child 2");
  EXPECT_EQ(sh(child1, "cat /root/later 2>&1 || true"),
            "cat: /root/later: No such file or directory\n")
      << "a child saw the parent's write after the save";

  // Siblings and the parent do not see each other's writes.
  EXPECT_EQ(py(child1, "x = 1\nbig[0] = 9\nprint(x)"), "1\n");
  EXPECT_EQ(sh(child1, "echo child1 > /root/fork-marker; cat /root/fork-marker"), "child1\n");
  EXPECT_EQ(py(child2, "print(x, big[0])"), "41 7\n");
  EXPECT_EQ(sh(child2, "cat /root/fork-marker"), "parent-file\n");
  EXPECT_EQ(py(parent, "print(x, big[0])"), "100 7\n");

  // A grandchild, from a snapshot of a child (itself restored share=off
  // from a fork snapshot).
  auto grand = io().run(child1.save_fork_snapshot(world_->snapshots.path() / "grand"));
  ASSERT_TRUE(grand) << grand.error().message();
  vms.vms.push_back(restore(*grand, "grandchild"));
  ASSERT_TRUE(vms.vms[3]);
  EXPECT_EQ(py(*vms.vms[3], "print(x, big[0], len(big))"),
            "1 9 " + std::to_string(24 << 20) + "\n");
  EXPECT_EQ(sh(*vms.vms[3], "cat /root/fork-marker"), "child1\n");
  EXPECT_EQ(py(child1, "print(x)"), "1\n") << "the child runs on after its own save";
}

} // namespace
} // namespace vesicle::test

namespace vesicle::test {
namespace {

// Pages a program wrote and gave back are zeros in the guest
// (init_on_free=1), which the fork's copy leaves out: the snapshot holds
// what is in use, not everything the parent ever wrote.
TEST_F(ForkSnapshots, PagesAProgramFreedAreLeftOutOfTheFork) {
  VmList vms{io(), {}};
  vms.vms.push_back(restore(*template_, "freer"));
  ASSERT_TRUE(vms.vms[0]);
  vmm::Vm& parent = *vms.vms[0];
  // 64 MiB of random bytes written and freed (a large object is its own
  // mapping, unmapped when deleted), 1 MiB kept.
  ASSERT_EQ(py(parent, "import os\nt = os.urandom(64 << 20)\ndel t\nkeep = os.urandom(1 << 20)\n"),
            "");
  // What the template's data takes alone, copied the way a fork copies it
  // (its own file's size counts pages restores have read from its holes).
  ASSERT_TRUE(template_->memory);
  auto template_copy = vmm::copy_memory_data(*template_->memory, "template-data");
  ASSERT_TRUE(template_copy) << template_copy.error().message();
  struct stat template_ram {};
  ASSERT_EQ(::fstat((*template_copy)->fd(), &template_ram), 0);
  const auto template_bytes = static_cast<std::uint64_t>(template_ram.st_blocks) * 512;
  vmm::ForkSaveStats stats;
  auto saved = io().run(parent.save_fork_snapshot(world_->snapshots.path() / "freed", &stats));
  ASSERT_TRUE(saved) << saved.error().message();
  std::cout << "the parent wrote " << (stats.private_pages * 4096 >> 20)
            << " MiB; the fork's RAM holds " << (stats.memory_bytes >> 20) << " MiB, the template "
            << (template_bytes >> 20) << " MiB\n";
  EXPECT_GE(stats.private_pages * 4096, 64ull << 20) << "the guest's writes were found";
  EXPECT_LT(stats.memory_bytes, template_bytes + (32ull << 20))
      << "the freed pages were copied into the fork";
  vms.vms.push_back(restore(*saved, "freer-child"));
  ASSERT_TRUE(vms.vms[1]);
  EXPECT_EQ(py(*vms.vms[1], "print(len(keep))"), std::to_string(1 << 20) + "\n");
}

// A booted VM (its RAM a share=on file of its own) is copied while paused,
// and runs on too.
TEST_F(ForkSnapshots, ABootedVmIsSnapshottedWhileItRunsOn) {
  auto booted = io().run(world_->driver->boot(world_->confined("booted")));
  ASSERT_TRUE(booted) << booted.error().message();
  VmList vms{io(), {}};
  vms.vms.push_back(std::move(booted).value());
  vmm::Vm& parent = *vms.vms[0];
  ASSERT_TRUE(parent.maps_memory_shared());
  // The guest kernel zeroed all of its 512 MiB at boot (init_on_free=1);
  // the boot gave those pages back, so QEMU maps only what the guest uses.
  const std::uint64_t shared =
      kib_field("/proc/" + std::to_string(parent.qemu_pid()) + "/status", "RssShmem:") * 1024;
  std::cout << "a booted VM maps " << (shared >> 20) << " MiB of its RAM file\n";
  EXPECT_LT(shared, 256ull << 20) << "the pages zeroed at boot were not given back";
  ASSERT_EQ(py(parent, "y = 'booted'"), "");
  auto saved = io().run(parent.save_fork_snapshot(world_->snapshots.path() / "booted-fork"));
  ASSERT_TRUE(saved) << saved.error().message();
  ASSERT_TRUE(parent.running());
  EXPECT_EQ(py(parent, "y = 'parent'\nprint(y)"), "parent\n");
  vms.vms.push_back(restore(*saved, "booted-child"));
  ASSERT_TRUE(vms.vms[1]);
  EXPECT_EQ(py(*vms.vms[1], "print(y)"), "booted\n");
  EXPECT_EQ(py(parent, "print(y)"), "parent\n");
}

} // namespace
} // namespace vesicle::test

namespace vesicle::test {
namespace {

// The pre-started VMMs of issue 15: a fork lands in QEMUs started before
// it (Driver::prepare_fork_landing), which then see the parent's memory,
// files and processes as children restored the usual way do.
TEST_F(ForkSnapshots, AForkLandsInVmsStartedBeforeIt) {
  VmList vms{io(), {}};
  vms.vms.push_back(restore(*template_, "land-parent"));
  ASSERT_TRUE(vms.vms[0]);
  vmm::Vm& parent = *vms.vms[0];
  ASSERT_EQ(py(parent, kSetUp), "");
  ASSERT_EQ(sh(parent, kBackground), "");
  // A file the children can only read from the disk (the guest's page
  // cache dropped): it reaches them only if their QEMUs read the filled
  // disk's metadata again.
  ASSERT_EQ(sh(parent, "head -c 3000000 /dev/urandom > /root/on-disk; md5sum < /root/on-disk > "
                       "/root/on-disk.md5; sync; echo 3 > /proc/sys/vm/drop_caches"),
            "");

  auto copy = vmm::copy_memory_data(*template_->memory, "land-copy");
  ASSERT_TRUE(copy) << copy.error().message();
  std::vector<vmm::VmConfig> children = {world_->confined("landed1"), world_->confined("landed2")};
  auto made = io().run(world_->driver->prepare_fork_landing(
      *template_, std::move(copy).value(), world_->snapshots.path() / "landing", children));
  ASSERT_TRUE(made) << made.error().message();
  vmm::ForkLanding landing = std::move(made).value();
  ASSERT_EQ(landing.children.size(), 2u);
  // Waiting QEMUs have touched none of the file the fork will fill.
  EXPECT_TRUE(parent.fits_landing(landing));

  vmm::ForkSaveStats stats;
  auto saved = io().run(parent.save_fork_snapshot_into(landing, &stats));
  ASSERT_TRUE(saved) << saved.error().message();
  std::cout << "save_fork_snapshot_into: paused " << stats.paused.count() / 1000.0 << " ms, "
            << stats.private_pages << " private pages\n";
  EXPECT_TRUE(landing.filled);
  EXPECT_EQ(saved->dir, landing.snapshot.dir);
  ASSERT_TRUE(saved->memory && saved->memory->sealed());
  auto files = dir_entries(saved->dir);
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"disk.qcow2", "state"}));
  EXPECT_FALSE(parent.fits_landing(landing)) << "a landing is filled once";
  EXPECT_EQ(py(parent, "x = 100\nprint(x)"), "100\n");

  for (auto& child : landing.children) {
    auto finished = io().run(child->finish());
    ASSERT_TRUE(finished) << finished.error().message();
    vms.vms.push_back(std::move(finished).value());
  }
  // One more child restored the usual way from the filled snapshot.
  vms.vms.push_back(restore(*saved, "landed3"));
  ASSERT_TRUE(vms.vms[3]);
  expect_parent_state(*vms.vms[1], "41", "landed child 1");
  expect_parent_state(*vms.vms[2], "41", "landed child 2");
  expect_parent_state(*vms.vms[3], "41", "a child restored from the filled landing");
  for (int i = 1; i <= 3; ++i)
    EXPECT_EQ(sh(*vms.vms[i], "md5sum < /root/on-disk | cmp - /root/on-disk.md5 && echo same"),
              "same\n")
        << "child " << i;
  EXPECT_EQ(py(*vms.vms[1], "x = 1\nbig[0] = 9\nprint(x)"), "1\n");
  EXPECT_EQ(sh(*vms.vms[1], "echo landed1 > /root/fork-marker; cat /root/fork-marker"),
            "landed1\n");
  EXPECT_EQ(py(*vms.vms[2], "print(x, big[0])"), "41 7\n");
  EXPECT_EQ(sh(*vms.vms[2], "cat /root/fork-marker"), "parent-file\n");
  EXPECT_EQ(py(parent, "print(x, big[0])"), "100 7\n");

  // A parent whose disk grew since its restore (every pool sandbox's is, to
  // its quota) lands too: its child's disk is made that size.
  auto landing_of = [&](const std::string& dir, const std::string& child) {
    auto memory = vmm::copy_memory_data(*template_->memory, dir + "-copy");
    EXPECT_TRUE(memory) << memory.error().message();
    std::vector<vmm::VmConfig> configs = {world_->confined(child)};
    auto made = io().run(world_->driver->prepare_fork_landing(
        *template_, std::move(memory).value(), world_->snapshots.path() / dir, configs));
    EXPECT_TRUE(made) << made.error().message();
    return std::make_unique<vmm::ForkLanding>(std::move(made).value());
  };
  auto grown_landing = landing_of("landing2", "landed-grown");
  const std::uint64_t grown_bytes = std::uint64_t{4} << 30;
  auto grown = io().run(parent.grow_disk(grown_bytes));
  ASSERT_TRUE(grown) << grown.error().message();
  ASSERT_TRUE(parent.fits_landing(*grown_landing));
  auto saved_grown = io().run(parent.save_fork_snapshot_into(*grown_landing));
  ASSERT_TRUE(saved_grown) << saved_grown.error().message();
  auto finished = io().run(grown_landing->children[0]->finish());
  ASSERT_TRUE(finished) << finished.error().message();
  vms.vms.push_back(std::move(finished).value());
  EXPECT_EQ(sh(*vms.vms[4], "blockdev --getsize64 /dev/vda"), std::to_string(grown_bytes) + "\n");
  EXPECT_EQ(sh(*vms.vms[4], "md5sum < /root/on-disk | cmp - /root/on-disk.md5 && echo same"),
            "same\n");
  EXPECT_EQ(py(*vms.vms[4], "print(x)"), "100\n");

  // An unused landing goes with its QEMU and its files.
  auto unused = landing_of("landing3", "unused");
  const fs::path dir3 = unused->snapshot.dir;
  EXPECT_TRUE(fs::exists(dir3));
  // (Its QEMUs' state lives on the VMs' thread.)
  io().run([&]() -> asio::awaitable<int> {
    unused.reset();
    co_return 0;
  }());
  EXPECT_FALSE(fs::exists(dir3));
}

} // namespace
} // namespace vesicle::test
