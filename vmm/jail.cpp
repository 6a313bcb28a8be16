#include "vmm/jail.hpp"

#include <elf.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "common/unique_fd.hpp"

namespace vesicle::vmm {

namespace fs = std::filesystem;

namespace {

// The jail's root: small, because it holds only directories, empty files
// and symlinks that other mounts cover.
constexpr const char* kRootOptions = "mode=0755,size=1m,nr_inodes=4096";
// The remount flags are the whole set (a bind remount does not keep the
// source's): only the runtime (binary, loader, libraries) may be executed;
// Jail::mounts hold data.
constexpr unsigned long kRuntime = MS_RDONLY | MS_NOSUID | MS_NODEV;
constexpr unsigned long kReadOnly = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
constexpr unsigned long kReadWrite = MS_NOSUID | MS_NODEV | MS_NOEXEC;
constexpr unsigned long kDevice = MS_NOSUID | MS_NOEXEC;

// The seccomp filter every jailed process starts with: it allows all but
// what QEMU never needs and an escape would (mounting, namespaces, tracing
// other processes, kernel modules, keys, BPF, perf). EPERM, not a kill, so
// a probe can name what was refused. QEMU adds its own, stricter filter
// (-sandbox) on top.
Result<std::vector<sock_filter>> build_seccomp_program() {
  scmp_filter_ctx ctx = ::seccomp_init(SCMP_ACT_ALLOW);
  if (!ctx) return make_error("seccomp_init", "libseccomp could not start a filter");
  struct Release {
    scmp_filter_ctx ctx;
    ~Release() { ::seccomp_release(ctx); }
  } release{ctx};
  auto fail = [](int rc, const char* what) { return sys_error("build seccomp filter", what, -rc); };

  const int denied[] = {
      SCMP_SYS(mount),
      SCMP_SYS(umount2),
      SCMP_SYS(pivot_root),
      SCMP_SYS(chroot),
      SCMP_SYS(unshare),
      SCMP_SYS(setns),
      SCMP_SYS(ptrace),
      SCMP_SYS(process_vm_readv),
      SCMP_SYS(process_vm_writev),
      SCMP_SYS(kexec_load),
      SCMP_SYS(kexec_file_load),
      SCMP_SYS(init_module),
      SCMP_SYS(finit_module),
      SCMP_SYS(delete_module),
      SCMP_SYS(bpf),
      SCMP_SYS(perf_event_open),
      SCMP_SYS(keyctl),
      SCMP_SYS(add_key),
      SCMP_SYS(request_key),
      SCMP_SYS(acct),
      SCMP_SYS(swapon),
      SCMP_SYS(swapoff),
      SCMP_SYS(reboot),
      SCMP_SYS(open_by_handle_at),
      SCMP_SYS(name_to_handle_at),
  };
  for (int syscall : denied) {
    if (int rc = ::seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), syscall, 0); rc < 0) {
      return fail(rc, ::seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, syscall));
    }
  }
  // clone's first argument carries the flags (x86_64): one rule per
  // namespace flag, since a rule compares a masked value for equality.
  const unsigned long namespaces[] = {CLONE_NEWNS,   CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
                                      CLONE_NEWUSER, CLONE_NEWPID,    CLONE_NEWNET};
  for (unsigned long flag : namespaces) {
    if (int rc = ::seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                                    SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag));
        rc < 0) {
      return fail(rc, "clone");
    }
  }
  // clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes
  // glibc fall back to clone, whose flags the rules above see.
  if (int rc = ::seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0); rc < 0) {
    return fail(rc, "clone3");
  }

  // libseccomp 2.5 exports only to a file descriptor.
  UniqueFd memory(::memfd_create("vesicle-seccomp", MFD_CLOEXEC));
  if (!memory) return sys_error("memfd_create", "seccomp program");
  if (int rc = ::seccomp_export_bpf(ctx, memory.get()); rc < 0) return fail(rc, "export");
  struct stat st {};
  if (::fstat(memory.get(), &st) != 0) return sys_error("fstat", "seccomp program");
  std::vector<sock_filter> program(static_cast<std::size_t>(st.st_size) / sizeof(sock_filter));
  const auto bytes = static_cast<ssize_t>(program.size() * sizeof(sock_filter));
  if (::pread(memory.get(), program.data(), bytes, 0) != bytes) {
    return sys_error("read", "seccomp program");
  }
  if (program.empty() || program.size() > BPF_MAXINSNS) {
    return make_error("build seccomp filter",
                      "unexpected program size " + std::to_string(program.size()));
  }
  return program;
}

