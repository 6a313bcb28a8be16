// The pieces of the host's disk bound that need no VM: reading a disk's
// size from QMP's query-block (qcow2_overlay_test checks the overlay's
// virtual size; limits_integration_test fills real disks).
#include <gtest/gtest.h>

#include "vmm/root_disk.hpp"

namespace vesicle::vmm {
namespace {

TEST(RootDisk, TheDisksSizeComesFromItsQueryBlockEntry) {
  auto reply = json::parse(R"([
    {"device": "other", "inserted": {"image": {"virtual-size": 1}}},
    {"device": "root", "qdev": "/machine/peripheral-anon/device[0]/virtio-backend",
     "inserted": {"image": {"virtual-size": 1020264448, "format": "qcow2"}}}])");
  ASSERT_TRUE(reply) << reply.error().message();
  auto bytes = disk_bytes_in(*reply, "root");
  ASSERT_TRUE(bytes) << bytes.error().message();
  EXPECT_EQ(*bytes, 1020264448u);
}

TEST(RootDisk, AMissingDeviceOrSizeIsAnError) {
  auto empty = json::parse(R"([{"device": "root", "inserted": {}}])");
  ASSERT_TRUE(empty);
  EXPECT_FALSE(disk_bytes_in(*empty, "root"));
  EXPECT_FALSE(disk_bytes_in(*empty, "vda"));
}

} // namespace
} // namespace vesicle::vmm
