#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "hostd/metrics.hpp"
#include "hostd/smaps_rollup.hpp"

using namespace vesicle::hostd;

namespace {

// A QEMU's smaps_rollup as Linux 6.x writes it (a pool sandbox: most of
// its RSS is the template's RAM, shared with its siblings).
const std::string kQemu =
    R"(55d3adaa6000-7ffc6f62b000 ---p 00000000 00:00 0                          [rollup]
Rss:              243712 kB
Pss:               54171 kB
Pss_Dirty:         40100 kB
Pss_Anon:          38000 kB
Pss_File:           2171 kB
Pss_Shmem:         14000 kB
Shared_Clean:     190000 kB
Shared_Dirty:       3000 kB
Private_Clean:       712 kB
Private_Dirty:     50000 kB
Referenced:       243712 kB
Anonymous:         38000 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
)";

std::string without(const std::string& text, const std::string& line_start) {
  auto at = text.find("\n" + line_start);
  if (at == std::string::npos) return text;
  auto end = text.find('\n', at + 1);
  return text.substr(0, at) + text.substr(end);
}

} // namespace

TEST(SmapsRollup, PssAndUssOfAQemu) {
  auto footprint = parse_smaps_rollup(kQemu);
  ASSERT_TRUE(footprint);
  EXPECT_EQ(footprint->pss_bytes, 54171u * 1024);
  EXPECT_EQ(footprint->uss_bytes, (712u + 50000u) * 1024);
}

TEST(SmapsRollup, OlderKernelsWithoutTheSplitPssLinesAndCrlfStillParse) {
  // Before 5.14 there are no Pss_Anon/Pss_File/Pss_Shmem/Pss_Dirty lines.
  std::string old = "00400000-7fff00000000 ---p 00000000 00:00 0 [rollup]\n"
                    "Rss: 100 kB\nPss:\t80 kB\r\nPrivate_Clean: 0 kB\nPrivate_Dirty: 60 kB";
  auto footprint = parse_smaps_rollup(old);
  ASSERT_TRUE(footprint);
  EXPECT_EQ(footprint->pss_bytes, 80u * 1024);
  EXPECT_EQ(footprint->uss_bytes, 60u * 1024);
}

TEST(SmapsRollup, AMissingFieldIsNothing) {
  EXPECT_FALSE(parse_smaps_rollup(without(kQemu, "Pss:")));
  EXPECT_FALSE(parse_smaps_rollup(without(kQemu, "Private_Clean:")));
  EXPECT_FALSE(parse_smaps_rollup(without(kQemu, "Private_Dirty:")));
  EXPECT_FALSE(parse_smaps_rollup(""));
  // Pss_Anon is not Pss: a prefix match would take it.
  EXPECT_FALSE(parse_smaps_rollup("Pss_Anon: 5 kB\nPrivate_Clean: 1 kB\nPrivate_Dirty: 1 kB\n"));
}

TEST(SmapsRollup, GarbageIsNothing) {
  const std::string tail = "Private_Clean: 1 kB\nPrivate_Dirty: 2 kB\n";
  EXPECT_FALSE(parse_smaps_rollup("Pss: lots kB\n" + tail));
  EXPECT_FALSE(parse_smaps_rollup("Pss: -5 kB\n" + tail));
  EXPECT_FALSE(parse_smaps_rollup("Pss: 5 MB\n" + tail));
  EXPECT_FALSE(parse_smaps_rollup("Pss: 5\n" + tail));
  EXPECT_FALSE(parse_smaps_rollup("Pss: 5 kB trailing\n" + tail));
  EXPECT_FALSE(parse_smaps_rollup("Pss:\n" + tail));
  // Too big for bytes in 64 bits, and a sum that would wrap.
  EXPECT_FALSE(parse_smaps_rollup("Pss: 99999999999999999999999 kB\n" + tail));
  EXPECT_FALSE(parse_smaps_rollup("Pss: 18014398509481984 kB\n" + tail));
  EXPECT_FALSE(parse_smaps_rollup(
      "Pss: 1 kB\nPrivate_Clean: 18014398509481983 kB\nPrivate_Dirty: 18014398509481983 kB\n"));
  // A field twice is not what the kernel writes.
  EXPECT_FALSE(parse_smaps_rollup("Pss: 1 kB\nPss: 2 kB\n" + tail));
  EXPECT_FALSE(parse_smaps_rollup(std::string("Pss: 1\0 kB\n", 11) + tail));
  EXPECT_FALSE(parse_smaps_rollup("\x01\x02\xff:::\n\n:\n"));
}

TEST(SmapsRollup, ThisProcessHasAFootprintAndAGoneOneHasNothing) {
  auto self = memory_footprint(::getpid());
  ASSERT_TRUE(self);
  EXPECT_GT(self->pss_bytes, 0u);
  EXPECT_GT(self->uss_bytes, 0u);
  EXPECT_FALSE(memory_footprint(0));
  EXPECT_FALSE(memory_footprint(-1));
}

TEST(SandboxMemoryMetrics, OneSeriesPerSandboxAndTheTotals) {
  auto text = render_sandbox_memory({{"sb-a", {.pss_bytes = 100, .uss_bytes = 40}},
                                     {"sb-\"b\"\n", {.pss_bytes = 50, .uss_bytes = 10}}});
  EXPECT_NE(text.find("# TYPE vesicle_sandbox_pss_bytes gauge\n"), std::string::npos);
  EXPECT_NE(text.find("\nvesicle_sandbox_pss_bytes{sandbox=\"sb-a\"} 100\n"), std::string::npos);
  EXPECT_NE(text.find("\nvesicle_sandbox_uss_bytes{sandbox=\"sb-a\"} 40\n"), std::string::npos);
  // A label value stays one line with its quotes escaped.
  EXPECT_NE(text.find("\nvesicle_sandbox_pss_bytes{sandbox=\"sb-\\\"b\\\"\\n\"} 50\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("\nvesicle_sandboxes_pss_bytes 150\n"), std::string::npos);
  EXPECT_NE(text.find("\nvesicle_sandboxes_uss_bytes 50\n"), std::string::npos);
  // No sandbox: the totals are 0, the per-sandbox gauges have no series.
  auto empty = render_sandbox_memory({});
  EXPECT_NE(empty.find("\nvesicle_sandboxes_pss_bytes 0\n"), std::string::npos);
  EXPECT_EQ(empty.find("vesicle_sandbox_pss_bytes{"), std::string::npos);
}
