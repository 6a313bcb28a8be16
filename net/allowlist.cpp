#include "net/allowlist.hpp"

#include <algorithm>

namespace vesicle::net {
namespace {

bool label_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

} // namespace

std::optional<std::string> normalize_hostname(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > 253) return std::nullopt;
  std::string out;
  out.reserve(name.size());
  size_t label_start = 0;
  for (size_t i = 0; i <= name.size(); ++i) {
    if (i == name.size() || name[i] == '.') {
      size_t length = i - label_start;
      if (length == 0 || length > 63) return std::nullopt;
      if (out[label_start] == '-' || out.back() == '-') return std::nullopt;
      if (i < name.size()) out.push_back('.');
      label_start = i + 1;
      continue;
    }
    char c = name[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (!label_char(c)) return std::nullopt;
    out.push_back(c);
  }
  // A last label of digits only is an address in some spelling, never a
  // name a public DNS tree can hold.
  auto last_dot = out.rfind('.');
  std::string_view last = last_dot == std::string::npos
                              ? std::string_view(out)
                              : std::string_view(out).substr(last_dot + 1);
  if (std::all_of(last.begin(), last.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  return out;
}

Result<Allowlist> Allowlist::parse(const std::vector<std::string>& patterns) {
  Allowlist list;
  for (const auto& pattern : patterns) {
    std::string_view body = pattern;
    bool wildcard = body.substr(0, 2) == "*.";
    if (wildcard) body.remove_prefix(2);
    auto normalized = normalize_hostname(body);
    if (!normalized || body.find('*') != std::string_view::npos) {
      return make_error("parse egress allowlist",
                        "entries are host names (\"pypi.org\") or \"*.\" followed by one "
                        "(\"*.example.com\"); IP addresses and other wildcards are not accepted",
                        pattern);
    }
    if (wildcard) {
      list.suffixes_.push_back("." + *normalized);
      list.patterns_.push_back("*." + *normalized);
    } else {
      list.exact_.push_back(*normalized);
      list.patterns_.push_back(*normalized);
    }
  }
  return list;
}

bool Allowlist::allows(std::string_view name) const {
  auto normalized = normalize_hostname(name);
  if (!normalized) return false;
  for (const auto& exact : exact_) {
    if (*normalized == exact) return true;
  }
  for (const auto& suffix : suffixes_) {
    if (normalized->size() > suffix.size() &&
        normalized->compare(normalized->size() - suffix.size(), suffix.size(), suffix) == 0) {
      return true;
    }
  }
  return false;
}

} // namespace vesicle::net
