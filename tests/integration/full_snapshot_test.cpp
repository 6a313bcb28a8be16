// Full-RAM snapshots with real VMs: Vm::save_full into a dir on a real disk
// and Driver::restore_full, from a booted VM (RAM share=on) and from a VM
// restored share=off from a template snapshot (the pool's case), plus the
// refusals: damaged snapshots, a save into a dir that cannot be made.
//
// Every VM id starts with "fs<pid>-" so the leak check can tell this run's
// QEMU processes from anyone else's.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include <gtest/gtest.h>

#include "common/unique_fd.hpp"
#include "tests/integration/qemu_proc.hpp"
#include "tests/vmm/test_support.hpp"
#include "tests/vmm/vm_world.hpp"
#include "vmm/snapshot.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::test {
namespace {

using namespace std::chrono_literals;
using vmm::Vm;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// Bytes a file really holds (its allocated blocks).
// The VM's RAM: the memfd hostd passed to its QEMU (named after the VM),
// reached through the QEMU's descriptor table.
fs::path ram_of(const Vm& vm) {
  const fs::path fds = "/proc/" + std::to_string(vm.qemu_pid()) + "/fd";
  std::error_code ec;
  for (const auto& fd : fs::directory_iterator(fds, ec))
    if (fs::read_symlink(fd.path(), ec).string().rfind("/memfd:vesicle-" + vm.id(), 0) == 0)
      return fd.path();
  ADD_FAILURE() << "QEMU of " << vm.id() << " holds no memfd:vesicle-" << vm.id();
  return {};
}

std::uint64_t allocated_bytes(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// One suite's world (tests/vmm/vm_world.hpp), VMs named fs<pid>-*.
struct World : VmWorld {
  World() : VmWorld("fs") {}
  // Full snapshots go to a real disk (/var/tmp is not tmpfs here).
  TempDir spaces{"/var/tmp", "vesicle-fs-spaces"};
  TempDir templates{fs::temp_directory_path(), "vesicle-fs-tpl"};
  TempDir template_shm{"/dev/shm", "vesicle-fs-tpl"};
};

class FullSnapshots : public ::testing::Test {
protected:
  void SetUp() override {
    if (!vmm::GuestImages::in(images_dir()).check().ok()) {
      GTEST_SKIP() << "no guest images in " << images_dir()
                   << " (build them with images/build.sh, or set VESICLE_IMAGES_DIR)";
    }
    world_ = std::make_unique<World>();
  }
  void TearDown() override {
    if (world_) world_->expect_clean("at the end of the test");
    world_.reset();
  }
  IoThread& io() { return world_->io; }

  // Sets the state the save must keep: a REPL variable, a background
  // process, a file. Returns the background process's pid.
  std::string leave_state(vmm::AgentClient& agent, const std::string& marker) {
    auto set = io().run(python(agent, "x = 41"));
    EXPECT_TRUE(set.exit && set.exit->exit_code() == 0);
    auto sleeper = io().run(bash(agent, "sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"));
    EXPECT_TRUE(sleeper.exit && sleeper.exit->exit_code() == 0);
    auto wrote = io().run(bash(agent, "echo " + marker + " > /root/full-marker"));
    EXPECT_TRUE(wrote.exit && wrote.exit->exit_code() == 0);
    std::string pid = sleeper.output.out;
    while (!pid.empty() && pid.back() == '\n')
      pid.pop_back();
    EXPECT_FALSE(pid.empty());
    return pid;
  }

  void expect_state(vmm::AgentClient& agent, const std::string& pid, const std::string& marker) {
    auto x = io().run(python(agent, "print(x)"));
    ASSERT_TRUE(x.exit) << x.exit.error().message();
    EXPECT_EQ(x.output.out, "41\n");
    auto alive = io().run(bash(agent, "kill -0 " + pid + " && cat /proc/" + pid + "/cmdline"));
    ASSERT_TRUE(alive.exit) << alive.exit.error().message();
    EXPECT_EQ(alive.exit->exit_code(), 0) << "the background sleep (pid " << pid << ") is gone";
    EXPECT_EQ(alive.output.out, std::string("sleep\0"
                                            "1000\0",
                                            11));
    auto file = io().run(bash(agent, "cat /root/full-marker"));
    ASSERT_TRUE(file.exit) << file.exit.error().message();
    EXPECT_EQ(file.output.out, marker + "\n");
  }

  // save_full, with the checks every successful save must pass.
  vmm::Snapshot save_full(Vm& vm, const fs::path& dir) {
    const auto started = Clock::now();
    auto saved = io().run(vm.save_full(dir));
    const double took = ms_since(started);
    EXPECT_TRUE(saved) << saved.error().message();
    if (!saved) return {};
    std::cout << "save_full of " << vm.id() << " took " << took << " ms, state "
              << (fs::file_size(dir / "state") >> 20) << " MiB\n";
    EXPECT_FALSE(vm.running());
    const std::string how = io().run(vm.wait_exit());
    EXPECT_NE(how.find("saved"), std::string::npos) << how;
    EXPECT_TRUE(saved->full_ram);
    EXPECT_TRUE(saved->memory_file.empty());
    auto entries = dir_entries(dir);
    std::sort(entries.begin(), entries.end());
    EXPECT_EQ(entries, (std::vector<std::string>{"disk.qcow2", "manifest", "state"}));
    EXPECT_TRUE(fs::exists(dir.parent_path())); // no staging dir left beside it
    for (const auto& entry : fs::directory_iterator(dir.parent_path()))
      EXPECT_EQ(entry.path().filename().string().find(".partial"), std::string::npos);
    return *saved;
  }

  std::unique_ptr<Vm> restore_full(const vmm::Snapshot& snapshot, const std::string& name) {
    const auto started = Clock::now();
    auto vm = io().run(world_->driver->restore_full(snapshot, world_->config(name)));
    EXPECT_TRUE(vm) << vm.error().message();
    if (!vm) return nullptr;
    // Under QEMU's seccomp filter, and holding no fd of the state it loaded.
    EXPECT_EQ(seccomp_mode(vm.value()->qemu_pid()), 2);
    EXPECT_EQ(open_files_naming(vm.value()->qemu_pid(), snapshot.device_state().string()),
              std::vector<std::string>{});
    const auto memory = ram_of(*vm.value());
    std::cout << "restore_full as " << name << " took " << ms_since(started)
              << " ms; its fresh RAM file holds " << (allocated_bytes(memory) >> 20)
              << " MiB of 512\n";
    EXPECT_LT(allocated_bytes(memory), 400ull << 20) << "the fresh RAM file stayed sparse";
    return std::move(vm).value();
  }

  std::unique_ptr<World> world_;
};

TEST_F(FullSnapshots, BootedVmSavesInFullAndResumesWithItsState) {
  VmList vms{io(), {}};
  auto booted = io().run(world_->driver->boot(world_->config("a")));
  ASSERT_TRUE(booted) << booted.error().message();
  vms.vms.push_back(std::move(booted).value());
  EXPECT_EQ(seccomp_mode(vms.vms[0]->qemu_pid()), 2);
  const std::string pid = leave_state(vms.vms[0]->agent(), "from-a");
  ASSERT_FALSE(pid.empty());

  // A save that cannot make its dir leaves the VM running and answering.
  auto refused =
      io().run(vms.vms[0]->save_full(world_->spaces.path() / "no-such-parent" / "space"));
  ASSERT_FALSE(refused);
  std::cout << "save_full into a missing parent: " << refused.error().message() << "\n";
  EXPECT_NE(refused.error().message().find("parent must exist"), std::string::npos)
      << refused.error().message();
  EXPECT_TRUE(vms.vms[0]->running());
  expect_state(vms.vms[0]->agent(), pid, "from-a");
  // So does one into an existing dir.
  auto exists = io().run(vms.vms[0]->save_full(world_->spaces.path()));
  ASSERT_FALSE(exists);
  EXPECT_EQ(exists.error().errno_value, EEXIST);
  EXPECT_TRUE(vms.vms[0]->running());

  // A disk that fills up mid-save (a 16 MiB tmpfs; the state is ~90 MiB):
  // the VM was already paused and its RAM scanned. It resumes with its
  // disk, its state, and its RAM file as sparse as before.
  {
    const fs::path small = world_->spaces.path() / "small";
    fs::create_directory(small);
    const std::string mount =
        "mount -t tmpfs -o size=16m vesicle-fs-small '" + small.string() + "'";
    if (std::system(mount.c_str()) != 0) {
      std::cout << "cannot mount a small tmpfs (not root?): the disk-full case is skipped\n";
    } else {
      struct Unmount {
        fs::path path;
        ~Unmount() { std::system(("umount '" + path.string() + "'").c_str()); }
      } unmount{small};
      const fs::path ram = ram_of(*vms.vms[0]);
      const auto ram_before = allocated_bytes(ram);
      const int qemu = vms.vms[0]->qemu_pid();
      const auto fds_before = open_files(qemu).size();
      auto full = io().run(vms.vms[0]->save_full(small / "space"));
      ASSERT_FALSE(full);
      // The state file QEMU was writing (now unlinked) is closed, not kept.
      EXPECT_EQ(open_files_naming(qemu, small.string()), std::vector<std::string>{});
      EXPECT_EQ(open_files(qemu).size(), fds_before);
      std::cout << "save_full onto a full disk: " << full.error().message() << "\n";
      EXPECT_NE(full.error().message().find("the VM was resumed"), std::string::npos)
          << full.error().message();
      EXPECT_TRUE(dir_entries(small).empty()) << "nothing left on the full disk";
      EXPECT_TRUE(vms.vms[0]->running());
      expect_state(vms.vms[0]->agent(), pid, "from-a");
      const auto ram_after = allocated_bytes(ram);
      std::cout << "the VM's RAM file: " << (ram_before >> 20) << " MiB before the failed save, "
                << (ram_after >> 20) << " MiB after\n";
      EXPECT_LT(ram_after, ram_before + (32ull << 20)) << "the scan's pages were given back";
    }
  }

  const fs::path space = world_->spaces.path() / "space-a";
  const vmm::Snapshot saved = save_full(*vms.vms[0], space);
  ASSERT_TRUE(saved.full_ram);
  world_->expect_clean("after save_full"); // no QEMU, no RAM file, no runtime dir

  auto opened = vmm::open_snapshot(space);
  ASSERT_TRUE(opened) << opened.error().message();
  EXPECT_TRUE(opened->full_ram);
  EXPECT_EQ(opened->disk, space / "disk.qcow2");
  EXPECT_EQ(opened->memory_mib, 512u);
  // A full snapshot is not a template.
  auto wrong = io().run(world_->driver->restore(*opened, world_->config("wrong")));
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message().find("restore_full"), std::string::npos)
      << wrong.error().message();

  // Damaged copies are refused before anything runs.
  {
    const fs::path copy = world_->spaces.path() / "copy-truncated";
    fs::copy(space, copy);
    ASSERT_EQ(::truncate((copy / "state").c_str(), fs::file_size(copy / "state") - 4096), 0);
    auto bad = vmm::open_snapshot(copy);
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message().find("truncated"), std::string::npos) << bad.error().message();
    EXPECT_NE(bad.error().message().find("device state"), std::string::npos)
        << bad.error().message();
    fs::remove_all(copy);
  }
  {
    const fs::path copy = world_->spaces.path() / "copy-flipped";
    fs::copy(space, copy);
    {
      UniqueFd fd(::open((copy / "state").c_str(), O_RDWR | O_CLOEXEC));
      ASSERT_TRUE(fd);
      const off_t at = static_cast<off_t>(fs::file_size(copy / "state") / 2);
      char byte = 0;
      ASSERT_EQ(::pread(fd.get(), &byte, 1, at), 1);
      byte ^= 0x10;
      ASSERT_EQ(::pwrite(fd.get(), &byte, 1, at), 1);
    }
    auto bad = vmm::open_snapshot(copy);
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message().find("sha256"), std::string::npos) << bad.error().message();
    // restore_full does not re-hash; QEMU refuses what does not parse, and
    // the disk goes back. (A flipped RAM byte would load: open_snapshot is
    // the check.) Cut the state in half so the load fails for sure.
    write_file(copy / "state",
               read_file(copy / "state").substr(0, fs::file_size(copy / "state") / 2));
    vmm::Snapshot damaged = *opened;
    damaged.dir = copy;
    damaged.disk = copy / "disk.qcow2";
    const std::string disk_sum = sha256_hex(read_file(damaged.disk));
    auto failed = io().run(world_->driver->restore_full(damaged, world_->config("damaged")));
    ASSERT_FALSE(failed);
    std::cout << "restore_full of a cut state: " << failed.error().message().substr(0, 300) << "\n";
    ASSERT_TRUE(fs::exists(damaged.disk)) << "the disk was put back";
    EXPECT_EQ(sha256_hex(read_file(damaged.disk)), disk_sum);
    world_->expect_clean("after a failed restore_full");
    fs::remove_all(copy);
  }
  // A network mismatch is refused before the disk moves.
  {
    vmm::VmConfig with_network = world_->config("net");
    with_network.network = vmm::NetworkAttachment{};
    auto refused_net = io().run(world_->driver->restore_full(*opened, with_network));
    ASSERT_FALSE(refused_net);
    EXPECT_NE(refused_net.error().message().find("restore without one"), std::string::npos)
        << refused_net.error().message();
    EXPECT_TRUE(vmm::open_snapshot(space)) << "the snapshot is intact";
  }

  // Resumed: same REPL, same process, same file.
  vms.vms.push_back(restore_full(*opened, "b"));
  ASSERT_TRUE(vms.vms[1]);
  expect_state(vms.vms[1]->agent(), pid, "from-a");
  // The snapshot was spent: its disk is the new VM's now.
  EXPECT_FALSE(fs::exists(space / "disk.qcow2"));
  auto spent = vmm::open_snapshot(space);
  ASSERT_FALSE(spent);
  EXPECT_NE(spent.error().message().find("disk is missing"), std::string::npos)
      << spent.error().message();
  fs::remove_all(space);

  // Its RAM is a share=on file of its own: the fast save works, and that
  // template restores.
  auto tpl = io().run(vms.vms[1]->save_snapshot(world_->templates.path() / "tpl",
                                                world_->template_shm.path() / "tpl.mem"));
  ASSERT_TRUE(tpl) << tpl.error().message();
  auto opened_tpl = vmm::open_snapshot(tpl->dir);
  ASSERT_TRUE(opened_tpl) << opened_tpl.error().message();
  auto restored = io().run(world_->driver->restore(*opened_tpl, world_->config("c")));
  ASSERT_TRUE(restored) << restored.error().message();
  vms.vms.push_back(std::move(restored).value());
  expect_state(vms.vms[2]->agent(), pid, "from-a");

  // The pool's case: a VM restored share=off saves in full and resumes.
  // The migration reads every page of the template it maps, which faults
  // the template's holes in as zero pages; the template is a sealed memfd
  // now, which cannot be punched again, so it grows, once, at most to its
  // full size (the price of sealing: printed, and bounded here).
  auto wrote = io().run(bash(vms.vms[2]->agent(), "echo from-c > /root/full-marker; sync"));
  ASSERT_TRUE(wrote.exit && wrote.exit->exit_code() == 0);
  ASSERT_TRUE(opened_tpl->memory);
  const fs::path template_memory = opened_tpl->memory->path();
  const auto template_before = allocated_bytes(template_memory);
  const fs::path space_c = world_->spaces.path() / "space-c";
  const vmm::Snapshot saved_c = save_full(*vms.vms[2], space_c);
  ASSERT_TRUE(saved_c.full_ram);
  const auto template_after = allocated_bytes(template_memory);
  std::cout << "template RAM file: " << (template_before >> 20) << " MiB allocated before the "
            << "share=off VM's save_full, " << (template_after >> 20) << " MiB after\n";
  EXPECT_LE(template_after, 512ull << 20) << "the template grew past its size";
  EXPECT_TRUE(vmm::open_snapshot(tpl->dir)) << "the template is intact";

  vms.vms.push_back(restore_full(saved_c, "d"));
  ASSERT_TRUE(vms.vms[3]);
  expect_state(vms.vms[3]->agent(), pid, "from-c");
  // And the resumed VM can be saved in full once more.
  const vmm::Snapshot again = save_full(*vms.vms[3], world_->spaces.path() / "space-d");
  ASSERT_TRUE(again.full_ram);
  vms.vms.push_back(restore_full(again, "e"));
  ASSERT_TRUE(vms.vms[4]);
  expect_state(vms.vms[4]->agent(), pid, "from-c");

  for (auto& vm : vms.vms) {
    if (vm && vm->running()) io().run(vm->shutdown(20s));
  }
  io().call_void([&vms] { vms.vms.clear(); });
}

} // namespace
} // namespace vesicle::test
