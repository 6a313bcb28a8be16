// One suite's world for tests that boot real VMs through the QEMU driver:
// an io thread, a driver, fresh runtime and shm dirs, VM names with the
// suite's prefix, and the check that a test left nothing behind.
#pragma once

#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/vmm/test_support.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::test {

class VmWorld {
public:
  // `tag` names the suite: its VMs are vesicle-<tag><pid>-<name>, its dirs
  // vesicle-<tag>-XXXXXX.
  explicit VmWorld(const std::string& tag)
      : prefix_(tag + std::to_string(::getpid())),
        runtime(std::filesystem::temp_directory_path(), "vesicle-" + tag),
        shm("/dev/shm", "vesicle-" + tag) {}

  const std::string& prefix() const { return prefix_; }

  vmm::VmConfig config(const std::string& name) const {
    vmm::VmConfig c;
    c.id = prefix_ + "-" + name;
    c.images = vmm::GuestImages::in(images_dir());
    c.runtime_dir = runtime.path();
    c.shm_dir = shm.path();
    c.vcpus = 2;
    c.memory_mib = 512;
    c.boot_timeout = std::chrono::seconds(90);
    return c;
  }

  // QEMU processes of this suite still running.
  std::vector<pid_t> leftover_qemu() const { return processes_naming("vesicle-" + prefix_); }

  // Nothing of this run left: no QEMU, no memory file, no VM dir. A killed
  // QEMU is reaped at once; one told to quit may take a moment.
  void expect_clean(const char* when) const {
    // A destroyed VM is reaped and its files removed off the event loop
    // (Vm::destroy): give that a moment.
    for (int i = 0; i < 50 && !(leftover_qemu().empty() && dir_entries(shm.path()).empty() &&
                                dir_entries(runtime.path()).empty());
         ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(leftover_qemu().empty())
        << when << ": QEMU processes left: " << leftover_qemu().size();
    EXPECT_TRUE(dir_entries(shm.path()).empty()) << when << ": files left in the shm dir";
    EXPECT_TRUE(dir_entries(runtime.path()).empty()) << when << ": files left in the runtime dir";
  }

private:
  std::string prefix_;

public:
  IoThread io;
  TempDir runtime;
  TempDir shm;
  std::unique_ptr<vmm::Driver> driver = vmm::make_qemu_driver(io.executor());
};

// One VM shared by a suite's tests: its SetUpTestSuite boots it with
// boot_shared_vm, its TearDownTestSuite ends it with end_shared_vm.
// Boots `config` in `world`: sets `vm`, or `error` to why not.
inline void boot_shared_vm(VmWorld& world, vmm::VmConfig config, vmm::Vm*& vm,
                           std::string*& error) {
  auto booted = world.io.run(world.driver->boot(std::move(config)));
  if (booted) {
    vm = booted.value().release();
  } else {
    error = new std::string(booted.error().message());
  }
}

// Shuts the shared VM down the way a guest asks to (expecting a clean
// power-off), checks that the suite left nothing behind and frees the
// world. Nothing when there is no world (no images).
template <class World>
void end_shared_vm(World*& world, vmm::Vm*& vm, std::string*& error, const char* when) {
  if (!world) return;
  if (vm) {
    world->io.run(vm->shutdown(std::chrono::seconds(20)));
    const std::string how = world->io.run(vm->wait_exit());
    EXPECT_NE(how.find("powered off as asked"), std::string::npos) << how;
    world->io.call_void([&vm] {
      delete vm;
      vm = nullptr;
    });
  }
  world->expect_clean(when);
  delete world;
  world = nullptr;
  delete error;
  error = nullptr;
}

// Destroys VMs on the io thread, even when an assertion returns early.
struct VmList {
  IoThread& io;
  std::vector<std::unique_ptr<vmm::Vm>> vms;
  ~VmList() {
    io.call_void([this] { vms.clear(); });
  }
};

} // namespace vesicle::test
