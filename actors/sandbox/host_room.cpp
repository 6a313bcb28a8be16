#include "actors/sandbox/host_room.hpp"

#include <sys/statvfs.h>

#include <cerrno>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <string_view>

namespace vesicle {

namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;

// "MemAvailable:   12345678 kB" → MiB; nullopt if the line is missing.
std::optional<std::uint64_t> mem_available_mib(std::istream& in) {
  std::string line;
  constexpr std::string_view kKey = "MemAvailable:";
  while (std::getline(in, line)) {
    if (line.compare(0, kKey.size(), kKey) != 0) continue;
    std::string_view rest(line);
    rest.remove_prefix(kKey.size());
    while (!rest.empty() && rest.front() == ' ')
      rest.remove_prefix(1);
    std::uint64_t kib = 0;
    auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), kib);
    if (ec != std::errc{} || end == rest.data()) return std::nullopt;
    return kib / 1024;
  }
  return std::nullopt;
}

std::uint64_t saturating_sub(std::uint64_t a, std::uint64_t b) {
  return a > b ? a - b : 0;
}

} // namespace

Result<HostFigures> read_host_figures(const HostRoomSettings& settings) {
  HostFigures figures;
  std::ifstream meminfo(settings.meminfo);
  if (!meminfo) return sys_error("open", settings.meminfo.string());
  auto available = mem_available_mib(meminfo);
  if (!available)
    return make_error("read host memory", "no MemAvailable line (Linux 3.14 or later is needed)",
                      settings.meminfo.string());
  figures.memory_available_mib = *available;
  if (!settings.disk_dir.empty()) {
    // The directory may not exist yet (VMs make it); its nearest existing
    // ancestor is on the filesystem it will be on.
    struct statvfs fs {};
    std::filesystem::path dir = settings.disk_dir;
    while (::statvfs(dir.c_str(), &fs) != 0) {
      if (errno != ENOENT || !dir.has_relative_path())
        return sys_error("statvfs", settings.disk_dir.string());
      dir = dir.parent_path();
    }
    figures.disk_free_mib = static_cast<std::uint64_t>(fs.f_bavail) * fs.f_frsize / kMiB;
  }
  return figures;
}

std::uint64_t memory_still_promised_mib(const HostRoomSettings& settings, const std::string& id,
                                        std::uint64_t memory_mib) {
  const std::uint64_t promised = memory_mib + settings.vm_overhead_mib;
  const auto used =
      settings.memory_in_use_mib ? settings.memory_in_use_mib(id) : std::optional<std::uint64_t>{};
  return used ? saturating_sub(promised, *used) : promised;
}

std::optional<std::string> refuse_room(const HostRoomSettings& settings, const HostFigures& host,
                                       const HostCommitments& committed, const RoomRequest& request,
                                       const std::string& what) {
  const double overcommit = std::max(settings.memory_overcommit, 0.01);
  // What may still be promised: the memory left after the reserve, scaled
  // by the overcommit ratio, less what running sandboxes may still take.
  const auto promisable = static_cast<std::uint64_t>(
      static_cast<double>(saturating_sub(host.memory_available_mib, settings.memory_reserve_mib)) *
      overcommit);
  const std::uint64_t memory_room = saturating_sub(promisable, committed.memory_mib);
  const std::uint64_t memory_need =
      std::uint64_t{request.count} * (request.memory_mib + settings.vm_overhead_mib);
  if (memory_need > memory_room)
    return what + " needs " + std::to_string(memory_need) + " MiB of host memory (" +
           std::to_string(request.count) + " x " + std::to_string(request.memory_mib) +
           " MiB guest RAM + " + std::to_string(settings.vm_overhead_mib) +
           " MiB VMM overhead); this host can promise " + std::to_string(memory_room) +
           " MiB more (" + std::to_string(host.memory_available_mib) + " MiB available, " +
           std::to_string(settings.memory_reserve_mib) + " MiB reserved, " +
           std::to_string(committed.memory_mib) +
           " MiB that running sandboxes may still use); retry later, delete sandboxes you no "
           "longer need, or ask for less memory";
  if (settings.disk_dir.empty()) return std::nullopt;
  const std::uint64_t disk_room = saturating_sub(
      saturating_sub(host.disk_free_mib, settings.disk_reserve_mib), committed.disk_mib);
  const std::uint64_t disk_need = std::uint64_t{request.count} * request.disk_mib;
  if (disk_need > disk_room)
    return what + " needs " + std::to_string(disk_need) + " MiB of host disk for its writable " +
           "disk; this host can promise " + std::to_string(disk_room) + " MiB more (" +
           std::to_string(host.disk_free_mib) + " MiB free in " + settings.disk_dir.string() +
           ", " + std::to_string(settings.disk_reserve_mib) + " MiB reserved, " +
           std::to_string(committed.disk_mib) +
           " MiB that running sandboxes may still write); retry later, delete sandboxes you no "
           "longer need, or ask for a smaller disk";
  return std::nullopt;
}

} // namespace vesicle
