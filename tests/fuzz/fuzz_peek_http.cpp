// The HTTP request head peeker (net/peek.cpp: the Host a client on port 80
// names) over a client's first bytes; see fuzz_peek.hpp.
#include "tests/fuzz/fuzz_peek.hpp"

extern "C" int VESICLE_FUZZ_ENTRY(const std::uint8_t* data, std::size_t size) {
  vesicle::fuzz::check_peek(data, size, vesicle::net::peek_http_host);
  return 0;
}
