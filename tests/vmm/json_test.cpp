#include "vmm/json.hpp"

#include <gtest/gtest.h>

#include <limits>

namespace vesicle::json {
namespace {

TEST(Json, ParsesAQmpReply) {
  auto value = parse(R"({"return": {"status": "running", "running": true, "pid": 1234, "ratio": 0.5,
                         "list": [1, "two", null, false]}, "id": 7})");
  ASSERT_TRUE(value) << value.error().message();
  EXPECT_EQ(value.value()["id"].as_int(), 7);
  const auto& ret = value.value()["return"];
  EXPECT_EQ(ret["status"].as_string(), "running");
  EXPECT_TRUE(ret["running"].as_bool());
  EXPECT_EQ(ret["pid"].as_int(), 1234);
  EXPECT_DOUBLE_EQ(ret["ratio"].as_double(), 0.5);
  ASSERT_EQ(ret["list"].as_array().size(), 4u);
  EXPECT_EQ(ret["list"].as_array()[1].as_string(), "two");
  EXPECT_TRUE(ret["list"].as_array()[2].is_null());
  EXPECT_TRUE(ret["absent"].is_null());
  EXPECT_FALSE(ret.contains("absent"));
}

TEST(Json, DecodesEscapesAndSurrogatePairs) {
  auto value = parse(R"("a\"b\\c\/d\n\t\u00e9\u2603\ud83d\ude00\ud800x")");
  ASSERT_TRUE(value) << value.error().message();
  EXPECT_EQ(value->as_string(), "a\"b\\c/d\n\t\xc3\xa9\xe2\x98\x83\xf0\x9f\x98\x80\xef\xbf\xbdx");
}

TEST(Json, DumpRoundTrips) {
  Object object;
  object["execute"] = Value("ringbuf-read");
  object["arguments"] = Value(Object{{"size", Value(65536)}, {"text", Value("quote \" and \x01")}});
  const std::string text = Value(object).dump();
  EXPECT_EQ(
      text,
      R"({"arguments":{"size":65536,"text":"quote \" and \u0001"},"execute":"ringbuf-read"})");
  auto back = parse(text);
  ASSERT_TRUE(back);
  EXPECT_EQ(back.value()["arguments"]["text"].as_string(), "quote \" and \x01");
}

// Found by tests/fuzz/fuzz_json (UBSan: "9.22337e+18 is outside the range of
// representable values of type 'long'"): as_int on a number past int64's
// range was undefined behaviour; a QMP "id" or an MCP integer argument can
// be any number a peer writes.
TEST(Json, AsIntOfAnOutOfRangeNumberIsTheFallback) {
  auto value = parse("[9223372036854775808, -1e300, 1e300, 2.5, -9223372036854775808]");
  ASSERT_TRUE(value) << value.error().message();
  const auto& items = value->as_array();
  ASSERT_EQ(items.size(), 5u);
  EXPECT_EQ(items[0].as_int(-7), -7);
  EXPECT_EQ(items[1].as_int(-7), -7);
  EXPECT_EQ(items[2].as_int(-7), -7);
  EXPECT_EQ(items[3].as_int(-7), 2);
  EXPECT_EQ(items[4].as_int(-7), std::numeric_limits<std::int64_t>::min());
}

// JSON escapes controls below 0x20 as \u00XX but leaves DEL as it is (the
// log formatter, which shares the escaping, writes \x7f there).
TEST(Json, DumpEscapesControlsButNotDel) {
  EXPECT_EQ(Value("a\\b\r\x1f\x7f").dump(), R"("a\\b\r\u001f)"
                                            "\x7f"
                                            R"(")");
}

TEST(Json, RefusesMalformedInput) {
  for (const char* bad : {"", "{", "{\"a\" 1}", "[1,]", "\"unterminated", "tru", "{\"a\":1} x",
                          "\"\x01\"", "01x", "\"\\q\"", "01", "-01", "00", "[007]"}) {
    EXPECT_FALSE(parse(bad)) << bad;
  }
  for (const char* number : {"0", "-0", "0.5", "10", "-10", "0e1"})
    EXPECT_TRUE(parse(number)) << number;
  std::string deep(100, '[');
  deep += std::string(100, ']');
  auto refused = parse(deep);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("nesting"), std::string::npos);
}

TEST(Json, ANameGivenTwiceIsTheLastOrRefused) {
  const char* twice = R"({"a":1,"b":{"c":1,"c":2},"a":3})";
  auto last = parse(twice);
  ASSERT_TRUE(last);
  EXPECT_EQ((*last)["a"].as_int(), 3);
  EXPECT_EQ((*last)["b"]["c"].as_int(), 2);
  auto refused = parse(twice, DuplicateNames::refuse);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("\"c\" given twice"), std::string::npos)
      << refused.error().message();
  EXPECT_TRUE(parse(R"({"a":{"c":1},"b":{"c":2}})", DuplicateNames::refuse));
}

} // namespace
} // namespace vesicle::json
