// The properties both peekers (net/peek.cpp) keep, whatever a client sends
// first: read as the proxy reads (the bytes so far, after each read), a
// verdict is final once given, and a name given is a normalized host name.
#pragma once

#include <algorithm>
#include <span>

#include "net/allowlist.hpp"
#include "net/peek.hpp"
#include "tests/fuzz/fuzz_check.hpp"

namespace vesicle::fuzz {

template <class Peek> void check_peek(const std::uint8_t* data, std::size_t size, Peek peek) {
  if (size == 0) return;
  // The first byte picks the read size, as a client's segments would.
  const std::size_t step = std::size_t{data[0]} * 4 + 1;
  const std::span<const std::uint8_t> bytes(data + 1, size - 1);
  net::PeekResult first{};
  std::size_t at = 0;
  do {
    at = std::min(bytes.size(), at + step);
    first = peek(bytes.first(at));
  } while (first.status == net::PeekStatus::need_more && at < bytes.size());
  if (first.status == net::PeekStatus::done) {
    FUZZ_CHECK(!first.name.empty());
    FUZZ_CHECK(net::normalize_hostname(first.name) == first.name);
    FUZZ_CHECK(first.error.empty());
  }
  if (first.status == net::PeekStatus::invalid) FUZZ_CHECK(!first.error.empty());
  // More bytes after a verdict cannot change it (the proxy stops reading).
  if (first.status != net::PeekStatus::need_more) {
    auto whole = peek(bytes);
    FUZZ_CHECK(whole.status == first.status);
    FUZZ_CHECK(whole.name == first.name);
  }
}

} // namespace vesicle::fuzz
