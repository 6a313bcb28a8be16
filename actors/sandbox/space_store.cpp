#include "actors/sandbox/space_store.hpp"
#include "common/ids.hpp"
#include "common/log.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <sstream>

#include "common/record_file.hpp"
#include "common/unique_fd.hpp"
#include "vmm/blocking.hpp"
#include "vmm/snapshot.hpp"

namespace vesicle {

namespace fs = std::filesystem;

namespace {

constexpr const char* kSpaceFile = "space";
// A Space being removed (SpaceStore::remove) is renamed to this first.
constexpr std::string_view kRemovingSuffix = ".removing";

Result<void> fsync_path(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", path.string());
  if (::fsync(fd.get()) != 0) return sys_error("fsync", path.string());
  return {};
}

} // namespace

std::string format_space(const SpaceInfo& space) {
  std::ostringstream out;
  out << "vesicle-space " << kSpaceFormatVersion << "\n";
  out << "space_id " << space.space_id << "\n";
  out << "owner " << space.owner << "\n";
  out << "sandbox_id " << space.sandbox_id << "\n";
  out << "template " << space.spec.template_name << "\n";
  out << "egress " << (space.spec.egress ? 1 : 0) << "\n";
  for (const auto& name : space.spec.egress_allow)
    out << "egress_allow " << name << "\n";
  for (const auto& name : space.spec.secret_hosts) // the names only, never a value
    out << "secret_host " << name << "\n";
  out << "persistent " << (space.spec.persistent ? 1 : 0) << "\n";
  out << "vcpus " << space.spec.vcpus << "\n";
  out << "memory_mib " << space.spec.memory_mib << "\n";
  out << "disk_mib " << space.spec.disk_mib << "\n";
  out << "idle_timeout_s " << space.spec.idle_timeout_s << "\n";
  out << "max_lifetime_s " << space.spec.max_lifetime_s << "\n";
  out << "created_at_ms " << space.created_at_ms << "\n";
  out << "frozen_at_ms " << space.frozen_at_ms << "\n";
  out << "reason " << space.reason << "\n";
  out << "machine_id " << space.machine_id << "\n";
  out << "images " << space.images_fingerprint << "\n";
  out << "state_bytes " << space.state_bytes << "\n";
  out << "disk_bytes " << space.disk_bytes << "\n";
  out << "lived_ms " << space.lived_ms << "\n";
  return out.str();
}

Result<SpaceInfo> parse_space(std::string_view text) {
  SpaceInfo space;
  space.spec.egress_allow.clear();
  bool lived_known = false;
  auto read = read_record_lines(
      text, {"vesicle-space", kSpaceFormatVersion, "Space"}, [&](const RecordLine& line) {
        const auto key = line.key;
        const auto value = line.value;
        auto number = [&](auto& out) { return line.number_value(out); };
        bool ok = true;
        if (key == "space_id")
          space.space_id = value;
        else if (key == "owner")
          space.owner = value;
        else if (key == "sandbox_id")
          space.sandbox_id = value;
        else if (key == "template")
          space.spec.template_name = value;
        else if (key == "egress")
          ok = line.flag_value(space.spec.egress);
        else if (key == "egress_allow")
          space.spec.egress_allow.emplace_back(value);
        else if (key == "secret_host")
          space.spec.secret_hosts.emplace_back(value);
        else if (key == "persistent")
          ok = line.flag_value(space.spec.persistent);
        else if (key == "vcpus")
          ok = number(space.spec.vcpus);
        else if (key == "memory_mib")
          ok = number(space.spec.memory_mib);
        else if (key == "disk_mib")
          ok = number(space.spec.disk_mib);
        else if (key == "idle_timeout_s")
          ok = number(space.spec.idle_timeout_s);
        else if (key == "max_lifetime_s")
          ok = number(space.spec.max_lifetime_s);
        else if (key == "created_at_ms")
          ok = number(space.created_at_ms);
        else if (key == "frozen_at_ms")
          ok = number(space.frozen_at_ms);
        else if (key == "reason")
          space.reason = value;
        else if (key == "machine_id")
          space.machine_id = value;
        else if (key == "images")
          space.images_fingerprint = value;
        else if (key == "state_bytes")
          ok = number(space.state_bytes);
        else if (key == "disk_bytes")
          ok = number(space.disk_bytes);
        else if (key == "lived_ms")
          ok = number(space.lived_ms), lived_known = true;
        else
          return RecordLineOutcome::unknown_key;
        return ok ? RecordLineOutcome::taken : RecordLineOutcome::bad_value;
      });
  if (!read) return std::move(read).error();
  if (!is_space_id(space.space_id)) return make_error("parse Space", "no valid space_id line");
  if (space.owner.empty()) return make_error("parse Space", "no owner line");
  // A Space frozen before lived_ms was kept: its last run at least.
  if (!lived_known)
    space.lived_ms = std::max<std::int64_t>(0, space.frozen_at_ms - space.created_at_ms);
  return space;
}

std::string new_space_id() {
  return node_scoped_id("sp-");
}

bool is_space_id(std::string_view id) {
  if ((id.size() != 3 + 12 && id.size() != 3 + kIdDigits) || id.substr(0, 3) != "sp-") return false;
  return std::all_of(id.begin() + 3, id.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

namespace {

Result<SpaceInfo> read_space(const fs::path& dir) {
  return read_record_file(dir / kSpaceFile, parse_space);
}

} // namespace

std::vector<SpaceInfo> SpaceStore::list(const std::string& owner) const {
  std::vector<SpaceInfo> spaces;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const auto name = entry.path().filename().string();
    if (!is_space_id(name)) continue;
    auto space = read_space(entry.path());
    if (!space) {
      log::warn("skipping an unreadable Space",
                {{"space", name}, {"error", space.error().message()}});
      continue;
    }
    if (space->owner == owner && space->space_id == name) spaces.push_back(std::move(*space));
  }
  std::sort(spaces.begin(), spaces.end(), [](const SpaceInfo& a, const SpaceInfo& b) {
    return a.frozen_at_ms != b.frozen_at_ms ? a.frozen_at_ms < b.frozen_at_ms
                                            : a.space_id < b.space_id;
  });
  return spaces;
}

Result<SpaceInfo> SpaceStore::find(const std::string& owner, const std::string& id) const {
  auto missing = [&] {
    return Error::of(ErrorKind::not_found,
                     "no Space " + id + " for this key; list yours with GET /v1/spaces", id);
  };
  if (!is_space_id(id)) return missing();
  std::error_code ec;
  if (!fs::is_directory(space_dir(id), ec)) return missing();
  auto space = read_space(space_dir(id));
  if (!space) return space;
  if (space->owner != owner || space->space_id != id) return missing();
  return space;
}

Result<void> SpaceStore::remove(const std::string& id) const {
  if (!is_space_id(id)) return make_error("remove Space", "not a Space id", id);
  // Renamed at once (the Space is gone for every later call), removed on
  // the blocking pool: a Space holds gigabytes, and this runs on an actor's
  // thread. A removal cut short by a crash is finished by sweep_partial.
  const fs::path doomed = dir_ / (id + std::string(kRemovingSuffix));
  std::error_code ec;
  fs::rename(space_dir(id), doomed, ec);
  if (ec) return Error{ec.value(), "rename", space_dir(id).string(), {}, {}};
  vmm::post_blocking([doomed] {
    std::error_code ignored;
    fs::remove_all(doomed, ignored);
  });
  return {};
}

Result<void> SpaceStore::commit(const SpaceInfo& space) const {
  const auto partial = partial_dir(space.space_id);
  if (auto written =
          vmm::snapshot::write_file_atomically(partial / kSpaceFile, format_space(space));
      !written)
    return written;
  std::error_code ec;
  fs::rename(partial, space_dir(space.space_id), ec);
  if (ec) return Error{ec.value(), "rename", partial.string(), {}, {}};
  // The rename is what makes the Space exist: make it durable too.
  return fsync_path(dir_);
}

unsigned SpaceStore::sweep_partial() const {
  unsigned removed = 0;
  std::error_code ec;
  std::vector<fs::path> partial;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const auto name = entry.path().filename().string();
    for (std::string_view suffix : {std::string_view(".partial"), kRemovingSuffix}) {
      if (name.size() > suffix.size() && name.ends_with(suffix) &&
          is_space_id(std::string_view(name).substr(0, name.size() - suffix.size())))
        partial.push_back(entry.path());
    }
  }
  for (const auto& path : partial) {
    fs::remove_all(path, ec);
    if (!ec) ++removed;
  }
  return removed;
}

} // namespace vesicle
