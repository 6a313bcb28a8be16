#include "hostd/query.hpp"

namespace vesicle::hostd {

std::optional<std::string> url_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%') {
      if (i + 2 >= text.size()) return std::nullopt;
      auto hex = [](char h) -> int {
        if (h >= '0' && h <= '9') return h - '0';
        if (h >= 'a' && h <= 'f') return h - 'a' + 10;
        if (h >= 'A' && h <= 'F') return h - 'A' + 10;
        return -1;
      };
      int high = hex(text[i + 1]), low = hex(text[i + 2]);
      if (high < 0 || low < 0) return std::nullopt;
      out += static_cast<char>(high << 4 | low);
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

std::optional<std::string> query_param(std::string_view query, std::string_view name) {
  std::size_t start = 0;
  while (start <= query.size()) {
    auto amp = query.find('&', start);
    if (amp == std::string_view::npos) amp = query.size();
    auto pair = query.substr(start, amp - start);
    auto equals = pair.find('=');
    auto key = pair.substr(0, equals);
    if (url_decode(key) == std::string(name)) {
      if (equals == std::string_view::npos) return std::string();
      return url_decode(pair.substr(equals + 1));
    }
    start = amp + 1;
  }
  return std::nullopt;
}

bool path_is(const std::vector<std::string>& path,
             std::initializer_list<std::string_view> pattern) {
  if (pattern.size() != path.size()) return false;
  std::size_t i = 0;
  for (auto part : pattern) {
    if (part != "*" && part != path[i]) return false;
    ++i;
  }
  return true;
}

} // namespace vesicle::hostd
