// How many ext4 clusters the agent reserves for a disk limit (the rest is
// checked in a real guest by limits_integration_test).
#include <gtest/gtest.h>

#include "guest/agent/disk_limit.hpp"

using vesicle::agent::clusters_to_reserve;

namespace {

constexpr std::uint64_t kBlock = 4096;
constexpr std::uint64_t kTotal = 524288; // a 2 GiB filesystem of 4 KiB blocks
constexpr std::uint64_t kBase = 4096;    // the kernel's own reservation

TEST(DiskLimit, ReservesWhatLiesAboveTheLimitOnTopOfTheKernelsShare) {
  // 700 MiB allowed: 179200 blocks; the other 345088 are held back.
  EXPECT_EQ(clusters_to_reserve(700ull << 20, kTotal, kBlock, kBase), kBase + (kTotal - 179200));
}

TEST(DiskLimit, ALimitAtOrAboveTheSizeLeavesOnlyTheKernelsShare) {
  EXPECT_EQ(clusters_to_reserve(2048ull << 20, kTotal, kBlock, kBase), kBase);
  EXPECT_EQ(clusters_to_reserve(1ull << 40, kTotal, kBlock, kBase), kBase);
}

TEST(DiskLimit, NeverAsksForTheWholeFilesystem) {
  // The kernel refuses a reservation of every cluster.
  EXPECT_EQ(clusters_to_reserve(0, kTotal, kBlock, kBase), kTotal - 1);
  EXPECT_EQ(clusters_to_reserve(1 << 20, kTotal, kBlock, kBase), kTotal - 1);
}

TEST(DiskLimit, PartialClustersRoundDown) {
  EXPECT_EQ(clusters_to_reserve(kBlock * 10 + 100, 100, kBlock, 0), 90u);
  EXPECT_EQ(clusters_to_reserve(123, 0, kBlock, 7), 7u);
}

} // namespace