const Result<std::vector<sock_filter>>& seccomp_program() {
  static const Result<std::vector<sock_filter>> program = build_seccomp_program();
  return program;
}

Result<int> last_capability() {
  std::ifstream in("/proc/sys/kernel/cap_last_cap");
  int last = -1;
  if (!(in >> last) || last < 0 || last > 63) {
    return make_error("read", "expected a capability number", "/proc/sys/kernel/cap_last_cap");
  }
  return last;
}

// The ELF interpreter (dynamic loader) `binary` names, or none for a static
// binary or anything not a 64-bit ELF file (a script's exec then fails in
// the jail, which has no shell).
Result<std::optional<fs::path>> elf_interpreter(const fs::path& binary) {
  std::ifstream in(binary, std::ios::binary);
  if (!in) return sys_error("open", binary.string());
  Elf64_Ehdr header{};
  if (!in.read(reinterpret_cast<char*>(&header), sizeof header) ||
      std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0 || header.e_ident[EI_CLASS] != ELFCLASS64) {
    return std::optional<fs::path>();
  }
  for (unsigned i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr program{};
    in.seekg(static_cast<std::streamoff>(header.e_phoff + i * std::uint64_t{header.e_phentsize}));
    if (!in.read(reinterpret_cast<char*>(&program), sizeof program)) break;
    if (program.p_type != PT_INTERP) continue;
    if (program.p_filesz == 0 || program.p_filesz > 4096) break;
    std::string path(program.p_filesz, '\0');
    in.seekg(static_cast<std::streamoff>(program.p_offset));
    if (!in.read(path.data(), static_cast<std::streamsize>(path.size()))) break;
    path.resize(std::strlen(path.c_str()));
    return std::optional<fs::path>(path);
  }
  return std::optional<fs::path>();
}

bool within(const fs::path& path, const fs::path& dir) {
  auto [end, _] = std::mismatch(dir.begin(), dir.end(), path.begin(), path.end());
  return end == dir.end();
}

std::string fd_name(int fd) {
  std::error_code ec;
  auto target = fs::read_symlink("/proc/self/fd/" + std::to_string(fd), ec);
  return ec ? "fd " + std::to_string(fd) : target.string();
}

} // namespace

std::vector<JailMount> qemu_runtime_mounts() {
  const fs::path firmware = "/usr/share/qemu";
  std::vector<JailMount> mounts{{firmware, firmware, true}};
  // Debian links some firmware from other packages' directories
  // (../seabios/bios.bin, /usr/lib/ipxe/qemu/...): those come too.
  std::set<fs::path> elsewhere;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(firmware, ec)) {
    if (!entry.is_symlink(ec)) continue;
    const fs::path real = fs::canonical(entry.path(), ec);
    if (ec || within(real, firmware)) continue;
    elsewhere.insert(real.parent_path());
  }
  for (const auto& dir : elsewhere)
    mounts.push_back({dir, dir, true});
  return mounts;
}

namespace detail {

// The jail's tree before it becomes steps: what is at each path inside the
// jail. Kept in path order, so a parent is always made before its children
// and a mount before the mounts nested in it.
class JailPlan::Builder {
public:
  // `source` on the host at `target` in the jail.
  Result<void> add_mount(const fs::path& source, const fs::path& target, unsigned long flags) {
    if (!target.is_absolute() || target != target.lexically_normal() || target == "/") {
      return Error::of(ErrorKind::invalid_argument,
                       "a jail mount target must be an absolute, normal path other than /",
                       target.string());
    }
    struct stat st {};
    if (::stat(source.c_str(), &st) != 0) return sys_error("jail mount source", source.string());
    const Kind kind = S_ISDIR(st.st_mode) ? Kind::bind_dir : Kind::bind_file;
    auto inside = make_parents(target);
    if (!inside) return std::move(inside).error();
    Node node{kind, source.string(), flags, inside.value()};
    if (inside.value()) {
      // A mount on a path inside another mount needs its mount point to
      // exist there already: the jail never writes into a host directory.
      struct stat there {};
      if (::stat(host_path(target).c_str(), &there) != 0 ||
          S_ISDIR(there.st_mode) != S_ISDIR(st.st_mode)) {
        return Error::of(ErrorKind::invalid_argument,
                         "a jail mount nested in another one needs a mount point of the same type "
                         "in the outer mount's source (" +
                             host_path(target).string() + ")",
                         target.string());
      }
    }
    return add(target, std::move(node));
  }

