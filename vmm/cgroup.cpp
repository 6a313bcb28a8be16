#include "vmm/cgroup.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <set>
#include <system_error>
#include <thread>
#include <utility>

#include "common/log.hpp"

namespace vesicle::vmm::cgroup {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kControllers = "+memory +pids +cpu";

// ---- files ----------------------------------------------------------------

// O_TRUNC is a no-op on cgroupfs and makes a test tree's plain file hold
// exactly the value. No O_CREAT: a control file that is not there is an
// error, in a test tree as on the real thing.
Result<void> write_file(const fs::path& path, std::string_view value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
  if (!fd) return sys_error("open", path.string());
  ssize_t written = ::write(fd.get(), value.data(), value.size());
  if (written < 0)
    return sys_error("write", path.string()).with_context("writing " + std::string(value));
  if (static_cast<std::size_t>(written) != value.size())
    return make_error("write", "short write of " + std::string(value), path.string());
  return {};
}

Result<std::string> read_file(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", path.string());
  std::string text;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error("read", path.string());
    }
    if (n == 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
  }
  return text;
}

bool path_exists(const fs::path& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::optional<std::uint64_t> parse_u64(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' '))
    text.remove_suffix(1);
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

Result<std::uint64_t> read_u64(const fs::path& path) {
  auto text = read_file(path);
  if (!text) return std::move(text).error();
  auto value = parse_u64(*text);
  if (!value) return make_error("parse", "not a number: " + *text, path.string());
  return *value;
}

// The value of `key` in a "key value" per line file (memory.events,
// memory.oom_control); nullopt when the key is absent.
Result<std::optional<std::uint64_t>> read_keyed(const fs::path& path, std::string_view key) {
  auto text = read_file(path);
  if (!text) return std::move(text).error();
  std::string_view rest = *text;
  while (!rest.empty()) {
    auto eol = rest.find('\n');
    std::string_view line = rest.substr(0, eol);
    rest = eol == std::string_view::npos ? std::string_view{} : rest.substr(eol + 1);
    if (line.size() > key.size() && line.substr(0, key.size()) == key && line[key.size()] == ' ') {
      auto value = parse_u64(line.substr(key.size() + 1));
      if (!value) return make_error("parse", "bad line: " + std::string(line), path.string());
      return std::optional<std::uint64_t>(*value);
    }
  }
  return std::optional<std::uint64_t>{};
}

Result<std::vector<pid_t>> read_procs(const fs::path& dir) {
  auto text = read_file(dir / "cgroup.procs");
  if (!text) return std::move(text).error();
  std::vector<pid_t> pids;
  std::string_view rest = *text;
  while (!rest.empty()) {
    auto eol = rest.find('\n');
    std::string_view line = rest.substr(0, eol);
    rest = eol == std::string_view::npos ? std::string_view{} : rest.substr(eol + 1);
    if (line.empty()) continue;
    auto pid = parse_u64(line);
    if (!pid)
      return make_error("parse", "bad pid: " + std::string(line), (dir / "cgroup.procs").string());
    pids.push_back(static_cast<pid_t>(*pid));
  }
  return pids;
}

Result<std::vector<pid_t>> kill_procs(const fs::path& dir) {
  auto pids = read_procs(dir);
  if (!pids) return std::move(pids).error();
  std::vector<pid_t> killed;
  for (pid_t pid : *pids) {
    // ESRCH: it exited between the read and the kill.
    if (::kill(pid, SIGKILL) == 0)
      killed.push_back(pid);
    else if (errno != ESRCH)
      return sys_error("kill", std::to_string(pid));
  }
  return killed;
}

// rmdir, retrying EBUSY: the kernel drops a dead process from its cgroup only
// when it has torn its memory down, a few ms after the kill (longer for a
// large guest), and never blocking long: 1+2+...+64 ms.
Result<void> remove_dir(const DirOps& ops, const fs::path& dir) {
  auto delay = std::chrono::milliseconds(1);
  for (int attempt = 0;; ++attempt) {
    auto removed = ops.remove(dir);
    if (removed || removed.error().errno_value == ENOENT) return {};
    if (removed.error().errno_value != EBUSY)
      return std::move(removed).error().with_context("removing cgroup " + dir.string());
    if (attempt == 7) {
      Error busy = std::move(removed).error();
      busy.detail = "processes are still in it 127 ms on; kill them (Leaf::kill_all) and retry";
      return std::move(busy).with_context("removing cgroup " + dir.string());
    }
    std::this_thread::sleep_for(delay);
    delay *= 2;
  }
}

