// SpareCopy: a template's RAM copied ahead of the fork that takes it.
#include "vmm/spare_copy.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace vesicle::vmm {
namespace {

constexpr std::uint64_t kBytes = 4 << 20;

std::shared_ptr<GuestMemory> template_with(const std::string& text, std::uint64_t at) {
  auto made = GuestMemory::create("spare-test-source", kBytes);
  EXPECT_TRUE(made) << made.error().message();
  auto memory = std::move(made).value();
  EXPECT_EQ(::pwrite(memory->fd(), text.data(), text.size(), static_cast<off_t>(at)),
            static_cast<ssize_t>(text.size()));
  EXPECT_TRUE(memory->seal());
  return memory;
}

std::string read_at(const GuestMemory& memory, std::uint64_t at, std::size_t n) {
  std::string out(n, '\0');
  EXPECT_EQ(::pread(memory.fd(), out.data(), n, static_cast<off_t>(at)), static_cast<ssize_t>(n));
  return out;
}

bool wait_ready(const SpareCopy& spare) {
  for (int i = 0; i < 500 && !spare.ready(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return spare.ready();
}

TEST(SpareCopy, IsMadeAheadAndTakingItStartsTheNext) {
  auto source = template_with("the template's data", 3 << 20);
  auto spare = SpareCopy::of(source, "spare-test");
  EXPECT_FALSE(spare->ready()); // nothing before refill
  EXPECT_EQ(spare->take(), nullptr) << "no copy was asked for yet";
  // take() started one.
  ASSERT_TRUE(wait_ready(*spare));
  auto first = spare->take();
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(read_at(*first, 3 << 20, 19), "the template's data");
  EXPECT_FALSE(first->sealed()) << "the fork lays its pages over it, then seals it";
  // A hole stays a hole: the copy holds the data page only.
  struct stat st {};
  ASSERT_EQ(::fstat(first->fd(), &st), 0);
  EXPECT_LE(static_cast<std::uint64_t>(st.st_blocks) * 512, 64u << 10);
  // Writable: a fork writes the guest's pages into it; the template is untouched.
  ASSERT_EQ(::pwrite(first->fd(), "X", 1, 3 << 20), 1);
  EXPECT_EQ(read_at(*source, 3 << 20, 3), "the");
  ASSERT_TRUE(wait_ready(*spare));
  auto second = spare->take();
  ASSERT_NE(second, nullptr);
  EXPECT_NE(second, first) << "each fork gets a copy of its own";
  EXPECT_EQ(read_at(*second, 3 << 20, 3), "the");
}

TEST(SpareCopy, StopsWhenTheTemplateIsGone) {
  auto source = template_with("gone soon", 0);
  auto spare = SpareCopy::of(source, "spare-test");
  source.reset();
  spare->refill();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(spare->ready());
  EXPECT_EQ(spare->take(), nullptr);
}

} // namespace
} // namespace vesicle::vmm
