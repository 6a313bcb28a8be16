// common/record_file: the "key value" reader under the Space and template
// files; its errors name the line and the key.
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "common/record_file.hpp"

using namespace vesicle;

namespace {

constexpr RecordFormat kFormat{"vesicle-thing", 1, "thing"};

// Reads `text`, taking the keys "name" (any value) and "size" (a number).
Result<std::map<std::string, std::string>> read(std::string_view text) {
  std::map<std::string, std::string> seen;
  auto read = read_record_lines(text, kFormat, [&](const RecordLine& line) {
    unsigned size = 0;
    if (line.key == "name") {
      seen["name"] = line.value;
    } else if (line.key == "size") {
      if (!line.number_value(size)) return RecordLineOutcome::bad_value;
      seen["size"] = std::to_string(size);
    } else {
      return RecordLineOutcome::unknown_key;
    }
    return RecordLineOutcome::taken;
  });
  if (!read) return std::move(read).error();
  return seen;
}

std::string message_of(std::string_view text) {
  auto result = read(text);
  return result ? "(read)" : result.error().message();
}

} // namespace

TEST(RecordFile, ReadsKeysAfterTheHeaderAndSkipsBlankLines) {
  auto seen = read("vesicle-thing 1\nname a b\n\nsize 42\nname\n");
  ASSERT_TRUE(seen) << seen.error().message();
  EXPECT_EQ(seen->at("name"), "") << "a line without a space has an empty value";
  EXPECT_EQ(seen->at("size"), "42");
}

TEST(RecordFile, ErrorsNameTheLineTheKeyAndWhy) {
  EXPECT_EQ(message_of("other 1\n"), "parse thing: line 1 (other): not a vesicle thing file");
  EXPECT_EQ(message_of("vesicle-thing 2\n"),
            "parse thing: line 1 (vesicle-thing): written by another version of vesicle; this "
            "hostd reads version 1");
  EXPECT_EQ(message_of("vesicle-thing 1\n\ncolour red\n"),
            "parse thing: line 3 (colour): unknown key");
  EXPECT_EQ(message_of("vesicle-thing 1\nsize 4x\n"),
            "parse thing: line 2 (size): not a valid value");
  EXPECT_EQ(message_of(""), "parse thing: empty file");
  // A blank first line is no header: what follows is read as keys.
  EXPECT_EQ(message_of("\nname x\n"), "parse thing: empty file");
}

TEST(RecordFile, FlagsAreZeroOrOne) {
  bool flag = false;
  EXPECT_TRUE((RecordLine{2, "on", "1"}.flag_value(flag)));
  EXPECT_TRUE(flag);
  EXPECT_TRUE((RecordLine{2, "on", "0"}.flag_value(flag)));
  EXPECT_FALSE(flag);
  EXPECT_FALSE((RecordLine{2, "on", "yes"}.flag_value(flag)));
}