// A directory made if missing (our root, <own>/hostd).
Result<void> ensure_dir(const DirOps& ops, const fs::path& dir) {
  auto made = ops.make(dir);
  if (!made && made.error().errno_value != EEXIST)
    return std::move(made).error().with_context("creating cgroup " + dir.string());
  return {};
}

Result<void> check_name(const std::string& name, std::string_view what) {
  const bool ok =
      !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '_';
      });
  if (!ok)
    return Error::of(ErrorKind::invalid_argument,
                     std::string(what) + " must be 1 to 64 of [A-Za-z0-9_-], got '" + name + "'",
                     name);
  return {};
}

std::string mib_text(std::uint64_t bytes) {
  if (bytes % (1 << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return text;
}

// ---- mountinfo --------------------------------------------------------------

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_octal(std::string_view text) {
  auto octal = [](char c) { return c >= '0' && c <= '7'; };
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 3 < text.size() && octal(text[i + 1]) && octal(text[i + 2]) &&
        octal(text[i + 3])) {
      out += static_cast<char>((text[i + 1] - '0') * 64 + (text[i + 2] - '0') * 8 +
                               (text[i + 3] - '0'));
      i += 3;
      continue;
    }
    out += text[i];
  }
  return out;
}

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  while (true) {
    auto at = text.find(separator);
    parts.push_back(text.substr(0, at));
    if (at == std::string_view::npos) break;
    text.remove_prefix(at + 1);
  }
  return parts;
}

} // namespace

const char* to_string(Version version) {
  return version == Version::v1 ? "v1" : "v2";
}

Result<Hierarchy> parse_mountinfo(std::string_view mountinfo) {
  std::optional<fs::path> v1_memory, v1_pids, v1_cpu, unified;
  for (std::string_view line : split(mountinfo, '\n')) {
    if (line.empty()) continue;
    // "36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory"
    auto dash = line.find(" - ");
    if (dash == std::string_view::npos) continue;
    std::vector<std::string_view> before;
    for (auto field : split(line.substr(0, dash), ' '))
      if (!field.empty()) before.push_back(field);
    std::vector<std::string_view> after;
    for (auto field : split(line.substr(dash + 3), ' '))
      if (!field.empty()) after.push_back(field);
    if (before.size() < 5 || after.size() < 3) continue;
    const fs::path mount_point = unescape_octal(before[4]);
    const std::string_view type = after[0];
    if (type == "cgroup2") {
      if (!unified || mount_point == "/sys/fs/cgroup") unified = mount_point;
    } else if (type == "cgroup") {
      for (auto option : split(after[2], ',')) {
        if (option == "memory" && !v1_memory) v1_memory = mount_point;
        if (option == "pids" && !v1_pids) v1_pids = mount_point;
        if (option == "cpu" && !v1_cpu) v1_cpu = mount_point;
      }
    }
  }
  if (v1_memory || v1_pids || v1_cpu) {
    std::string missing;
    if (!v1_memory) missing += " memory";
    if (!v1_pids) missing += " pids";
    if (!v1_cpu) missing += " cpu";
    if (!missing.empty())
      return make_error("find cgroup controllers",
                        "cgroup v1 is mounted without these controllers:" + missing +
                            "; mount each (mount -t cgroup -o <name> cgroup "
                            "/sys/fs/cgroup/<name>) or boot with cgroup v2 only "
                            "(systemd.unified_cgroup_hierarchy=1)",
                        "/proc/self/mountinfo");
    return Hierarchy{Version::v1, *v1_memory, *v1_pids, *v1_cpu};
  }
  if (unified) return Hierarchy{Version::v2, *unified, *unified, *unified};
  return make_error("find cgroup controllers",
                    "no cgroup filesystem is mounted; mount cgroup v2 "
                    "(mount -t cgroup2 none /sys/fs/cgroup)",
                    "/proc/self/mountinfo");
}

std::string parse_own_cgroup_v2(std::string_view proc_self_cgroup) {
  for (std::string_view line : split(proc_self_cgroup, '\n'))
    if (line.substr(0, 3) == "0::" && line.size() > 3) return std::string(line.substr(3));
  return "/";
}

Limits Limits::for_qemu(unsigned memory_mib, unsigned vcpus, unsigned tcg_tb_mib) {
  Limits limits;
  limits.guest_ram_bytes = std::uint64_t{memory_mib} << 20;
  limits.vmm_overhead_bytes = kQemuOverheadBytes + (std::uint64_t{tcg_tb_mib} << 20);
  limits.vcpus = std::max(vcpus, 1u);
  return limits;
}