  // `host` at the same path in the jail, with each symlink on the way
  // recreated in the jail and followed.
  Result<void> mirror(const fs::path& host, unsigned long flags, int depth = 0) {
    if (depth > 40) return sys_error("resolve", host.string(), ELOOP);
    const fs::path path = host.lexically_normal();
    fs::path here = "/";
    for (auto part = std::next(path.begin()); part != path.end(); ++part) {
      const fs::path next = here / *part;
      if (const Node* bind = covering_bind(next); bind && bind->source == bind_target_.at(bind)) {
        return {}; // a directory bound at its own path already holds it
      }
      struct stat st {};
      if (::lstat(next.c_str(), &st) != 0) return sys_error("find", next.string());
      if (S_ISLNK(st.st_mode)) {
        std::error_code ec;
        const fs::path link = fs::read_symlink(next, ec);
        if (ec) return sys_error("readlink", next.string(), ec.value());
        auto parents = make_parents(next);
        if (!parents) return std::move(parents).error();
        if (auto added = add(next, Node{Kind::symlink, link.string(), 0, false}); !added)
          return added;
        fs::path rest = link.is_absolute() ? link : here / link;
        for (auto tail = std::next(part); tail != path.end(); ++tail)
          rest /= *tail;
        return mirror(rest, flags, depth + 1);
      }
      if (std::next(part) == path.end()) return add_mount(next, next, flags);
      here = next;
    }
    return {};
  }

  Result<void> add_dir(const fs::path& path) {
    auto inside = make_parents(path);
    if (!inside) return std::move(inside).error();
    return add(path, Node{Kind::dir, {}, 0, inside.value()});
  }

  // The steps that build the tree under `root` (the host mount point).
  void emit(const std::string& root, std::vector<Step>& steps) const {
    for (const auto& [path, node] : nodes_) {
      const std::string at = root + path.string();
      switch (node.kind) {
      case Kind::dir:
        if (!node.inside_bind)
          steps.push_back({Op::make_dir, at, {}, 0, 0, 0, "create directory", path});
        break;
      case Kind::symlink:
        steps.push_back({Op::make_symlink, at, node.source, 0, 0, 0, "create symlink",
                         path.string() + " -> " + node.source});
        break;
      case Kind::bind_dir:
      case Kind::bind_file: {
        if (!node.inside_bind) {
          steps.push_back({node.kind == Kind::bind_dir ? Op::make_dir : Op::make_file,
                           at,
                           {},
                           0,
                           0,
                           0,
                           "create mount point",
                           path});
        }
        const std::string subject =
            node.source == path.string() ? node.source : node.source + " on " + path.string();
        steps.push_back({Op::bind, at, node.source, 0, 0, 0, "bind-mount", subject});
        const bool read_only = (node.flags & MS_RDONLY) != 0;
        steps.push_back({Op::remount,
                         at,
                         {},
                         node.flags,
                         0,
                         0,
                         read_only ? "remount read-only" : "remount nosuid",
                         path});
        break;
      }
      }
    }
  }

private:
  enum class Kind { dir, symlink, bind_dir, bind_file };
  struct Node {
    Kind kind;
    std::string source; // bind source or symlink target
    unsigned long flags;
    bool inside_bind; // under another bind: its mount point already exists
    bool operator==(const Node&) const = default;
  };

  Result<void> add(const fs::path& path, Node node) {
    auto [it, inserted] = nodes_.emplace(path, node);
    if (inserted) {
      if (node.kind == Kind::bind_dir || node.kind == Kind::bind_file)
        bind_target_[&it->second] = path;
      return {};
    }
    if (it->second == node) return {};
    return Error::of(ErrorKind::invalid_argument,
                     "two different things are to be at the same path in the jail", path.string());
  }

