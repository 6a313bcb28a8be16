// GuestMemory::seal: a file a VM still maps writable and shared is refused,
// one whose last such mapping goes while seal waits is sealed.
#include "vmm/guest_memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

namespace vesicle::vmm {
namespace {

constexpr std::uint64_t kBytes = 1 << 20;

std::shared_ptr<GuestMemory> made() {
  auto memory = GuestMemory::create("guest-memory-test", kBytes);
  EXPECT_TRUE(memory) << memory.error().message();
  return std::move(memory).value();
}

void* map_shared(const GuestMemory& memory) {
  void* at = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED, memory.fd(), 0);
  EXPECT_NE(at, MAP_FAILED);
  static_cast<char*>(at)[0] = 'x'; // as a running guest would
  return at;
}

TEST(GuestMemorySeal, AWritableSharedMappingIsRefusedAfterItsPatienceAndNamed) {
  auto memory = made();
  void* at = map_shared(*memory);
  const auto started = std::chrono::steady_clock::now();
  auto sealed = memory->seal();
  const auto waited = std::chrono::steady_clock::now() - started;
  ASSERT_FALSE(sealed);
  EXPECT_EQ(sealed.error().errno_value, EBUSY);
  EXPECT_NE(sealed.error().message().find("still maps it writable and shared"), std::string::npos)
      << sealed.error().message();
  EXPECT_FALSE(memory->sealed());
  // It waited, in case the kernel only held pages for a moment.
  EXPECT_GE(waited, std::chrono::seconds(2));
  ASSERT_EQ(::munmap(at, kBytes), 0);
  ASSERT_TRUE(memory->seal());
  EXPECT_TRUE(memory->sealed());
  EXPECT_EQ(::pwrite(memory->fd(), "y", 1, 0), -1) << "sealed against writes";
}

TEST(GuestMemorySeal, AMappingThatGoesWhileSealWaitsLetsItSeal) {
  auto memory = made();
  void* at = map_shared(*memory);
  std::thread unmapper([at] {
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    ::munmap(at, kBytes);
  });
  auto sealed = memory->seal();
  unmapper.join();
  ASSERT_TRUE(sealed) << sealed.error().message();
  char byte = 0;
  ASSERT_EQ(::pread(memory->fd(), &byte, 1, 0), 1);
  EXPECT_EQ(byte, 'x') << "the data written through the mapping is kept";
}

} // namespace
} // namespace vesicle::vmm
