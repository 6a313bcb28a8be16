#include "actors/sandbox/template_store.hpp"

#include <algorithm>
#include <sstream>

#include "common/ids.hpp"
#include "common/log.hpp"
#include "common/record_file.hpp"
#include "vmm/blocking.hpp"
#include "vmm/snapshot.hpp"

namespace vesicle {

namespace fs = std::filesystem;

namespace {

constexpr const char* kTemplateFile = "template";
// A template being removed is renamed to this first.
constexpr std::string_view kRemovingSuffix = ".removing";

Result<TemplateInfo> read_template(const fs::path& dir) {
  return read_record_file(dir / kTemplateFile, parse_template);
}

} // namespace

std::string format_template(const TemplateInfo& info) {
  std::ostringstream out;
  out << "vesicle-template " << kTemplateFormatVersion << "\n";
  out << "template_id " << info.template_id << "\n";
  out << "name " << info.name << "\n";
  out << "owner " << info.owner << "\n";
  out << "global " << (info.global ? 1 : 0) << "\n";
  out << "from_sandbox " << info.from_sandbox << "\n";
  out << "created_at_ms " << info.created_at_ms << "\n";
  out << "vcpus " << info.vcpus << "\n";
  out << "memory_mib " << info.memory_mib << "\n";
  out << "disk_mib " << info.disk_mib << "\n";
  out << "images " << info.images_fingerprint << "\n";
  out << "recipe " << info.recipe_hash << "\n";
  out << "pool_size " << info.pool_size << "\n";
  out << "memory_bytes " << info.memory_bytes << "\n";
  out << "state_bytes " << info.state_bytes << "\n";
  out << "disk_bytes " << info.disk_bytes << "\n";
  return out.str();
}

Result<TemplateInfo> parse_template(std::string_view text) {
  TemplateInfo info;
  auto read = read_record_lines(
      text, {"vesicle-template", kTemplateFormatVersion, "template"}, [&](const RecordLine& line) {
        const auto key = line.key;
        const auto value = line.value;
        auto number = [&](auto& out) { return line.number_value(out); };
        bool ok = true;
        if (key == "template_id")
          info.template_id = value;
        else if (key == "name")
          info.name = value;
        else if (key == "owner")
          info.owner = value;
        else if (key == "global")
          ok = line.flag_value(info.global);
        else if (key == "from_sandbox")
          info.from_sandbox = value;
        else if (key == "created_at_ms")
          ok = number(info.created_at_ms);
        else if (key == "vcpus")
          ok = number(info.vcpus);
        else if (key == "memory_mib")
          ok = number(info.memory_mib);
        else if (key == "disk_mib")
          ok = number(info.disk_mib);
        else if (key == "images")
          info.images_fingerprint = value;
        else if (key == "recipe")
          info.recipe_hash = value;
        else if (key == "pool_size")
          ok = number(info.pool_size);
        else if (key == "memory_bytes")
          ok = number(info.memory_bytes);
        else if (key == "state_bytes")
          ok = number(info.state_bytes);
        else if (key == "disk_bytes")
          ok = number(info.disk_bytes);
        else
          return RecordLineOutcome::unknown_key;
        return ok ? RecordLineOutcome::taken : RecordLineOutcome::bad_value;
      });
  if (!read) return std::move(read).error();
  if (!is_template_id(info.template_id))
    return make_error("parse template", "no valid template_id line");
  if (info.owner.empty()) return make_error("parse template", "no owner line");
  if (auto named = check_template_name(info.name); !named) return named.error();
  return info;
}

std::string new_template_id() {
  return random_id("tp-");
}

bool is_template_id(std::string_view id) {
  if (id.size() != 3 + kIdDigits || id.substr(0, 3) != "tp-") return false;
  return std::all_of(id.begin() + 3, id.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

Result<void> check_template_name(std::string_view name) {
  auto refuse = [&](const std::string& why) {
    return Error::of(ErrorKind::invalid_argument, "name: " + why, std::string(name));
  };
  if (name.empty() || name.size() > 64) return refuse("a template name has 1 to 64 characters");
  if (name == "default")
    return refuse("\"default\" is the host's own template; choose another name");
  auto allowed = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  };
  if (!std::all_of(name.begin(), name.end(), allowed) || name.front() == '.' ||
      name.front() == '-' || name.front() == '_')
    return refuse("use lowercase letters, digits, '.', '_' and '-', starting with a letter or "
                  "digit (e.g. \"pandas-ml\")");
  return {};
}

TemplateUsage template_usage(const std::vector<TemplateInfo>& templates, const std::string& owner) {
  TemplateUsage usage;
  for (const auto& info : templates) {
    if (info.owner != owner) continue;
    ++usage.count;
    usage.memory_bytes += info.memory_bytes;
    usage.disk_bytes += info.state_bytes + info.disk_bytes;
  }
  return usage;
}

std::vector<TemplateInfo> TemplateStore::load() const {
  std::vector<TemplateInfo> templates;
  std::error_code ec;
  std::vector<fs::path> unfinished;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const auto name = entry.path().filename().string();
    if (name.ends_with(kRemovingSuffix)) {
      unfinished.push_back(entry.path());
      continue;
    }
    if (!is_template_id(name)) continue;
    std::error_code missing;
    if (!fs::exists(entry.path() / kTemplateFile, missing)) {
      unfinished.push_back(entry.path());
      continue;
    }
    auto info = read_template(entry.path());
    if (!info || info->template_id != name) {
      log::warn("skipping an unreadable template",
                {{"template", name},
                 {"error", info ? "its id does not match its directory" : info.error().message()}});
      continue;
    }
    templates.push_back(std::move(*info));
  }
  for (const auto& path : unfinished) {
    log::warn("removing what an interrupted template save or delete left",
              {{"path", path.string()}});
    fs::remove_all(path, ec);
  }
  std::sort(templates.begin(), templates.end(), [](const TemplateInfo& a, const TemplateInfo& b) {
    return a.created_at_ms != b.created_at_ms ? a.created_at_ms < b.created_at_ms
                                              : a.template_id < b.template_id;
  });
  return templates;
}

Result<void> TemplateStore::commit(const TemplateInfo& info) const {
  return vmm::snapshot::write_file_atomically(template_dir(info.template_id) / kTemplateFile,
                                              format_template(info));
}

Result<void> TemplateStore::remove(const std::string& id) const {
  if (!is_template_id(id)) return make_error("remove template", "not a template id", id);
  // Renamed at once (gone for every later load), removed on the blocking
  // pool: a template holds hundreds of megabytes, and this runs on an
  // actor's thread.
  const fs::path doomed = dir_ / (id + std::string(kRemovingSuffix));
  std::error_code ec;
  fs::rename(template_dir(id), doomed, ec);
  if (ec) return Error{ec.value(), "rename", template_dir(id).string(), {}, {}};
  vmm::post_blocking([doomed] {
    std::error_code ignored;
    fs::remove_all(doomed, ignored);
  });
  return {};
}

} // namespace vesicle
