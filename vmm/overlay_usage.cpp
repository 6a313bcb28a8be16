#include "vmm/overlay_usage.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <memory>
#include <string>

#include "common/unique_fd.hpp"

namespace vesicle::vmm {

namespace {

struct CloseDir {
  void operator()(DIR* dir) const { ::closedir(dir); }
};

// The name a /proc/<pid>/fd link points at, or "" when the descriptor is
// gone (closed since the directory was read) or is no path at all.
std::string link_target(int fd_dir, const char* name) {
  char target[4096];
  const ssize_t length = ::readlinkat(fd_dir, name, target, sizeof target);
  if (length <= 0 || static_cast<std::size_t>(length) >= sizeof target) return {};
  return std::string(target, static_cast<std::size_t>(length));
}

bool names_an_overlay(std::string_view target) {
  const std::string_view name = kOverlayFileName;
  return target.size() > name.size() && target.ends_with(name) &&
         target[target.size() - name.size() - 1] == '/';
}

// Whether descriptor `name` of `pid` is open for writing, by its fdinfo.
bool open_for_writing(pid_t pid, const char* name) {
  const std::string path = "/proc/" + std::to_string(pid) + "/fdinfo/" + name;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return false;
  char text[4096];
  const ssize_t length = ::read(fd.get(), text, sizeof text);
  if (length <= 0) return false;
  auto flags = fdinfo_flags(std::string_view(text, static_cast<std::size_t>(length)));
  return flags && (*flags & O_ACCMODE) != O_RDONLY;
}

} // namespace

std::optional<unsigned> fdinfo_flags(std::string_view fdinfo) {
  constexpr std::string_view kKey = "flags:";
  std::size_t at = 0;
  while (at < fdinfo.size()) {
    std::size_t end = fdinfo.find('\n', at);
    if (end == std::string_view::npos) end = fdinfo.size();
    std::string_view line = fdinfo.substr(at, end - at);
    at = end + 1;
    if (!line.starts_with(kKey)) continue;
    line.remove_prefix(kKey.size());
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t'))
      line.remove_prefix(1);
    unsigned flags = 0;
    auto [parsed_end, ec] = std::from_chars(line.data(), line.data() + line.size(), flags, 8);
    if (ec != std::errc{} || parsed_end == line.data()) return std::nullopt;
    return flags;
  }
  return std::nullopt;
}

Result<std::uint64_t> overlay_bytes_in_use(pid_t pid, int* fd_hint) {
  const std::string fds = "/proc/" + std::to_string(pid) + "/fd";
  if (pid <= 0) return make_error("find the VM's overlay", "no process", fds);
  UniqueFd fd_dir(::open(fds.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd_dir) return sys_error("open", fds);
  // Whether descriptor `name` is the overlay, and then its allocated bytes.
  auto measure = [&](const char* name) -> std::optional<Result<std::uint64_t>> {
    if (!names_an_overlay(link_target(fd_dir.get(), name))) return std::nullopt;
    if (!open_for_writing(pid, name)) return std::nullopt;
    // Through the link: the file QEMU holds, wherever its name now points.
    struct stat st {};
    if (::fstatat(fd_dir.get(), name, &st, 0) != 0) return sys_error("stat", fds + "/" + name);
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
  };
  if (fd_hint && *fd_hint >= 0) {
    if (auto found = measure(std::to_string(*fd_hint).c_str())) return std::move(*found);
  }
  // Its own descriptor: closedir closes it, and fd_dir stays the one
  // measure() reads through.
  UniqueFd listed(::dup(fd_dir.get()));
  if (!listed) return sys_error("dup", fds);
  std::unique_ptr<DIR, CloseDir> dir(::fdopendir(listed.get()));
  if (!dir) return sys_error("opendir", fds);
  (void)listed.release(); // the DIR owns it now
  while (const dirent* entry = ::readdir(dir.get())) {
    if (entry->d_name[0] == '.') continue;
    auto found = measure(entry->d_name);
    if (!found) continue;
    if (*found && fd_hint) *fd_hint = std::atoi(entry->d_name);
    return std::move(*found);
  }
  return make_error("find the VM's overlay",
                    std::string("the process holds no ") + kOverlayFileName +
                        " open for writing (not a VM's QEMU, or it is exiting)",
                    fds);
}

} // namespace vesicle::vmm
