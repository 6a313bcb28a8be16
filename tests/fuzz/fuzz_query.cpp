// The request target's query string (hostd/query.cpp): percent-decoding and
// parameter lookup over what a client puts after '?'. A decoded value is
// never longer than its text, an encoded value decodes back to itself, and
// the first occurrence of a parameter wins.
#include <string>
#include <string_view>

#include "hostd/query.hpp"
#include "tests/fuzz/fuzz_check.hpp"

namespace {

std::string percent_encode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    out += '%';
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

} // namespace

extern "C" int VESICLE_FUZZ_ENTRY(const std::uint8_t* data, std::size_t size) {
  using namespace vesicle::hostd;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto decoded = url_decode(text)) {
    FUZZ_CHECK(decoded->size() <= text.size());
    FUZZ_CHECK(url_decode(percent_encode(*decoded)) == decoded);
  }
  for (const char* name : {"path", "mode", ""}) {
    if (auto value = query_param(text, name)) FUZZ_CHECK(value->size() <= text.size());
  }
  // The first occurrence wins: a parameter appended later changes nothing.
  if (auto path = query_param(text, "path"))
    FUZZ_CHECK(query_param(std::string(text) + "&path=%2Fother", "path") == path);
  return 0;
}