  // Makes the directories above `path`; says whether `path` lies inside a
  // bind mount (whose source then provides it).
  Result<bool> make_parents(const fs::path& path) {
    fs::path here = "/";
    for (auto part = std::next(path.begin()); std::next(part) != path.end(); ++part) {
      here /= *part;
      auto it = nodes_.find(here);
      if (it == nodes_.end()) {
        nodes_.emplace(here, Node{Kind::dir, {}, 0, false});
        continue;
      }
      if (it->second.kind == Kind::bind_dir) return true;
      if (it->second.kind != Kind::dir) {
        return Error::of(ErrorKind::invalid_argument,
                         "a jail path passes through a file or symlink at " + here.string(),
                         path.string());
      }
    }
    return false;
  }

  const Node* covering_bind(const fs::path& path) const {
    for (const auto& [node, target] : bind_target_) {
      if (node->kind == Kind::bind_dir && within(path, target)) return node;
      if (target == path) return node;
    }
    return nullptr;
  }

  // Where a path inside a bind mount comes from on the host.
  fs::path host_path(const fs::path& path) const {
    const Node* bind = nullptr;
    fs::path best;
    for (const auto& [node, target] : bind_target_) {
      if (node->kind == Kind::bind_dir && within(path, target) && target != path &&
          target.string().size() > best.string().size()) {
        bind = node;
        best = target;
      }
    }
    return bind ? fs::path(bind->source) / path.lexically_relative(best) : path;
  }

  std::map<fs::path, Node> nodes_;
  std::map<const Node*, fs::path> bind_target_; // nodes_ never moves its elements
};

Result<JailPlan> JailPlan::prepare(const Jail& jail, const fs::path& binary) {
  auto invalid = [](std::string message, std::string subject) {
    return Error::of(ErrorKind::invalid_argument, std::move(message), std::move(subject));
  };
  if (jail.uid == 0 || jail.uid == static_cast<uid_t>(-1)) {
    return invalid("a jail's uid must be neither 0 nor -1", std::to_string(jail.uid));
  }
  if (jail.gid == 0 || jail.gid == static_cast<gid_t>(-1)) {
    return invalid("a jail's gid must be neither 0 nor -1", std::to_string(jail.gid));
  }
  const auto& program = seccomp_program();
  if (!program) return program.error();
  auto last_cap = last_capability();
  if (!last_cap) return std::move(last_cap).error();

  // The shared mount point: the jail's tmpfs covers it only in the child's
  // mount namespace.
  const std::string root = jail.mount_point.string();
  if (!jail.mount_point.is_absolute() || root == "/") {
    return invalid("the jail mount point must be an absolute path other than /", root);
  }
  if (::mkdir(root.c_str(), 0755) != 0 && errno != EEXIST) return sys_error("mkdir", root);

  Builder tree;
  // Directories first, so the files the runtime needs are found inside
  // them rather than bound one by one.
  auto interpreter = elf_interpreter(binary);
  if (!interpreter) return std::move(interpreter).error();
  if (interpreter.value()) {
    std::error_code ec;
    const fs::path real = fs::canonical(*interpreter.value(), ec);
    if (ec) return sys_error("find the ELF interpreter", interpreter.value()->string(), ec.value());
    if (auto r = tree.add_mount(real.parent_path(), real.parent_path(), kRuntime); !r)
      return std::move(r).error();
  }
  for (const auto& mount : jail.mounts) {
    if (auto r =
            tree.add_mount(mount.source, mount.target, mount.read_only ? kReadOnly : kReadWrite);
        !r) {
      return std::move(r).error();
    }
  }
  if (auto r = tree.mirror(binary, kRuntime); !r) return std::move(r).error();
  if (interpreter.value()) {
    if (auto r = tree.mirror(*interpreter.value(), kRuntime); !r) return std::move(r).error();
  }
  for (const auto& device : jail.devices) {
    struct stat st {};
    if (::stat(device.c_str(), &st) != 0) return sys_error("jail device", device.string());
    if (!S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode))
      return invalid("not a device node", device.string());
    if (auto r = tree.mirror(device, kDevice); !r) return std::move(r).error();
  }
  if (jail.mount_proc) {
    if (auto r = tree.add_dir("/proc"); !r) return std::move(r).error();
  }

