#include "hostd/rate_limit.hpp"

#include <algorithm>
#include <cmath>

namespace vesicle::hostd {

namespace {
double seconds_between(RateLimiter::Clock::time_point from, RateLimiter::Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}
} // namespace

std::uint32_t RateLimiter::take(const std::string& key_id, std::uint32_t per_second,
                                Clock::time_point now) {
  if (per_second == 0) return 0; // no limit
  const double burst = 2.0 * per_second;
  // Now and then, drop idle keys' buckets.
  if (++taken_ % 4096 == 0) prune(now);
  auto [found, fresh] = buckets_.try_emplace(key_id, Bucket{burst, now});
  auto& bucket = found->second;
  if (!fresh) {
    const double elapsed = std::max(0.0, seconds_between(bucket.at, now));
    bucket.tokens = std::min(burst, bucket.tokens + elapsed * per_second);
    bucket.at = now;
  }
  if (bucket.tokens >= 1.0) {
    bucket.tokens -= 1.0;
    return 0;
  }
  const double wait = (1.0 - bucket.tokens) / per_second;
  return static_cast<std::uint32_t>(std::max(1.0, std::ceil(wait)));
}

void RateLimiter::prune(Clock::time_point now) {
  // A bucket untouched for a minute is full at any rate of 1/s or more.
  std::erase_if(buckets_,
                [&](const auto& entry) { return seconds_between(entry.second.at, now) > 60.0; });
}

} // namespace vesicle::hostd