std::string oom_message(const Limits& limits) {
  return "oom: the sandbox's VM used its whole memory limit (" + mib_text(limits.memory_bytes()) +
         ": " + mib_text(limits.guest_ram_bytes) + " guest RAM + " +
         mib_text(limits.vmm_overhead_bytes) + " VMM overhead" +
         (limits.shared_fault_bytes > 0
              ? " + " + mib_text(limits.shared_fault_bytes) + " for pages of its snapshot"
              : std::string()) +
         ") and was killed by the kernel";
}

DirOps cgroupfs_dir_ops() {
  return DirOps{
      [](const fs::path& dir) -> Result<void> {
        if (::mkdir(dir.c_str(), 0755) != 0) return sys_error("mkdir", dir.string());
        return {};
      },
      [](const fs::path& dir) -> Result<void> {
        if (::rmdir(dir.c_str()) != 0) return sys_error("rmdir", dir.string());
        return {};
      },
  };
}

// ---- Leaf ------------------------------------------------------------------

Leaf::Leaf(Leaf&& other) noexcept
    : version_(other.version_), name_(std::move(other.name_)), limits_(other.limits_),
      dir_ops_(std::move(other.dir_ops_)), dirs_(std::exchange(other.dirs_, {})) {}

Leaf& Leaf::operator=(Leaf&& other) noexcept {
  if (this != &other) {
    if (!removed()) (void)remove();
    version_ = other.version_;
    name_ = std::move(other.name_);
    limits_ = other.limits_;
    dir_ops_ = std::move(other.dir_ops_);
    dirs_ = std::exchange(other.dirs_, {});
  }
  return *this;
}

Leaf::~Leaf() {
  if (removed()) return;
  auto gone = remove();
  if (!gone)
    log::warn("a cgroup leaf could not be removed; the next start's sweep removes it",
              {{"sandbox", name_}, {"error", gone.error().message()}});
}

Result<std::vector<UniqueFd>> Leaf::open_procs() const {
  std::vector<UniqueFd> fds;
  for (const auto& dir : dirs_) {
    const fs::path path = dir / "cgroup.procs";
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) return sys_error("open", path.string()).with_context("opening cgroup " + name_);
    fds.push_back(std::move(fd));
  }
  return fds;
}

Result<std::uint64_t> Leaf::oom_kills() const {
  if (dirs_.empty()) return make_error("read oom kills", "the leaf was removed", name_);
  const fs::path& memory = dirs_.front();
  if (version_ == Version::v2) {
    auto kills = read_keyed(memory / "memory.events", "oom_kill");
    if (!kills) return std::move(kills).error();
    return kills->value_or(0);
  }
  auto kills = read_keyed(memory / "memory.oom_control", "oom_kill");
  if (!kills) return std::move(kills).error();
  if (*kills) return **kills;
  // Kernels before 4.13 do not count kills; a hit limit is the nearest sign.
  return read_u64(memory / "memory.failcnt");
}

Result<std::uint64_t> Leaf::memory_peak() const {
  if (dirs_.empty()) return make_error("read memory peak", "the leaf was removed", name_);
  return read_u64(dirs_.front() /
                  (version_ == Version::v2 ? "memory.peak" : "memory.max_usage_in_bytes"));
}

Result<std::optional<std::string>> Leaf::oom_report() const {
  auto kills = oom_kills();
  if (!kills) return std::move(kills).error();
  if (*kills == 0) return std::optional<std::string>{};
  return std::optional<std::string>(oom_message(limits_));
}

Result<std::vector<pid_t>> Leaf::pids() const {
  if (dirs_.empty()) return std::vector<pid_t>{};
  return read_procs(dirs_.front());
}

Result<std::vector<pid_t>> Leaf::kill_all() const {
  std::vector<pid_t> killed;
  for (const auto& dir : dirs_) {
    auto some = kill_procs(dir);
    if (!some) return std::move(some).error();
    for (pid_t pid : *some)
      if (std::find(killed.begin(), killed.end(), pid) == killed.end()) killed.push_back(pid);
  }
  return killed;
}

Result<void> Leaf::rename(const std::string& new_name) {
  if (auto ok = check_name(new_name, "a cgroup leaf's name"); !ok) return ok;
  std::vector<fs::path> renamed;
  for (const auto& dir : dirs_) {
    const fs::path to = dir.parent_path() / new_name;
    if (::rename(dir.c_str(), to.c_str()) != 0) {
      Error error = sys_error("rename", dir.string() + " to " + to.string());
      // Back, so the leaf keeps one name in every controller.
      for (std::size_t i = 0; i < renamed.size(); ++i)
        (void)::rename(renamed[i].c_str(), dirs_[i].c_str());
      return std::move(error).with_context("renaming cgroup " + name_ + " to " + new_name);
    }
    renamed.push_back(to);
  }
  dirs_ = std::move(renamed);
  name_ = new_name;
  return {};
}

