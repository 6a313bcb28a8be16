// Lowercase hex of bytes: digests, machine ids.
#pragma once

#include <cstddef>
#include <string>

namespace vesicle {

inline std::string to_hex(const unsigned char* bytes, std::size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  text.reserve(size * 2);
  for (std::size_t i = 0; i < size; ++i) {
    text += kDigits[bytes[i] >> 4];
    text += kDigits[bytes[i] & 15];
  }
  return text;
}

} // namespace vesicle
