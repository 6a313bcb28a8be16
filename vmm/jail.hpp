// The room a confined process (QEMU, or a test probe) runs in: its own
// unprivileged uid and gid, no capabilities, new mount, PID, IPC, UTS and
// network namespaces, a root holding only what it was given, rlimits, a
// seccomp filter and cgroup leaves. Process::spawn (vmm/process.hpp) applies
// it between clone and exec; this file turns a Jail into the checklist the
// child runs.
#pragma once

#include <linux/filter.h>
#include <sys/resource.h>
#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/result.hpp"

namespace vesicle::vmm {

struct JailMount {
  std::filesystem::path source; // on the host; a file or a directory
  std::filesystem::path target; // absolute, inside the jail
  bool read_only = true;        // always nosuid, nodev and noexec (data, not programs)
};

struct Jail {
  uid_t uid = 0; // never 0; the gid is the only group (no supplementary ones)
  gid_t gid = 0;
  std::vector<JailMount> mounts;
  // Device nodes (/dev/null, /dev/urandom, /dev/kvm) bound read-write at the
  // same path in the jail.
  std::vector<std::filesystem::path> devices;
  // A fresh procfs of the jail's PID namespace at /proc, process entries
  // only (subset=pid): QEMU re-opens passed memfds as /proc/self/fd/N.
  bool mount_proc = true;
  // Open cgroup.procs files (O_WRONLY); the child writes "0" to each,
  // joining those cgroups before anything else. The caller keeps them open
  // until spawn returns.
  std::vector<int> cgroup_procs_fds;
  // The child's whole environment ("NAME=value"); the parent's is not
  // passed, so none of hostd's settings reach a jailed process.
  std::vector<std::string> environment;
  rlim_t nofile = 1024;
  // Counts every thread of the uid: QEMU has a main thread, RCU, one per
  // vCPU, I/O threads and a worker pool of up to 64.
  rlim_t nproc = 256;
  // An existing host directory the jail's tmpfs root is mounted on, inside
  // the child's own mount namespace only: the host sees it empty, and nothing
  // per jail is left on the host. Shared by every jail; created if missing.
  std::filesystem::path mount_point = "/run/vesicle-jail";
};

// What QEMU needs in its jail besides its binary and libraries (which
// Process::spawn adds by itself): its firmware (/usr/share/qemu, and the
// directories its symlinks point into).
std::vector<JailMount> qemu_runtime_mounts();

namespace detail {

// A Jail compiled, in the parent, into steps the child runs with nothing
// but raw syscalls: every string, the seccomp program and the capability
// count are prepared here, because the parent is multithreaded and the
// child may not allocate. The runtime of `binary` is added: the binary, its
// ELF interpreter and the interpreter's library directory, read-only at the
// same paths (with the host's symlinks to them recreated) — and nothing else,
// so there is no shell in the jail. Only those may be executed: a binary
// inside one of Jail::mounts (noexec) cannot run.
class JailPlan {
public:
  static Result<JailPlan> prepare(const Jail& jail, const std::filesystem::path& binary);

  // The namespaces to clone into.
  static unsigned long clone_flags();

  // In the child, right after clone: joins the cgroups (by the descriptors
  // in Jail::cgroup_procs_fds, which must still be open). Async-signal-safe.
  // Returns -1 when done, or the index of the step that failed (errno says
  // why).
  int join_cgroups() const noexcept;
  // Then: builds the root and pivots into it, sets the rlimits, drops to the
  // jail's ids and no capabilities, sets no_new_privs, loads the seccomp
  // filter. Async-signal-safe; returns as join_cgroups does.
  int enter() const noexcept;

  // "jail: bind-mount /x on /y: No such file or directory".
  Error step_error(int step, int err) const;

private:
  enum class Op {
    join_cgroup,
    make_private,
    memfd_noexec,
    mount_root,
    make_dir,
    make_file,
    make_symlink,
    bind,
    remount,
    pivot_root,
    mount_proc,
    set_rlimit,
    drop_bounding_set,
    clear_ambient,
    set_groups,
    set_gid,
    set_uid,
    clear_caps,
    check_caps,
    no_new_privs,
    load_seccomp,
  };
  struct Step {
    Op op;
    std::string path;   // absolute on the host (before pivot_root: under the mount point)
    std::string source; // bind source, symlink target, or mount options
    unsigned long flags = 0;
    int number = 0; // fd, rlimit resource, id, or the last capability
    rlim_t limit = 0;
    std::string what;    // the operation, for errors
    std::string subject; // what it was about, in the jail's terms
  };
  class Builder;

  int run(const Step& step) const noexcept;

  int run_steps(std::size_t first, std::size_t end) const noexcept;

  std::vector<Step> steps_;
  std::size_t cgroup_steps_ = 0;                     // the first steps_ join cgroups
  const std::vector<sock_filter>* filter_ = nullptr; // built once per process
};

} // namespace detail
} // namespace vesicle::vmm