  JailPlan plan;
  plan.filter_ = &program.value();
  auto& steps = plan.steps_;
  for (int fd : jail.cgroup_procs_fds)
    steps.push_back({Op::join_cgroup, {}, {}, 0, fd, 0, "join cgroup", fd_name(fd)});
  plan.cgroup_steps_ = steps.size();
  steps.push_back({Op::make_private, "/", {}, 0, 0, 0, "make the mount tree private", "/"});
  // Every mount the jail can write is noexec, but a memfd is on no mount:
  // a process could write a program into one and run it (fexecve), which
  // the jail-escape probe did. vm.memfd_noexec=2 makes the kernel refuse
  // executable memfds. It is per PID namespace (the writer's: here the
  // jail's new one, so the host keeps its setting), inherited and never
  // lowered by children; written through the host's /proc while that is
  // still mounted. Kernels before 6.3 have no such setting (the step is
  // skipped there): QEMU's own filter (-sandbox spawn=deny: execve,
  // execveat) is then all that stops it.
  steps.push_back({Op::memfd_noexec,
                   "/proc/sys/vm/memfd_noexec",
                   {},
                   0,
                   0,
                   0,
                   "forbid executable memfds",
                   "/proc/sys/vm/memfd_noexec"});
  steps.push_back({Op::mount_root, root, kRootOptions, MS_NOSUID | MS_NODEV | MS_NOEXEC, 0, 0,
                   "mount the jail's tmpfs", root});
  tree.emit(root, steps);
  // The skeleton is done: nobody, root included, adds to it from inside.
  steps.push_back({Op::remount,
                   root,
                   {},
                   MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   0,
                   0,
                   "remount read-only",
                   "/"});
  steps.push_back({Op::pivot_root, root, {}, 0, 0, 0, "pivot_root", root});
  if (jail.mount_proc)
    steps.push_back({Op::mount_proc, "/proc", {}, 0, 0, 0, "mount procfs", "/proc"});
  steps.push_back({Op::set_rlimit, {}, {}, 0, RLIMIT_CORE, 0, "set RLIMIT_CORE", "0"});
  steps.push_back({Op::set_rlimit,
                   {},
                   {},
                   0,
                   RLIMIT_NOFILE,
                   jail.nofile,
                   "set RLIMIT_NOFILE",
                   std::to_string(jail.nofile)});
  steps.push_back({Op::set_rlimit,
                   {},
                   {},
                   0,
                   RLIMIT_NPROC,
                   jail.nproc,
                   "set RLIMIT_NPROC",
                   std::to_string(jail.nproc)});
  steps.push_back({Op::drop_bounding_set,
                   {},
                   {},
                   0,
                   last_cap.value(),
                   0,
                   "drop the capability bounding set",
                   {}});
  steps.push_back({Op::clear_ambient, {}, {}, 0, 0, 0, "clear ambient capabilities", {}});
  steps.push_back({Op::set_groups, {}, {}, 0, 0, 0, "drop supplementary groups", {}});
  steps.push_back(
      {Op::set_gid, {}, {}, 0, static_cast<int>(jail.gid), 0, "set gid", std::to_string(jail.gid)});
  steps.push_back(
      {Op::set_uid, {}, {}, 0, static_cast<int>(jail.uid), 0, "set uid", std::to_string(jail.uid)});
  steps.push_back({Op::clear_caps, {}, {}, 0, 0, 0, "clear capabilities", {}});
  steps.push_back(
      {Op::check_caps, {}, {}, 0, last_cap.value(), 0, "check that no capability is left", {}});
  steps.push_back({Op::no_new_privs, {}, {}, 0, 0, 0, "set no_new_privs", {}});
  steps.push_back({Op::load_seccomp, {}, {}, 0, 0, 0, "load the seccomp filter", {}});
  return plan;
}

unsigned long JailPlan::clone_flags() {
  return CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET;
}

