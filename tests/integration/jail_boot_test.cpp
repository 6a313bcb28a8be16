// A jailed QEMU (vmm/jail.hpp) boots the real guest to its agent and runs
// Python: the jail's root (runtime, firmware, images, /dev/null, the VM's
// directory) is enough for a whole VM, not only for QEMU's start. Boots one
// VM under TCG: a few seconds.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/local/stream_protocol.hpp>

#include "tests/vmm/test_support.hpp"
#include "vmm/jail.hpp"
#include "vmm/process.hpp"
#include "vmm/qemu.hpp"
#include "vmm/uid_pool.hpp"
#include "vmm/vmm.hpp"

namespace vesicle {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::IoThread;
using test::read_file;
using test::TempDir;
using vmm::detail::Process;
using vmm::detail::SpawnOptions;

TEST(JailBootTest, AJailedQemuBootsTheGuestAndRunsPython) {
  if (::geteuid() != 0) GTEST_SKIP() << "the jail needs root";
  const fs::path images = test::images_dir();
  if (!vmm::GuestImages::in(images).check().ok()) {
    GTEST_SKIP() << "no guest images in " << images << " (images/build.sh, or VESICLE_IMAGES_DIR)";
  }
  TempDir locks;
  auto pool = vmm::UidPool::create(2'200'000'000u + static_cast<uid_t>(::getpid() % 100'000), 1,
                                   locks.path());
  ASSERT_TRUE(pool) << pool.error().message();
  auto lease = pool->acquire();
  ASSERT_TRUE(lease) << lease.error().message();
  IoThread io;
  TempDir vm_dir, logs;
  ASSERT_EQ(::chown(vm_dir.path().c_str(), lease->uid(), lease->gid()), 0);

  // The overlay names its base by the path QEMU will see in the jail.
  const fs::path base = images / "rootfs.ext4";
  SpawnOptions overlay;
  overlay.argv = {"qemu-img",
                  "create",
                  "-q",
                  "-f",
                  "qcow2",
                  "-F",
                  "raw",
                  "-b",
                  fs::absolute(base).string(),
                  (vm_dir.path() / "disk.qcow2").string()};
  overlay.output = logs.path() / "qemu-img.log";
  auto made = io.run(vmm::detail::run_helper(io.executor(), overlay));
  ASSERT_TRUE(made) << made.error().message();
  ASSERT_EQ(::chown((vm_dir.path() / "disk.qcow2").c_str(), lease->uid(), lease->gid()), 0);

  vmm::Jail jail;
  jail.uid = lease->uid();
  jail.gid = lease->gid();
  jail.mounts = vmm::qemu_runtime_mounts();
  jail.mounts.push_back({vm_dir.path(), "/vm", false});
  // The images are often symlinks into a cache: each file is bound from
  // where it really is to the path QEMU is given.
  for (const char* name : {"rootfs.ext4", "vmlinuz", "initrd.img"}) {
    jail.mounts.push_back({fs::canonical(images / name), fs::absolute(images / name), true});
  }
  // QEMU's block layer probes for OFD locks by opening /dev/null.
  jail.devices = {"/dev/null"};
  SpawnOptions options;
  options.argv = {
      "qemu-system-x86_64",
      "-M",
      "microvm,x-option-roms=off,rtc=on,memory-backend=mem",
      "-nodefaults",
      "-no-user-config",
      "-nographic",
      "-no-reboot",
      "-no-shutdown",
      "-accel",
      "tcg,tb-size=64",
      "-cpu",
      "max",
      "-m",
      "256",
      "-object",
      "memory-backend-file,id=mem,size=256M,mem-path=/vm/ram,share=on",
      "-kernel",
      fs::absolute(images / "vmlinuz").string(),
      "-initrd",
      fs::absolute(images / "initrd.img").string(),
      "-append",
      vmm::qemu::kernel_cmdline(vmm::Accel::tcg, vmm::qemu::host_tsc_khz()),
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
      "file,id=console,path=/vm/console.log",
      "-serial",
      "chardev:console",
      "-sandbox",
      "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
  };
  options.output = logs.path() / "qemu.log";
  options.jail = jail;
  auto spawned = io.call([&] { return Process::spawn(io.executor(), options); });
  ASSERT_TRUE(spawned) << spawned.error().message();
  std::unique_ptr<Process> qemu = std::move(spawned.value());
  struct Reap {
    IoThread& io;
    std::unique_ptr<Process>& qemu;
    ~Reap() {
      io.call_void([this] { qemu.reset(); });
    }
  } reap{io, qemu};
  auto why = [&] {
    return "QEMU log: " + read_file(options.output) +
           "\nconsole: " + vmm::detail::file_tail(vm_dir.path() / "console.log", 2000);
  };

  const fs::path agent_socket = vm_dir.path() / "agent.sock";
  for (int i = 0; i < 500 && !fs::exists(agent_socket); ++i)
    std::this_thread::sleep_for(20ms);
  ASSERT_TRUE(fs::exists(agent_socket)) << why();
  auto client = io.call([&] {
    boost::asio::local::stream_protocol::socket socket(io.io());
    socket.connect(boost::asio::local::stream_protocol::endpoint(agent_socket.string()));
    return vmm::make_agent_client(std::move(socket));
  });
  auto ready = io.run(client->wait_ready(120s, 250ms));
  ASSERT_TRUE(ready) << ready.error().message() << "\n" << why();
  auto reply = io.run(test::python(*client, "print(6 * 7)"));
  ASSERT_TRUE(reply.exit) << reply.exit.error().message();
  EXPECT_EQ(reply.output.out, "42\n");
  // The guest ran, and QEMU was never given more than the jail.
  const auto status = read_file("/proc/" + std::to_string(qemu->pid()) + "/status");
  EXPECT_NE(status.find("Seccomp:\t2"), std::string::npos);
  EXPECT_NE(status.find("CapEff:\t0000000000000000"), std::string::npos);
  io.call_void([&] { client.reset(); });
}

} // namespace
} // namespace vesicle
