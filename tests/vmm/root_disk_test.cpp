// The pieces of the host's disk bound that need no VM: the overlay's
// qemu-img command (its virtual size is the quota) and reading a disk's
// size from QMP's query-block (limits_integration_test fills real disks).
#include <gtest/gtest.h>

#include "vmm/root_disk.hpp"

namespace vesicle::vmm {
namespace {

TEST(RootDisk, TheOverlaysVirtualSizeIsTheQuota) {
  auto argv = overlay_command("/images/rootfs.ext4", "raw", "/run/vm/overlay.qcow2", 973);
  const std::vector<std::string> expected = {"qemu-img",
                                             "create",
                                             "-q",
                                             "-f",
                                             "qcow2",
                                             "-b",
                                             "/images/rootfs.ext4",
                                             "-F",
                                             "raw",
                                             "/run/vm/overlay.qcow2",
                                             "973M"};
  EXPECT_EQ(argv, expected);
}

TEST(RootDisk, WithoutAQuotaTheOverlayIsTheBackingFilesSize) {
  auto argv = overlay_command("/t/disk.qcow2", "qcow2", "/run/vm/overlay.qcow2", 0);
  EXPECT_EQ(argv.back(), "/run/vm/overlay.qcow2");
  EXPECT_EQ(argv[8], "qcow2");
}

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
