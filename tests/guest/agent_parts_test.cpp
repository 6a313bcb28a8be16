// Unit tests of the agent's pure parts: the REPL pipe protocol, the UTF-8
// cleaning of texts bound for protobuf strings, and the output budget.
#include <gtest/gtest.h>

#include "guest/agent/cgroup.hpp"
#include "guest/agent/events.hpp"
#include "guest/agent/output.hpp"
#include "guest/agent/repl_protocol.hpp"

namespace vesicle::agent {
namespace {

TEST(ReplProtocol, RoundTripsBinaryFields) {
  const std::string code("print('\0\xff')", 12);
  std::string wire = repl_protocol::encode({{'k', "exec"}, {'q', "7"}, {'c', code}});
  wire += repl_protocol::encode({{'k', "done"}});
  std::string partial = wire.substr(0, 10);
  auto none = repl_protocol::take(partial);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none.value());

  auto first = repl_protocol::take(wire);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(first.value());
  const auto& fields = *first.value();
  ASSERT_EQ(fields.size(), 3u);
  EXPECT_EQ(*repl_protocol::find(fields, 'c'), code);
  EXPECT_EQ(*repl_protocol::find(fields, 'q'), "7");
  EXPECT_EQ(repl_protocol::find(fields, 'r'), nullptr);
  auto second = repl_protocol::take(wire);
  ASSERT_TRUE(second.ok() && second.value());
  EXPECT_EQ(*repl_protocol::find(*second.value(), 'k'), "done");
  EXPECT_TRUE(wire.empty());
}

TEST(ReplProtocol, RejectsOversizedAndMalformedMessages) {
  std::string huge("\xff\xff\xff\x0f", 4);
  EXPECT_FALSE(repl_protocol::take(huge).ok());
  // A field that claims more bytes than its message holds.
  std::string bad("\x06\x00\x00\x00k\x09\x00\x00\x00x", 10);
  EXPECT_FALSE(repl_protocol::take(bad).ok());
}

TEST(CleanUtf8, KeepsValidTextAndReplacesTheRest) {
  EXPECT_EQ(clean_utf8("h\xc3\xa9llo \xe6\x96\x87", 100), "h\xc3\xa9llo \xe6\x96\x87");
  EXPECT_EQ(clean_utf8("a\xff"
                       "b",
                       100),
            "a\xef\xbf\xbd"
            "b");
  // An encoded surrogate and an overlong form are not UTF-8.
  EXPECT_EQ(clean_utf8("\xed\xa0\x80", 100), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(clean_utf8("\xc0\xaf", 100), "\xef\xbf\xbd\xef\xbf\xbd");
  // Cut on a character boundary.
  EXPECT_EQ(clean_utf8("ab\xc3\xa9", 3), "ab");
}

TEST(OutputBudget, AdmitsUpToTheCapThenFlagsTruncation) {
  OutputBudget budget(10);
  EXPECT_EQ(budget.admit("123456"), "123456");
  EXPECT_FALSE(budget.truncated());
  EXPECT_EQ(budget.admit("789012"), "7890");
  EXPECT_TRUE(budget.truncated());
  EXPECT_TRUE(budget.exhausted());
  EXPECT_EQ(budget.admit("x"), "");
}

TEST(WorkloadLimits, LeaveTheAgentItsReserveAndBindPidsBeforeMemory) {
  // A 512 MiB VM: about 480 MiB total, 430 MiB available at boot.
  const auto small = workload_limits_for(480ull << 20, 430ull << 20);
  EXPECT_EQ(small.memory_max_bytes, (430ull - 48) << 20);
  EXPECT_EQ(small.pids_max, (430ull - 48) * 2);
  // A fork bomb of ~400 KiB shells hits pids.max before memory.max.
  EXPECT_LT(small.pids_max * (400ull << 10), small.memory_max_bytes);
  const auto large = workload_limits_for(64ull << 30, 60ull << 30);
  EXPECT_EQ(large.pids_max, 32768u);
  // Too little memory to split: no memory limit, the pids floor.
  const auto tiny = workload_limits_for(90ull << 20, 80ull << 20);
  EXPECT_EQ(tiny.memory_max_bytes, 0u);
  EXPECT_EQ(tiny.pids_max, 512u);
}

} // namespace
} // namespace vesicle::agent
