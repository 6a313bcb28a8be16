// Requests per second per API key: a token bucket per key. A key may spend
// a burst of twice its rate at once, then its rate; past that a request is
// refused with 429 and a Retry-After saying when the next one is allowed.
// The time is passed in, so the decisions are tested without sleeping.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>

namespace vesicle::hostd {

class RateLimiter {
public:
  using Clock = std::chrono::steady_clock;

  // 0 if `key_id` may make a request now at `per_second` (which it then
  // spends); else the whole seconds until it may (at least 1).
  std::uint32_t take(const std::string& key_id, std::uint32_t per_second, Clock::time_point now);

  // Forgets the buckets of keys that are full again (idle keys), so a host
  // that saw many keys does not keep them all.
  void prune(Clock::time_point now);
  std::size_t size() const { return buckets_.size(); }

private:
  struct Bucket {
    double tokens = 0;
    Clock::time_point at;
  };
  std::map<std::string, Bucket> buckets_;
  std::uint64_t taken_ = 0;
};

} // namespace vesicle::hostd
