// The hostd binary's command line and first log lines, without VMs: a bad
// --log-level or log_level is refused with the accepted names, and what
// hostd logs is in the logger's format.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include <gtest/gtest.h>

#include "tests/vmm/test_support.hpp"

namespace {

using vesicle::test::TempDir;

struct Outcome {
  int status = -1;
  std::string output; // stdout and stderr
};

Outcome run_shell(const std::string& command) {
  Outcome outcome;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return outcome;
  char buffer[4096];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;)
    outcome.output.append(buffer, n);
  const int status = ::pclose(pipe);
  outcome.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return outcome;
}

Outcome run_hostd(const std::string& arguments) {
  return run_shell(std::string(HOSTD_BINARY) + " " + arguments + " 2>&1");
}

TEST(HostdCli, AnUnknownLogLevelIsRefusedWithTheAcceptedNames) {
  auto refused = run_hostd("--log-level nonsense");
  EXPECT_EQ(refused.status, 1) << refused.output;
  EXPECT_EQ(refused.output, "hostd: unknown --log-level \"nonsense\": use debug, info, warn or "
                            "error\n");
  // Case matters, as in the configuration file.
  EXPECT_EQ(run_hostd("--log-level INFO").status, 1);
}

TEST(HostdCli, TheFlagOverridesTheFileAndShowsInTheEffectiveConfiguration) {
  TempDir dir;
  const auto config = dir.path() / "hostd.conf";
  std::ofstream(config) << "log_level: \"warn\"\n";
  auto from_file = run_hostd("--config " + config.string() + " --print-config");
  EXPECT_EQ(from_file.status, 0) << from_file.output;
  EXPECT_NE(from_file.output.find("log_level: \"warn\""), std::string::npos) << from_file.output;
  auto flag = run_hostd("--config " + config.string() + " --log-level debug --print-config");
  EXPECT_EQ(flag.status, 0) << flag.output;
  EXPECT_NE(flag.output.find("log_level: \"debug\""), std::string::npos) << flag.output;
  auto fallback = run_hostd("--print-config");
  EXPECT_NE(fallback.output.find("log_level: \"info\""), std::string::npos) << fallback.output;
}

TEST(HostdCli, AnUnknownLogLevelInTheFileIsRefusedAsALogLine) {
  TempDir dir;
  const auto config = dir.path() / "hostd.json";
  std::ofstream(config) << R"({"log_level": "loud"})";
  auto refused = run_hostd("--config " + config.string() + " --print-config");
  EXPECT_EQ(refused.status, 1) << refused.output;
  // One line: timestamp, level, message, then the error naming the field,
  // the value and the accepted names (quoted: it holds spaces and '=').
  const std::regex line(
      "\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z error hostd cannot go on "
      "error=\"[^\"\n]*log_level = loud[^\"\n]*debug, info, warn or error[^\"\n]*\"\n");
  EXPECT_TRUE(std::regex_match(refused.output, line)) << refused.output;
}

TEST(HostdCli, UnderJournaldTheLineCarriesItsPriorityAndNoTimestamp) {
  // journald names the stream it reads in JOURNAL_STREAM (device:inode);
  // here that stream is a file, the same for hostd's stderr.
  TempDir dir;
  const auto config = dir.path() / "hostd.json";
  const auto log = dir.path() / "stderr";
  std::ofstream(config) << R"({"log_level": "loud"})";
  const std::string hostd = std::string(HOSTD_BINARY) + " --config " + config.string();
  auto refused = run_shell(hostd + " 2>" + log.string() + "; JOURNAL_STREAM=$(stat -c %d:%i " +
                           log.string() + ") " + hostd + " 2>>" + log.string());
  EXPECT_EQ(refused.status, 1) << refused.output;
  std::ifstream in(log);
  std::string first, second;
  std::getline(in, first);
  std::getline(in, second);
  EXPECT_TRUE(std::regex_match(first, std::regex("\\d{4}-.*Z error hostd cannot go on .*")))
      << first;
  EXPECT_TRUE(std::regex_match(second, std::regex("<3>error hostd cannot go on error=\".*")))
      << second;
}

TEST(HostdCli, AStartThatCannotGoOnSaysWhyInTheLogFormat) {
  // Everything in a temporary directory; the images are missing, so hostd
  // stops before it reclaims, serves or starts a VM.
  TempDir dir;
  const auto config = dir.path() / "hostd.json";
  std::ofstream(config) << R"({"state_dir": ")" << (dir.path() / "state").string()
                        << R"(", "runtime_dir": ")" << (dir.path() / "run").string()
                        << R"(", "images_dir": ")" << (dir.path() / "no-images").string()
                        << R"("})";
  auto failed = run_hostd("--config " + config.string() + " --log-level error");
  EXPECT_EQ(failed.status, 1) << failed.output;
  EXPECT_TRUE(
      std::regex_search(failed.output, std::regex("Z error hostd cannot go on error=\"[^\"\n]*"
                                                  "no-images/vmlinuz[^\n]*\n")))
      << failed.output;
}

} // namespace
