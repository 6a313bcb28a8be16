#include "common/ids.hpp"

#include <sys/random.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/log.hpp"

namespace vesicle {

std::string random_id(std::string_view prefix, int digits) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::array<std::uint8_t, 32> bytes{};
  const std::size_t wanted = (static_cast<std::size_t>(std::min(digits, 64)) + 1) / 2;
  std::size_t got = 0;
  while (got < wanted) {
    const ssize_t n = ::getrandom(bytes.data() + got, wanted - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      // getrandom exists since Linux 3.17 and blocks only before the pool is
      // seeded; failing here means the kernel cannot give randomness at all,
      // and a guessable id would be worse than stopping.
      log::error("getrandom failed; cannot make an unguessable id",
                 {{"error", std::strerror(errno)}});
      std::abort();
    }
    got += static_cast<std::size_t>(n);
  }
  std::string id(prefix);
  for (int i = 0; i < digits && i < 64; ++i) {
    const std::uint8_t byte = bytes[static_cast<std::size_t>(i / 2)];
    id += kHex[i % 2 == 0 ? byte >> 4 : byte & 0xf];
  }
  return id;
}

namespace {
// Written once by main before any actor runs, read only afterwards.
std::string g_node_id_tag;
} // namespace

void set_node_id_tag(std::string tag) {
  g_node_id_tag = std::move(tag);
}

std::string node_scoped_id(std::string_view prefix) {
  std::string id(prefix);
  id += g_node_id_tag;
  return random_id(id, kIdDigits - static_cast<int>(g_node_id_tag.size()));
}

} // namespace vesicle