Error JailPlan::step_error(int step, int err) const {
  if (step < 0 || static_cast<std::size_t>(step) >= steps_.size()) {
    return sys_error("jail", "step " + std::to_string(step), err);
  }
  return sys_error(steps_[step].what, steps_[step].subject, err).with_context("jail");
}

int JailPlan::join_cgroups() const noexcept {
  return run_steps(0, cgroup_steps_);
}

int JailPlan::enter() const noexcept {
  return run_steps(cgroup_steps_, steps_.size());
}

int JailPlan::run_steps(std::size_t first, std::size_t end) const noexcept {
  for (std::size_t i = first; i < end; ++i) {
    if (run(steps_[i]) != 0) return static_cast<int>(i);
  }
  return -1;
}

// Runs in the child between clone and exec: raw syscalls only. glibc's
// setresuid and friends would try to signal the parent's other threads,
// which do not exist here.
int JailPlan::run(const Step& step) const noexcept {
  const char* path = step.path.c_str();
  switch (step.op) {
  case Op::join_cgroup:
    return ::write(step.number, "0", 1) == 1 ? 0 : -1;
  case Op::make_private:
    return ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr);
  case Op::memfd_noexec: {
    const int fd = ::open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 0 : -1;
    const bool written = ::write(fd, "2", 1) == 1;
    ::close(fd);
    return written ? 0 : -1;
  }
  case Op::mount_root:
    return ::mount("tmpfs", path, "tmpfs", step.flags, step.source.c_str());
  case Op::make_dir:
    return ::mkdir(path, 0755);
  case Op::make_file: {
    const int fd = ::open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    ::close(fd);
    return 0;
  }
  case Op::make_symlink:
    return ::symlink(step.source.c_str(), path);
  case Op::bind:
    return ::mount(step.source.c_str(), path, nullptr, MS_BIND, nullptr);
  case Op::remount:
    return ::mount(nullptr, path, nullptr, MS_BIND | MS_REMOUNT | step.flags, nullptr);
  case Op::pivot_root:
    // pivot_root(".", ".") stacks the old root on the new one; detaching it
    // leaves only the new root (no directory for the old one needed).
    if (::chdir(path) != 0) return -1;
    if (::syscall(SYS_pivot_root, ".", ".") != 0) return -1;
    if (::umount2(".", MNT_DETACH) != 0) return -1;
    return ::chdir("/");
  case Op::mount_proc:
    // subset=pid: the processes only, no /proc/sys, /proc/kcore and the like.
    return ::mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "subset=pid");
  case Op::set_rlimit: {
    const struct rlimit limit { step.limit, step.limit };
    return static_cast<int>(::syscall(SYS_prlimit64, 0, step.number, &limit, nullptr));
  }
  case Op::drop_bounding_set:
    for (int cap = 0; cap <= step.number; ++cap) {
      if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    }
    return 0;
  case Op::clear_ambient:
    return ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  case Op::set_groups:
    return static_cast<int>(::syscall(SYS_setgroups, 0, nullptr));
  case Op::set_gid:
    return static_cast<int>(::syscall(SYS_setresgid, step.number, step.number, step.number));
  case Op::set_uid:
    return static_cast<int>(::syscall(SYS_setresuid, step.number, step.number, step.number));
  case Op::clear_caps: {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
    return static_cast<int>(::syscall(SYS_capset, &header, data));
  }
  case Op::check_caps: {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3]{};
    if (::syscall(SYS_capget, &header, data) != 0) return -1;
    for (const auto& word : data) {
      if (word.effective || word.permitted || word.inheritable) {
        errno = EPERM;
        return -1;
      }
    }
    for (int cap = 0; cap <= step.number; ++cap) {
      if (::prctl(PR_CAPBSET_READ, cap, 0, 0, 0) > 0 ||
          ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0) > 0) {
        errno = EPERM;
        return -1;
      }
    }
    return 0;
  }
  case Op::no_new_privs:
    return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  case Op::load_seccomp: {
    sock_fprog program{static_cast<unsigned short>(filter_->size()),
                       const_cast<sock_filter*>(filter_->data())};
    return static_cast<int>(::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program));
  }
  }
  errno = EINVAL;
  return -1;
}

} // namespace detail
} // namespace vesicle::vmm
