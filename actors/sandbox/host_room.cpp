#include "actors/sandbox/host_room.hpp"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>
#include <string_view>

#include "common/disk_space.hpp"

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

// What may still be promised of memory or disk: the host's room for
// sandboxes (`free_mib` and the `held_mib` running sandboxes hold, less
// `reserve_mib`) `overcommit` times over, less what running sandboxes were
// promised (what they hold and the `still_mib` they may still take). At
// 1.0 that is what is free beyond the reserve less what they may still
// take. (Config validation keeps the ratio in 0.1..100; the floor guards
// settings made in code.)
std::uint64_t room_mib(std::uint64_t free_mib, std::uint64_t reserve_mib, double overcommit,
                       std::uint64_t held_mib, std::uint64_t still_mib) {
  const auto promisable = static_cast<std::uint64_t>(
      static_cast<double>(saturating_sub(free_mib + held_mib, reserve_mib)) *
      std::max(overcommit, 0.01));
  return saturating_sub(promisable, still_mib + held_mib);
}

// ", promised 2.5 times over (disk_overcommit)" for a refusal's figures;
// nothing at 1.
std::string overcommit_note(const char* what, double overcommit) {
  if (overcommit == 1.0) return {};
  std::ostringstream note;
  note << ", promised " << overcommit << " times over (" << what << "_overcommit)";
  return note.str();
}

// "2000 MiB that running sandboxes hold, " for a refusal's figures;
// nothing when they hold none (or it is not known).
std::string held_note(std::uint64_t held_mib) {
  if (held_mib == 0) return {};
  return std::to_string(held_mib) + " MiB that running sandboxes hold, ";
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
    // The directory may not exist yet (VMs make it): available_bytes reads
    // the filesystem it will be on.
    auto available = available_bytes(settings.disk_dir);
    if (!available) return std::move(available).error();
    figures.disk_free_mib = *available / kMiB;
  }
  return figures;
}

namespace {

// `promised`, split by what is known to be held of it.
Promised split(std::uint64_t promised, std::optional<std::uint64_t> held) {
  if (!held) return {promised, 0};
  return {saturating_sub(promised, *held), std::min(*held, promised)};
}

} // namespace

Promised memory_promised(const HostRoomSettings& settings, const std::string& id,
                         std::uint64_t memory_mib) {
  return split(memory_mib + settings.vm_overhead_mib, settings.memory_in_use_mib
                                                          ? settings.memory_in_use_mib(id)
                                                          : std::optional<std::uint64_t>{});
}

std::uint64_t disk_promised_mib(std::uint64_t disk_mib) {
  return disk_mib + disk_mib / 4096 + 1;
}

Promised disk_promised(const HostRoomSettings& settings, std::int32_t qemu_pid,
                       std::uint64_t disk_mib) {
  return split(disk_promised_mib(disk_mib), settings.disk_in_use_mib && qemu_pid > 0
                                                ? settings.disk_in_use_mib(qemu_pid)
                                                : std::optional<std::uint64_t>{});
}

std::optional<std::string> refuse_room(const HostRoomSettings& settings, const HostFigures& host,
                                       const HostCommitments& committed, const RoomRequest& request,
                                       const std::string& what) {
  const std::uint64_t memory_room =
      room_mib(host.memory_available_mib, settings.memory_reserve_mib, settings.memory_overcommit,
               committed.memory_held_mib, committed.memory_mib);
  const std::uint64_t memory_need =
      std::uint64_t{request.count} * (request.memory_mib + settings.vm_overhead_mib);
  if (memory_need > memory_room)
    return what + " needs " + std::to_string(memory_need) + " MiB of host memory (" +
           std::to_string(request.count) + " x " + std::to_string(request.memory_mib) +
           " MiB guest RAM + " + std::to_string(settings.vm_overhead_mib) +
           " MiB VMM overhead); this host can promise " + std::to_string(memory_room) +
           " MiB more (" + std::to_string(host.memory_available_mib) + " MiB available, " +
           std::to_string(settings.memory_reserve_mib) + " MiB reserved" +
           overcommit_note("memory", settings.memory_overcommit) + ", " +
           held_note(committed.memory_held_mib) + std::to_string(committed.memory_mib) +
           " MiB that running sandboxes may still use); retry later, delete sandboxes you no "
           "longer need, or ask for less memory";
  if (settings.disk_dir.empty()) return std::nullopt;
  // The disk the same way: what running sandboxes have written is out of
  // the free disk already, and committed.disk_mib is only what they may
  // still write.
  const std::uint64_t disk_room =
      room_mib(host.disk_free_mib, settings.disk_reserve_mib, settings.disk_overcommit,
               committed.disk_held_mib, committed.disk_mib);
  const std::uint64_t each_disk = disk_promised_mib(request.disk_mib);
  const std::uint64_t disk_need = std::uint64_t{request.count} * each_disk;
  if (disk_need > disk_room)
    return what + " needs " + std::to_string(disk_need) + " MiB of host disk (" +
           std::to_string(request.count) + " x " + std::to_string(each_disk) + " MiB: a " +
           std::to_string(request.disk_mib) +
           " MiB writable disk and its qcow2 tables); this host can promise " +
           std::to_string(disk_room) + " MiB more (" + std::to_string(host.disk_free_mib) +
           " MiB free in " + settings.disk_dir.string() + ", " +
           std::to_string(settings.disk_reserve_mib) + " MiB reserved" +
           overcommit_note("disk", settings.disk_overcommit) + ", " +
           held_note(committed.disk_held_mib) + std::to_string(committed.disk_mib) +
           " MiB that running sandboxes may still write); retry later, delete sandboxes you no "
           "longer need, or ask for a smaller disk";
  return std::nullopt;
}

} // namespace vesicle
