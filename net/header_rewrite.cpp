#include "net/header_rewrite.hpp"

#include <algorithm>
#include <cctype>

namespace vesicle::net {

namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool is_set(std::string_view line, std::span<const HeaderField> headers) {
  auto colon = line.find(':');
  if (colon == std::string_view::npos) return false;
  auto name = line.substr(0, colon);
  return std::any_of(headers.begin(), headers.end(),
                     [&](const HeaderField& h) { return iequals(h.name, name); });
}

} // namespace

Result<std::string> rewrite_request_head(std::string_view head,
                                         std::span<const HeaderField> headers) {
  // Split into lines, keeping each line's own ending.
  std::string out;
  out.reserve(head.size() + 64 * headers.size());
  size_t position = 0;
  bool first = true;
  bool dropping = false;
  std::string_view eol = "\r\n";
  while (position < head.size()) {
    auto end = head.find('\n', position);
    if (end == std::string_view::npos) {
      return make_error("rewrite request head", "the head does not end with a blank line");
    }
    std::string_view line = head.substr(position, end - position);
    std::string_view whole = head.substr(position, end + 1 - position);
    position = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (first) {
      eol = whole.size() >= 2 && whole[whole.size() - 2] == '\r' ? "\r\n" : "\n";
      out.append(whole);
      first = false;
      continue;
    }
    if (line.empty()) {
      // The blank line: the new fields go right before it.
      for (const auto& header : headers) {
        out.append(header.name).append(": ").append(header.value).append(eol);
      }
      out.append(whole);
      if (position != head.size()) {
        return make_error("rewrite request head", "bytes after the blank line");
      }
      return out;
    }
    if (line.front() == ' ' || line.front() == '\t') {
      if (!dropping) out.append(whole); // a folded continuation
      continue;
    }
    dropping = is_set(line, headers);
    if (!dropping) out.append(whole);
  }
  return make_error("rewrite request head", "the head does not end with a blank line");
}

} // namespace vesicle::net