Result<void> Leaf::remove() {
  // The same processes keep every controller's directory: after one stays
  // busy, the others are left for the next try without waiting on each.
  while (!dirs_.empty()) {
    auto gone = remove_dir(dir_ops_, dirs_.front());
    if (!gone) return gone;
    dirs_.erase(dirs_.begin());
  }
  return {};
}

// ---- Tree ------------------------------------------------------------------

Result<Tree> Tree::open_host(std::string parent) {
  auto mountinfo = read_file("/proc/self/mountinfo");
  if (!mountinfo) return std::move(mountinfo).error();
  auto hierarchy = parse_mountinfo(*mountinfo);
  if (!hierarchy) return std::move(hierarchy).error();
  Options options;
  options.parent = std::move(parent);
  if (hierarchy->version == Version::v2) {
    auto own = read_file("/proc/self/cgroup");
    if (!own) return std::move(own).error();
    options.own_cgroup = parse_own_cgroup_v2(*own);
  }
  return open(*hierarchy, std::move(options));
}

Result<Tree> Tree::open(const Hierarchy& hierarchy, Options options) {
  if (auto ok = check_name(options.parent, "the cgroup parent's name"); !ok) return ok.error();
  const DirOps& ops = options.dir_ops;
  if (hierarchy.version == Version::v1) {
    std::vector<fs::path> roots;
    for (const auto& mount : {hierarchy.memory, hierarchy.pids, hierarchy.cpu}) {
      fs::path root = mount / options.parent;
      if (auto made = ensure_dir(ops, root); !made) return std::move(made).error();
      roots.push_back(std::move(root));
    }
    if (!path_exists(roots.front() / "memory.memsw.limit_in_bytes"))
      log::warn("the kernel does not account swap (no memory.memsw.limit_in_bytes): a VM's "
                "memory can be swapped out past its limit; boot with swapaccount=1 to forbid it",
                {{"cgroup", roots.front().string()}});
    return Tree(Version::v1, std::move(roots), std::move(options.dir_ops));
  }

  // v2. Under systemd (Delegate=yes) hostd's own cgroup is ours to divide;
  // it may hold no process once it hands controllers down, so hostd moves
  // into <own>/hostd. A restarted hostd that finds itself there already
  // divides <own> again.
  fs::path own = hierarchy.memory;
  std::string relative = options.own_cgroup;
  while (!relative.empty() && relative.front() == '/')
    relative.erase(0, 1);
  if (!relative.empty()) {
    own /= relative;
    if (own.filename() == "hostd") own = own.parent_path();
  }
  auto available = read_file(own / "cgroup.controllers");
  if (!available)
    return std::move(available).error().with_context("reading the controllers hostd may use");
  std::set<std::string_view> names;
  for (auto name : split(*available, ' ')) {
    while (!name.empty() && name.back() == '\n')
      name.remove_suffix(1);
    names.insert(name);
  }
  for (std::string_view needed : {"memory", "pids", "cpu"}) {
    if (!names.count(needed))
      return make_error("check cgroup controllers",
                        "controller " + std::string(needed) +
                            " is not available to hostd's cgroup" + " (cgroup.controllers: " +
                            *available + "); under systemd, set Delegate=yes in hostd's unit",
                        own.string());
  }
  if (!relative.empty()) {
    const fs::path self_leaf = own / "hostd";
    if (auto made = ensure_dir(ops, self_leaf); !made) return std::move(made).error();
    const pid_t self = options.self ? options.self : ::getpid();
    if (auto moved = write_file(self_leaf / "cgroup.procs", std::to_string(self)); !moved)
      return std::move(moved).error().with_context("moving hostd into " + self_leaf.string());
  }
  if (auto enabled = write_file(own / "cgroup.subtree_control", kControllers); !enabled)
    return std::move(enabled).error().with_context("enabling controllers for " + own.string() +
                                                   "'s children (is a process still in it?)");
  fs::path root = own / options.parent;
  if (auto made = ensure_dir(ops, root); !made) return std::move(made).error();
  if (auto enabled = write_file(root / "cgroup.subtree_control", kControllers); !enabled)
    return std::move(enabled).error();
  if (!path_exists(root / "memory.swap.max"))
    log::warn("the kernel does not account swap (no memory.swap.max): a VM's memory can be "
              "swapped out past its limit; boot with swapaccount=1 to forbid it",
              {{"cgroup", root.string()}});
  return Tree(Version::v2, {std::move(root)}, std::move(options.dir_ops));
}

