// Every fuzz target (tests/fuzz/targets.cmake) run over its seed corpus
// and over every input that once crashed it (tests/fuzz/regressions), in
// the normal build and under ASan + UBSan: the fuzz build is clang's, and
// this keeps the targets compiling and their properties holding with g++.
// A property that fails aborts the test (fuzz_check.hpp).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>

#include "tests/fuzz/fuzz_check.hpp"

#define VESICLE_FUZZ_TARGET(name)                                                                  \
  extern "C" int name##_one_input(const std::uint8_t* data, std::size_t size);
VESICLE_FUZZ_TARGET(fuzz_frame_decoder)
VESICLE_FUZZ_TARGET(fuzz_guest_event)
VESICLE_FUZZ_TARGET(fuzz_dns)
VESICLE_FUZZ_TARGET(fuzz_peek_tls)
VESICLE_FUZZ_TARGET(fuzz_peek_http)
VESICLE_FUZZ_TARGET(fuzz_query)
VESICLE_FUZZ_TARGET(fuzz_api_json)
VESICLE_FUZZ_TARGET(fuzz_json)
VESICLE_FUZZ_TARGET(fuzz_mcp)

namespace {

namespace fs = std::filesystem;
using Entry = int (*)(const std::uint8_t*, std::size_t);

const std::map<std::string, Entry>& targets() {
  static const std::map<std::string, Entry> table = {
      {"fuzz_frame_decoder", fuzz_frame_decoder_one_input},
      {"fuzz_guest_event", fuzz_guest_event_one_input},
      {"fuzz_dns", fuzz_dns_one_input},
      {"fuzz_peek_tls", fuzz_peek_tls_one_input},
      {"fuzz_peek_http", fuzz_peek_http_one_input},
      {"fuzz_query", fuzz_query_one_input},
      {"fuzz_api_json", fuzz_api_json_one_input},
      {"fuzz_json", fuzz_json_one_input},
      {"fuzz_mcp", fuzz_mcp_one_input},
  };
  return table;
}

const fs::path kFuzzDir = VESICLE_FUZZ_DIR;

// Feeds every file under `dir` (if it exists) to `entry`; returns how many.
int replay(const fs::path& dir, Entry entry) {
  if (!fs::is_directory(dir)) return 0;
  int count = 0;
  for (const auto& file : fs::directory_iterator(dir)) {
    std::ifstream in(file.path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    SCOPED_TRACE(file.path().string());
    entry(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
    ++count;
  }
  return count;
}

TEST(FuzzReplay, EveryTargetHasASeedCorpus) {
  for (const auto& [name, entry] : targets())
    EXPECT_GT(replay(kFuzzDir / "corpus" / name, entry), 0) << name << " has no seeds";
  // A corpus folder without a target here would never be replayed.
  for (const auto& dir : fs::directory_iterator(kFuzzDir / "corpus"))
    EXPECT_TRUE(targets().count(dir.path().filename().string())) << dir.path();
}

TEST(FuzzReplay, InputsThatOnceCrashedNoLonger) {
  for (const auto& [name, entry] : targets())
    replay(kFuzzDir / "regressions" / name, entry);
  if (!fs::is_directory(kFuzzDir / "regressions")) return;
  for (const auto& dir : fs::directory_iterator(kFuzzDir / "regressions"))
    EXPECT_TRUE(targets().count(dir.path().filename().string())) << dir.path();
}

} // namespace
