#include "common/ids.hpp"

#include <random>

namespace vesicle {

std::string random_id(std::string_view prefix, int digits) {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(prefix);
  auto bits = generator();
  for (int i = 0; i < digits && i < 16; ++i, bits >>= 4)
    id += kHex[bits & 0xf];
  return id;
}

} // namespace vesicle
