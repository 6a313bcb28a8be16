#include "hostd/smaps_rollup.hpp"

#include <array>
#include <charconv>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

namespace vesicle::hostd {

namespace {

constexpr std::array<std::string_view, 3> kFields = {"Pss", "Private_Clean", "Private_Dirty"};

std::string_view trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t\r");
  return text.substr(first, last - first + 1);
}

// "  1234 kB" as bytes; nothing for another unit, no digits, or overflow.
std::optional<std::uint64_t> kib_value(std::string_view value) {
  value = trim(value);
  std::uint64_t kib = 0;
  const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), kib);
  if (error != std::errc() || end == value.data()) return std::nullopt;
  if (trim(std::string_view(end, static_cast<std::size_t>(value.data() + value.size() - end))) !=
      "kB")
    return std::nullopt;
  if (kib > std::numeric_limits<std::uint64_t>::max() / 1024) return std::nullopt;
  return kib * 1024;
}

} // namespace

std::optional<MemoryFootprint> parse_smaps_rollup(std::string_view text) {
  std::array<std::optional<std::uint64_t>, kFields.size()> found;
  while (!text.empty()) {
    const auto end = text.find('\n');
    const auto line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view{} : text.substr(end + 1);
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) continue; // the header line, or blank
    for (std::size_t i = 0; i < kFields.size(); ++i) {
      if (line.substr(0, colon) != kFields[i]) continue;
      // A field twice means the text is not what the kernel writes.
      if (found[i]) return std::nullopt;
      found[i] = kib_value(line.substr(colon + 1));
      if (!found[i]) return std::nullopt;
    }
  }
  for (const auto& value : found)
    if (!value) return std::nullopt;
  if (*found[1] > std::numeric_limits<std::uint64_t>::max() - *found[2]) return std::nullopt;
  return MemoryFootprint{.pss_bytes = *found[0], .uss_bytes = *found[1] + *found[2]};
}

std::optional<MemoryFootprint> memory_footprint(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  return parse_smaps_rollup(text.str());
}

} // namespace vesicle::hostd
