#include <unistd.h>

#include <gtest/gtest.h>

#include "hostd/proc_usage.hpp"

using namespace vesicle::hostd;

TEST(ProcUsage, ParsesACommandNameWithSpacesAndParentheses) {
  // utime 250 and stime 150 ticks at 100 Hz: 4 s; 300 resident 4 KiB pages.
  const std::string stat = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 10 0 0 0 250 150 0 0 "
                           "20 0 3 0 100 1000000 300 18446744073709551615";
  auto usage = parse_process_usage(stat, "1000 300 50 1 0 200 0\n", 100, 4096);
  ASSERT_TRUE(usage);
  EXPECT_DOUBLE_EQ(usage->cpu_seconds, 4.0);
  EXPECT_EQ(usage->rss_bytes, 300u * 4096u);
}

TEST(ProcUsage, TruncatedTextIsNothing) {
  EXPECT_FALSE(parse_process_usage("4242 (qemu) S 1 2 3", "1000 300", 100, 4096));
  EXPECT_FALSE(parse_process_usage("no parenthesis", "1000 300", 100, 4096));
  EXPECT_FALSE(parse_process_usage("1 (a) S 1 1 1 0 -1 0 0 0 0 0 5 5", "", 100, 4096));
}

TEST(ProcUsage, ThisProcessHasMemoryAndAGoneOneHasNothing) {
  auto self = process_usage(::getpid());
  ASSERT_TRUE(self);
  EXPECT_GT(self->rss_bytes, 0u);
  EXPECT_FALSE(process_usage(0));
}
