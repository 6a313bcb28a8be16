// The VMM driver interface: what hostd needs from a hypervisor. QEMU
// (qemu.hpp) implements it first; a Firecracker or Cloud Hypervisor driver
// would implement the same.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <utility> // before Boost 1.74's awaitable.hpp, which uses std::exchange without it

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "actors/vmm/agent_client.hpp"
#include "common/result.hpp"

namespace vesicle::vmm {

enum class Accel { kvm, tcg };
const char* to_string(Accel accel);
// KVM when /dev/kvm exists and can be opened read-write, TCG otherwise.
Accel detect_accel();

// The three files a guest boots from (see images/).
struct GuestImages {
  std::filesystem::path kernel;    // vmlinuz
  std::filesystem::path initrd;    // initrd.img
  std::filesystem::path base_disk; // rootfs.ext4, raw, never written
  // images_dir/{vmlinuz,initrd.img,rootfs.ext4}
  static GuestImages in(const std::filesystem::path& images_dir);
  Result<void> check() const; // every file exists and is readable
};

// The guest's network interface: a tap device the bridge manager opened in
// the sandbox's network slot (actors/net). QEMU inherits the fd; the caller
// keeps it open until boot() returns.
struct NetworkAttachment {
  int tap_fd = -1;
  std::string mac = "02:76:73:00:00:02"; // the same in every slot: each has its own namespace
};

struct VmConfig {
  std::string id; // [a-z0-9-]+; names the VM's files and QEMU's -name
  GuestImages images;
  // Everything the VM owns on disk lives in runtime_dir/id (sockets, the
  // disk overlay, logs); its memory in shm_dir/vesicle-<id>.mem.
  std::filesystem::path runtime_dir = "/var/lib/vesicle/vms";
  std::filesystem::path shm_dir = "/dev/shm";
  unsigned vcpus = 2;
  unsigned memory_mib = 1024;
  std::chrono::milliseconds boot_timeout{90'000};
  std::string qemu_binary = "qemu-system-x86_64";
  unsigned tcg_translation_cache_mib = 64; // -accel tcg,tb-size=
  // Without one the guest has no network device at all.
  std::optional<NetworkAttachment> network;
};

class Vm {
public:
  virtual ~Vm() = default;
  virtual const std::string& id() const = 0;
  virtual int qemu_pid() const = 0;
  virtual AgentClient& agent() = 0;
  // True until the VM's process has exited.
  virtual bool running() const = 0;
  // Completes when the VM's process has exited, for any reason (several
  // waiters may wait); the string says how (exit status or signal, and the
  // tail of the guest console when it died unexpectedly).
  virtual asio::awaitable<std::string> wait_exit() = 0;
  // Asks the guest to power off, kills it after `grace`, removes its files.
  virtual asio::awaitable<void> shutdown(std::chrono::milliseconds grace) = 0;
  // Kills the VM now and removes its files. Safe to call more than once.
  virtual void destroy() = 0;
};

class Driver {
public:
  virtual ~Driver() = default;
  virtual Accel accel() const = 0;
  // Starts a VM and returns once its agent answers a ping. On any failure
  // nothing is left behind (process, socket, overlay, memory file) and the
  // Error says what went wrong, with the guest console's tail if it booted.
  virtual asio::awaitable<Result<std::unique_ptr<Vm>>> boot(VmConfig config) = 0;
};

// The QEMU driver. Its VMs and their agent clients live on `executor`: call
// them, and destroy them, only from coroutines or handlers running there,
// and destroy every Vm before the io_context (a Vm's sockets belong to it).
// QEMU is spawned from the thread that runs boot() with PR_SET_PDEATHSIG,
// so a hostd killed with SIGKILL takes its VMs along; that thread must
// therefore live as long as the VMs it started (an io_context thread does).
//
// How a VM ends: QEMU runs with -no-reboot -no-shutdown, so a guest that
// powers off, resets or panics (panic=-1) stops and QEMU reports SHUTDOWN
// over QMP; the driver then reads the console ring buffer for wait_exit()'s
// account, lets QEMU exit, and removes the VM's files. Agent calls pending at
// that moment fail with the channel-closed Error (is_channel_closed()).
std::unique_ptr<Driver> make_qemu_driver(asio::any_io_executor executor);

} // namespace vesicle::vmm
