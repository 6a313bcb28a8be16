// /init of the guest's initramfs: loads the virtio modules in dependency
// order, mounts the root disk, moves it to / and execs the agent as PID 1.
// Everything it needs is in the initramfs: /lib/modules/*.ko and
// /etc/modules.order (one module name a line, dependencies first).
//
// It prints what it does to the console so a failed boot explains itself in
// the VM's console log, then powers the machine off (QEMU exits) rather than
// hanging.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr const char* kAgentPath = "/usr/lib/vesicle/agent";
constexpr const char* kNewRoot = "/newroot";

void log_line(const std::string& line) {
  const std::string text = "vesicle-init: " + line + "\n";
  if (::write(STDERR_FILENO, text.data(), text.size()) < 0) {
    // Nowhere else to report it.
  }
}

[[noreturn]] void fail(const std::string& what) {
  log_line("FATAL: " + what + " (powering off)");
  ::sync();
  ::reboot(RB_POWER_OFF);
  std::_Exit(1);
}

std::string errno_text(const std::string& operation, const std::string& subject) {
  return operation + " " + subject + ": " + std::strerror(errno);
}

void mount_or_fail(const char* source, const char* target, const char* type, unsigned long flags,
                   const char* data = nullptr) {
  ::mkdir(target, 0755);
  if (::mount(source, target, type, flags, data) != 0 && errno != EBUSY) {
    fail(errno_text("mount", std::string(type ? type : "") + " on " + target));
  }
}

void load_module(const std::string& name) {
  const std::string path = "/lib/modules/" + name + ".ko";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(errno_text("open", path));
  const long rc = ::syscall(SYS_finit_module, fd, "", 0);
  const int err = errno;
  ::close(fd);
  // EEXIST: built into this kernel or already loaded, which is what we want.
  if (rc != 0 && err != EEXIST) {
    errno = err;
    fail(errno_text("load module", path));
  }
}

std::vector<std::string> read_module_order() {
  std::ifstream in("/etc/modules.order");
  if (!in) fail("cannot read /etc/modules.order");
  std::vector<std::string> names;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line[0] != '#') names.push_back(line);
  }
  return names;
}

struct KernelArgs {
  std::string root = "/dev/vda";
  std::string root_type = "ext4";
  bool read_only = false;
};

KernelArgs read_kernel_args() {
  KernelArgs args;
  std::ifstream in("/proc/cmdline");
  std::string word;
  while (in >> word) {
    if (word.rfind("root=", 0) == 0) args.root = word.substr(5);
    else if (word.rfind("rootfstype=", 0) == 0) args.root_type = word.substr(11);
    else if (word == "ro") args.read_only = true;
    else if (word == "rw") args.read_only = false;
  }
  return args;
}

// virtio_blk probes asynchronously; the node appears in devtmpfs shortly.
void wait_for_device(const std::string& path) {
  for (int attempt = 0; attempt < 1000; ++attempt) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  fail("root device " + path + " did not appear within 10 s (is the disk attached?)");
}

void reopen_console() {
  const int fd = ::open("/dev/console", O_RDWR | O_NOCTTY);
  if (fd < 0) return;
  for (int target = 0; target <= 2; ++target) ::dup2(fd, target);
  if (fd > 2) ::close(fd);
}

} // namespace

int main() {
  mount_or_fail("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  reopen_console();
  mount_or_fail("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);

  for (const std::string& name : read_module_order()) load_module(name);

  const KernelArgs args = read_kernel_args();
  wait_for_device(args.root);
  ::mkdir(kNewRoot, 0755);
  const unsigned long root_flags = args.read_only ? MS_RDONLY : 0;
  if (::mount(args.root.c_str(), kNewRoot, args.root_type.c_str(), root_flags, nullptr) != 0) {
    fail(errno_text("mount", args.root + " (" + args.root_type + ") on " + kNewRoot));
  }
  const std::string agent = std::string(kNewRoot) + kAgentPath;
  if (::access(agent.c_str(), X_OK) != 0) fail(errno_text("find the agent at", agent));

  // Hand the mounts over to the new root, then make it /.
  mount_or_fail("/dev", (std::string(kNewRoot) + "/dev").c_str(), nullptr, MS_MOVE);
  ::umount2("/proc", MNT_DETACH);
  if (::chdir(kNewRoot) != 0) fail(errno_text("chdir", kNewRoot));
  if (::mount(".", "/", nullptr, MS_MOVE, nullptr) != 0) fail(errno_text("move", kNewRoot));
  if (::chroot(".") != 0) fail(errno_text("chroot", kNewRoot));
  if (::chdir("/") != 0) fail(errno_text("chdir", "/"));

  char* const argv[] = {const_cast<char*>(kAgentPath), nullptr};
  char* const envp[] = {const_cast<char*>("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), nullptr};
  ::execve(kAgentPath, argv, envp);
  fail(errno_text("exec", kAgentPath));
}