Result<std::uint64_t> Tree::memory_in_use(const std::string& name) const {
  if (auto ok = check_name(name, "a cgroup leaf's name (the sandbox id)"); !ok) return ok.error();
  const fs::path memory = roots_.front() / name;
  auto usage =
      read_u64(memory / (version_ == Version::v2 ? "memory.current" : "memory.usage_in_bytes"));
  if (!usage) return std::move(usage).error();
  std::uint64_t cache = 0;
  for (const char* key : {"active_file", "inactive_file"}) {
    auto value = read_keyed(memory / "memory.stat", key);
    if (!value) return std::move(value).error();
    cache += value->value_or(0);
  }
  return *usage > cache ? *usage - cache : 0;
}

Result<Leaf> Tree::create(const std::string& name, const Limits& limits) const {
  if (auto ok = check_name(name, "a cgroup leaf's name (the sandbox id)"); !ok) return ok.error();
  Leaf leaf(version_, name, limits, dir_ops_);
  auto context = [&](Error error) {
    return std::move(error).with_context("creating cgroup leaf " + name);
  };
  // Each directory joins the leaf as it is made, so a failure half-way
  // removes what was made (the leaf's destructor).
  for (const auto& root : roots_) {
    const fs::path dir = root / name;
    auto made = dir_ops_.make(dir);
    if (!made) {
      if (made.error().errno_value == EEXIST)
        return context(make_error("mkdir",
                                  "a cgroup of that name is already there: a leftover, which "
                                  "hostd's start-up sweep removes",
                                  dir.string()));
      return context(std::move(made).error());
    }
    leaf.dirs_.push_back(dir);
  }
  const std::string memory = std::to_string(limits.memory_bytes());
  const std::string pids = std::to_string(limits.pids_max);
  const std::string quota = std::to_string(std::uint64_t{limits.vcpus} * kCpuPeriodUs);
  const std::string period = std::to_string(kCpuPeriodUs);
  auto write = [&](const fs::path& dir, const char* file, const std::string& value) {
    return write_file(dir / file, value);
  };
  // A missing swap file means the kernel does not account swap (noted once
  // at open); there is then nothing to write.
  auto write_swap = [&](const fs::path& dir, const char* file,
                        const std::string& value) -> Result<void> {
    if (!path_exists(dir / file)) return {};
    return write(dir, file, value);
  };
  std::vector<Result<void>> written;
  if (version_ == Version::v1) {
    const fs::path& m = leaf.dirs_[0];
    const fs::path& p = leaf.dirs_[1];
    const fs::path& c = leaf.dirs_[2];
    // memsw (memory + swap) may not be set below the memory limit, so after it.
    written = {write(m, "memory.limit_in_bytes", memory),
               write_swap(m, "memory.memsw.limit_in_bytes", memory),
               write(m, "memory.swappiness", "0"),
               write(p, "pids.max", pids),
               write(c, "cpu.cfs_period_us", period),
               write(c, "cpu.cfs_quota_us", quota)};
  } else {
    const fs::path& dir = leaf.dirs_[0];
    written = {write(dir, "memory.max", memory), write_swap(dir, "memory.swap.max", "0"),
               write(dir, "pids.max", pids), write(dir, "cpu.max", quota + " " + period)};
  }
  for (auto& result : written)
    if (!result) return context(std::move(result).error());
  return leaf;
}

SweepReport Tree::sweep() const {
  SweepReport report;
  std::set<std::string> names;
  for (const auto& root : roots_) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(root, ec))
      if (entry.is_directory(ec)) names.insert(entry.path().filename().string());
  }
  for (const auto& name : names) {
    Leaf leaf(version_, name, Limits{}, dir_ops_);
    for (const auto& root : roots_)
      if (path_exists(root / name)) leaf.dirs_.push_back(root / name);
    auto killed = leaf.kill_all();
    if (killed) report.killed.insert(report.killed.end(), killed->begin(), killed->end());
    auto gone = leaf.remove();
    if (gone) {
      report.removed.push_back(name);
    } else {
      report.failed.push_back(std::move(gone).error());
      // Left for the next sweep: not the destructor's to retry.
      leaf.dirs_.clear();
    }
  }
  return report;
}

Result<void> Tree::remove_roots() const {
  for (const auto& root : roots_)
    if (auto gone = remove_dir(dir_ops_, root); !gone) return gone;
  return {};
}

} // namespace vesicle::vmm::cgroup
