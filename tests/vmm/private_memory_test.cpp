// copy_memory_data and overlay_private_pages, the two halves of a fork's
// copy of guest RAM, on memfds this process maps itself (a stand-in for
// QEMU's share=off mapping: the same pagemap and process_vm_readv).
#include "vmm/private_memory.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace vesicle::vmm {
namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kBytes = 16 << 20;

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string out(n, '\0');
  for (auto& c : out)
    c = static_cast<char>(gen() | 1); // never a zero page
  return out;
}

void put(GuestMemory& memory, std::uint64_t at, const std::string& bytes) {
  ASSERT_EQ(::pwrite(memory.fd(), bytes.data(), bytes.size(), static_cast<off_t>(at)),
            static_cast<ssize_t>(bytes.size()));
}

std::string contents(const GuestMemory& memory) {
  std::string out(memory.bytes(), '\0');
  EXPECT_EQ(::pread(memory.fd(), out.data(), out.size(), 0), static_cast<ssize_t>(out.size()));
  return out;
}

bool is_hole(const GuestMemory& memory, std::uint64_t at) {
  const off_t data = ::lseek(memory.fd(), static_cast<off_t>(at), SEEK_DATA);
  return data < 0 || static_cast<std::uint64_t>(data) >= at + kPage;
}

std::shared_ptr<GuestMemory> memory_named(const std::string& name) {
  auto made = GuestMemory::create(name, kBytes);
  EXPECT_TRUE(made) << made.error().message();
  return made ? std::move(made).value() : nullptr;
}

TEST(CopyMemoryData, CopiesEveryExtentAndLeavesHoles) {
  auto source = memory_named("private-memory-test-source");
  ASSERT_TRUE(source);
  // Extents of unequal sizes, the last page among them, and a zero page
  // written inside an extent.
  put(*source, 0, random_bytes(3 * kPage, 1));
  put(*source, 1 << 20, random_bytes(5 << 20, 2));
  put(*source, (1 << 20) + 7 * kPage, std::string(kPage, '\0'));
  put(*source, 12 << 20, random_bytes(kPage, 3));
  put(*source, kBytes - kPage, random_bytes(kPage, 4)); // the last page
  ASSERT_TRUE(source->seal());

  auto copy = copy_memory_data(*source, "private-memory-test-copy");
  ASSERT_TRUE(copy) << copy.error().message();
  EXPECT_FALSE((*copy)->sealed()) << "the fork lays its pages over it, then seals it";
  EXPECT_EQ((*copy)->bytes(), kBytes);
  EXPECT_TRUE(contents(**copy) == contents(*source)) << "the copy differs from its source";
  EXPECT_TRUE(is_hole(**copy, (1 << 20) + 7 * kPage)) << "a zero page is left a hole";
  EXPECT_TRUE(is_hole(**copy, 8 << 20)) << "a hole stays a hole";
  EXPECT_FALSE(is_hole(**copy, 12 << 20));
}

TEST(CopyMemoryData, CopiesAnEmptyFile) {
  auto source = memory_named("private-memory-test-empty");
  ASSERT_TRUE(source);
  auto copy = copy_memory_data(*source, "private-memory-test-empty-copy");
  ASSERT_TRUE(copy) << copy.error().message();
  EXPECT_TRUE(is_hole(**copy, 0));
  EXPECT_TRUE(contents(**copy) == std::string(kBytes, '\0'));
}

TEST(OverlayPrivatePages, LaysTheWrittenPagesOverTheCopy) {
  auto source = memory_named("private-memory-test-template");
  ASSERT_TRUE(source);
  put(*source, 0, random_bytes(2 << 20, 5));
  ASSERT_TRUE(source->seal());
  // This process maps the template privately and writes to it, as a
  // restored guest does; the written pages are split between
  // overlay_private_pages's two threads.
  void* mapped = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, source->fd(), 0);
  ASSERT_NE(mapped, MAP_FAILED);
  char* ram = static_cast<char*>(mapped);
  const std::string written = random_bytes(3 << 20, 6);
  std::memcpy(ram + (1 << 20), written.data(), written.size()); // over data and hole
  std::memset(ram + kPage, 0, kPage);                           // a data page zeroed

  auto address = find_mapping(::getpid(), *source, kBytes);
  ASSERT_TRUE(address) << address.error().message();
  EXPECT_EQ(*address, reinterpret_cast<std::uint64_t>(ram));
  auto counted = count_private_pages(::getpid(), *address, kBytes);
  ASSERT_TRUE(counted) << counted.error().message();
  EXPECT_EQ(*counted, (3u << 20) / kPage + 1);

  auto copy = copy_memory_data(*source, "private-memory-test-overlaid");
  ASSERT_TRUE(copy) << copy.error().message();
  RamCopyStats stats;
  auto laid = overlay_private_pages(::getpid(), *address, **copy, &stats);
  ASSERT_TRUE(laid) << laid.error().message();
  EXPECT_EQ(stats.private_pages, *counted);
  EXPECT_TRUE(contents(**copy) == std::string(ram, kBytes)) << "the copy is not what the VM sees";
  EXPECT_TRUE(is_hole(**copy, kPage)) << "a page zeroed by the VM becomes a hole";
  EXPECT_EQ(contents(*source).substr(1 << 20, 16), random_bytes(2 << 20, 5).substr(1 << 20, 16))
      << "the template is untouched";
  ::munmap(mapped, kBytes);
}

} // namespace
} // namespace vesicle::vmm
