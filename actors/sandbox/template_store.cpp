#include "actors/sandbox/template_store.hpp"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <iterator>
#include <sstream>

#include "common/ids.hpp"
#include "common/log.hpp"
#include "vmm/blocking.hpp"
#include "vmm/snapshot.hpp"

namespace vesicle {

namespace fs = std::filesystem;

namespace {

constexpr const char* kTemplateFile = "template";
// A template being removed is renamed to this first.
constexpr std::string_view kRemovingSuffix = ".removing";

template <class Number> bool parse_number(std::string_view text, Number& out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

Result<TemplateInfo> read_template(const fs::path& dir) {
  const auto path = dir / kTemplateFile;
  std::ifstream in(path);
  if (!in) return sys_error("open", path.string());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto parsed = parse_template(text);
  if (!parsed) return std::move(parsed).error().with_context(path.string());
  return parsed;
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
  int line_number = 0;
  bool versioned = false;
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const auto line = text.substr(start, end - start);
    start = end + 1;
    ++line_number;
    if (line.empty()) continue;
    const auto space_at = line.find(' ');
    const auto key = line.substr(0, space_at);
    const auto value =
        space_at == std::string_view::npos ? std::string_view{} : line.substr(space_at + 1);
    auto bad = [&](const char* why) {
      return make_error("parse template", "line " + std::to_string(line_number) + " (" +
                                              std::string(key) + "): " + why);
    };
    auto number = [&](auto& out) { return parse_number(value, out); };
    bool ok = true;
    if (line_number == 1) {
      int version = 0;
      if (key != "vesicle-template" || !number(version)) return bad("not a vesicle template file");
      if (version != kTemplateFormatVersion)
        return bad("written by another version of vesicle; this hostd reads version 1");
      versioned = true;
      continue;
    }
    if (key == "template_id")
      info.template_id = value;
    else if (key == "name")
      info.name = value;
    else if (key == "owner")
      info.owner = value;
    else if (key == "global") {
      ok = value == "0" || value == "1";
      info.global = value == "1";
    } else if (key == "from_sandbox")
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
      return bad("unknown key");
    if (!ok) return bad("not a valid value");
  }
  if (!versioned) return make_error("parse template", "empty file");
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
