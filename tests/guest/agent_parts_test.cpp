// Unit tests of the agent's pure parts: the REPL pipe protocol, the UTF-8
// cleaning of texts bound for protobuf strings, the output budget, and the
// identity refresh's checks and machine-id file.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "guest/agent/cgroup.hpp"
#include "guest/agent/events.hpp"
#include "guest/agent/identity.hpp"
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

TEST(IdentityChecks, HostnamesFollowRfc1123Labels) {
  for (const std::string& good : std::vector<std::string>{
           "a", "vesicle", "Sandbox-7", "1", "9lives", "a.b.c", "x-1.example-2",
           std::string(63, 'a'), std::string(31, 'a') + "." + std::string(32, 'b')}) {
    EXPECT_EQ(check_hostname(good), "") << good;
  }
  const std::pair<std::string, const char*> bad[] = {
      {"", "empty"},
      {std::string(65, 'a'), "65 characters"},
      {std::string(64, 'a'), "label of 64"},
      {"a_b", "outside letters"},
      {"caf\xc3\xa9", "outside letters"},
      {"-a", "starts or ends"},
      {"a-", "starts or ends"},
      {".a", "empty label"},
      {"a.", "empty label"},
      {"a..b", "empty label"},
      {std::string("a\nb"), "\\x0a"},
  };
  for (const auto& [name, says] : bad) {
    const std::string problem = check_hostname(name);
    EXPECT_NE(problem.find(says), std::string::npos) << "[" << name << "]: " << problem;
  }
}

TEST(IdentityChecks, MachineIdsAre32LowercaseHexNotAllZero) {
  EXPECT_EQ(check_machine_id("0123456789abcdef0123456789abcdef"), "");
  EXPECT_EQ(check_machine_id("00000000000000000000000000000001"), "");
  EXPECT_NE(check_machine_id(""), "");
  EXPECT_NE(check_machine_id("0123456789abcdef0123456789abcde"), "");
  EXPECT_NE(check_machine_id("0123456789ABCDEF0123456789ABCDEF"), "");
  EXPECT_NE(check_machine_id("0123456789abcdef0123456789abcdeg"), "");
  EXPECT_NE(check_machine_id("01234567-89ab-cdef-0123-456789abcdef"), "");
  EXPECT_NE(check_machine_id(std::string(32, '0')).find("all zeros"), std::string::npos);
}

TEST(IdentityChecks, EntropyAndTimeBounds) {
  guest::RefreshIdentity identity;
  identity.set_entropy(std::string(kMinIdentityEntropyBytes, 'x'));
  identity.set_unix_time_ns(kMinIdentityUnixTimeNs);
  identity.set_hostname("box");
  identity.set_machine_id("0123456789abcdef0123456789abcdef");
  EXPECT_EQ(check_identity(identity), "");
  identity.set_entropy(std::string(kMaxIdentityEntropyBytes, 'x'));
  EXPECT_EQ(check_identity(identity), "");
  identity.set_entropy(std::string(kMaxIdentityEntropyBytes + 1, 'x'));
  EXPECT_NE(check_identity(identity).find("entropy"), std::string::npos);
  identity.set_entropy(std::string(kMinIdentityEntropyBytes - 1, 'x'));
  EXPECT_NE(check_identity(identity).find("entropy"), std::string::npos);
  identity.set_entropy(std::string(64, 'x'));
  identity.set_unix_time_ns(kMinIdentityUnixTimeNs - 1);
  EXPECT_NE(check_identity(identity).find("unix_time_ns"), std::string::npos);
}

class MachineIdFile : public ::testing::Test {
protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "vesicle-mid-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string read(const std::filesystem::path& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  std::filesystem::path dir_;
};

TEST_F(MachineIdFile, ReplacesTheOldFileAndLeavesNoTemporary) {
  const auto path = dir_ / "machine-id";
  std::ofstream(path) << "uninitialized\n";
  ASSERT_TRUE(write_machine_id(path.string(), "0123456789abcdef0123456789abcdef").ok());
  EXPECT_EQ(read(path), "0123456789abcdef0123456789abcdef\n");
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0444u);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "machine-id.vesicle-new"));
}

TEST_F(MachineIdFile, PlantedSymlinkAtTheTemporaryNameIsNotFollowed) {
  const auto path = dir_ / "machine-id";
  const auto victim = dir_ / "victim";
  std::ofstream(victim) << "keep me\n";
  std::filesystem::create_symlink(victim, dir_ / "machine-id.vesicle-new");
  ASSERT_TRUE(write_machine_id(path.string(), "fedcba9876543210fedcba9876543210").ok());
  EXPECT_EQ(read(victim), "keep me\n");
  EXPECT_EQ(read(path), "fedcba9876543210fedcba9876543210\n");
}

TEST_F(MachineIdFile, MissingFolderIsAnErrorNamingThePath) {
  const auto path = dir_ / "nope" / "machine-id";
  auto written = write_machine_id(path.string(), "fedcba9876543210fedcba9876543210");
  ASSERT_FALSE(written.ok());
  EXPECT_EQ(written.error().errno_value, ENOENT);
  EXPECT_NE(written.error().message().find(path.string()), std::string::npos)
      << written.error().message();
}

TEST(IdentityApply, TestModeTargetsTouchOnlyTheMachineIdFile) {
  // kernel=false is what the host test mode uses: nothing but the file.
  char before[256] = {};
  ::gethostname(before, sizeof before - 1);
  guest::RefreshIdentity identity;
  identity.set_entropy(std::string(64, 'x'));
  identity.set_unix_time_ns(kMinIdentityUnixTimeNs);
  identity.set_hostname("not-this-host");
  identity.set_machine_id("0123456789abcdef0123456789abcdef");
  IdentityTargets targets;
  EXPECT_TRUE(apply_identity(identity, targets).empty());
  char after[256] = {};
  ::gethostname(after, sizeof after - 1);
  EXPECT_STREQ(before, after);
  // The clock was not set to 2000.
  EXPECT_GT(::time(nullptr), 1700000000);
}

} // namespace
} // namespace vesicle::agent
