// The block count the agent grows the root filesystem to (the growing
// itself is checked in a real guest by limits_integration_test).
#include <gtest/gtest.h>

#include "guest/agent/grow_fs.hpp"

using vesicle::agent::blocks_to_fill;

namespace {

TEST(GrowFs, FillsTheDeviceWithWholeBlocks) {
  EXPECT_EQ(blocks_to_fill(2048ull << 20, 4096), 524288u);
  // A device that does not end on a block boundary: the part block is left.
  EXPECT_EQ(blocks_to_fill((2048ull << 20) + 1000, 4096), 524288u);
  EXPECT_EQ(blocks_to_fill(4095, 4096), 0u);
}

TEST(GrowFs, AnUnknownBlockSizeGrowsNothing) {
  EXPECT_EQ(blocks_to_fill(1ull << 30, 0), 0u);
}

} // namespace
