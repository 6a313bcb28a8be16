// Requests per second per key (issue 14): a burst of twice the rate, then
// the rate; each key on its own bucket; the wait it names is when the next
// request is allowed.
#include <gtest/gtest.h>

#include "hostd/rate_limit.hpp"

using vesicle::hostd::RateLimiter;
using namespace std::chrono_literals;

TEST(RateLimiter, ABurstOfTwiceTheRateThenTheRate) {
  RateLimiter limiter;
  const auto t0 = RateLimiter::Clock::time_point{} + 1h;
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(limiter.take("key-a", 5, t0), 0u) << i;
  EXPECT_EQ(limiter.take("key-a", 5, t0), 1u); // Retry-After: 1 s
  // Another key is not affected.
  EXPECT_EQ(limiter.take("key-b", 5, t0), 0u);
  // 200 ms later one more token is there (5/s), and only one.
  EXPECT_EQ(limiter.take("key-a", 5, t0 + 200ms), 0u);
  EXPECT_EQ(limiter.take("key-a", 5, t0 + 200ms), 1u);
  // A rate below 1/s names a longer wait.
  EXPECT_EQ(limiter.take("key-c", 1, t0), 0u);
  EXPECT_EQ(limiter.take("key-c", 1, t0), 0u);
  EXPECT_EQ(limiter.take("key-c", 1, t0), 1u);
  // 0 is no limit.
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(limiter.take("key-d", 0, t0), 0u);
}

TEST(RateLimiter, IdleKeysAreForgotten) {
  RateLimiter limiter;
  const auto t0 = RateLimiter::Clock::time_point{} + 1h;
  EXPECT_EQ(limiter.take("key-a", 5, t0), 0u);
  EXPECT_EQ(limiter.take("key-b", 5, t0 + 30s), 0u);
  limiter.prune(t0 + 61s);
  EXPECT_EQ(limiter.size(), 1u);
}
