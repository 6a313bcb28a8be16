#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "hostd/ndjson.hpp"
#include "messages/api.pb.h"

using namespace vesicle;
using namespace vesicle::hostd;

TEST(Utf8, Validation) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("plain ascii\n"));
  EXPECT_TRUE(is_valid_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80")); // é € 😀
  EXPECT_FALSE(is_valid_utf8("\xff"));
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));         // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));     // surrogate U+D800
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80")); // past U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xe2\x82"));         // cut short
  EXPECT_FALSE(is_valid_utf8(std::string_view("a\x80", 2)));
  EXPECT_TRUE(is_valid_utf8(std::string_view("a\0b", 3))); // NUL is valid UTF-8
}

TEST(Utf8HoldBack, ACharacterSplitAcrossChunksIsHeldAndJoined) {
  Utf8HoldBack holdback;
  // "€" is e2 82 ac; split after each of its first two bytes.
  EXPECT_EQ(holdback.feed("price: \xe2"), "price: ");
  EXPECT_TRUE(holdback.holding());
  EXPECT_EQ(holdback.feed("\x82"), "");
  EXPECT_EQ(holdback.feed("\xac!"), "\xe2\x82\xac!");
  EXPECT_FALSE(holdback.holding());
}

TEST(Utf8HoldBack, EveryCutOfAFourByteCharacter) {
  const std::string emoji = "\xf0\x9f\x98\x80";
  for (std::size_t cut = 1; cut < emoji.size(); ++cut) {
    Utf8HoldBack holdback;
    auto first = holdback.feed("x" + emoji.substr(0, cut));
    auto second = holdback.feed(emoji.substr(cut) + "y");
    EXPECT_EQ(first, "x") << "cut " << cut;
    EXPECT_EQ(second, emoji + "y") << "cut " << cut;
    EXPECT_TRUE(is_valid_utf8(first) && is_valid_utf8(second));
  }
}

TEST(Utf8HoldBack, InvalidBytesAreNotHeld) {
  Utf8HoldBack holdback;
  // A lone continuation byte or a byte that can never start a sequence is
  // passed on at once (it goes out as base64), not held forever.
  EXPECT_EQ(holdback.feed("a\x80"), "a\x80");
  EXPECT_EQ(holdback.feed("b\xff"), "b\xff");
  // A lead byte followed by a wrong second byte is no valid prefix either.
  EXPECT_EQ(holdback.feed("\xe0\x80"), "\xe0\x80");
  EXPECT_FALSE(holdback.holding());
}

TEST(Utf8HoldBack, FlushReturnsWhatIsLeftAtTheEnd) {
  Utf8HoldBack holdback;
  EXPECT_EQ(holdback.feed("ab\xc3"), "ab");
  EXPECT_EQ(holdback.flush(), "\xc3");
  EXPECT_FALSE(holdback.holding());
  EXPECT_EQ(holdback.flush(), "");
}

namespace {

guest::Event out(std::string bytes) {
  guest::Event event;
  event.set_stdout(std::move(bytes));
  return event;
}

template <class M> M parse(const std::string& line) {
  M message;
  EXPECT_EQ(line.back(), '\n');
  auto status = google::protobuf::util::JsonStringToMessage(line, &message);
  EXPECT_TRUE(status.ok()) << line;
  return message;
}

} // namespace

TEST(ExecEventEncoder, TextBytesAndTheExitComeOutAsNdjson) {
  ExecEventEncoder encoder;
  auto lines = encoder.encode(out("hello \xe2\x82"));
  ASSERT_EQ(lines.size(), 1u);
  auto first = parse<api::OutputEvent>(lines[0]);
  EXPECT_EQ(first.type(), "stdout");
  EXPECT_EQ(first.data(), "hello ");
  EXPECT_EQ(first.seq(), 1u);
  EXPECT_FALSE(first.ts().empty());

  lines = encoder.encode(out("\xac"));
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(parse<api::OutputEvent>(lines[0]).data(), "\xe2\x82\xac");

  lines = encoder.encode(out(std::string("\x00\xff\xfe", 3)));
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("\"data_b64\":\"AP/+\""), std::string::npos) << lines[0];
  EXPECT_EQ(lines[0].find("\"data\""), std::string::npos);

  guest::Event result;
  result.set_result("42");
  lines = encoder.encode(result);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(parse<api::ResultEvent>(lines[0]).data(), "42");

  guest::Exit exit;
  exit.set_exit_code(0);
  exit.set_duration_us(12'345);
  lines = encoder.finish(exit);
  ASSERT_EQ(lines.size(), 1u);
  auto last = parse<api::ExitEvent>(lines[0]);
  EXPECT_EQ(last.type(), "exit");
  EXPECT_EQ(last.seq(), 5u);
  EXPECT_EQ(last.duration_ms(), 12u);
  // Every field of the exit is printed, zeros included; no failure unless
  // there is one.
  EXPECT_NE(lines[0].find("\"exit_code\":0"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("\"timed_out\":false"), std::string::npos);
  EXPECT_EQ(lines[0].find("failure"), std::string::npos);
}

TEST(ExecEventEncoder, HeldBytesAreFlushedBeforeTheExitAndTheFailureIsCarried) {
  ExecEventEncoder encoder;
  EXPECT_EQ(encoder.encode(out("ok\xf0\x9f")).size(), 1u);
  auto lines = encoder.finish(guest::Exit{}, "sandbox_died", "sandbox sb-1 died");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_NE(lines[0].find("\"data_b64\":\"8J8=\""), std::string::npos) << lines[0];
  auto last = parse<api::ExitEvent>(lines[1]);
  EXPECT_EQ(last.failure().code(), "sandbox_died");
  EXPECT_EQ(last.seq(), 3u);
}

TEST(ExecEventEncoder, PythonErrorsKeepTheirParts) {
  ExecEventEncoder encoder;
  guest::Event event;
  event.mutable_error()->set_name("ZeroDivisionError");
  event.mutable_error()->set_value("division by zero");
  event.mutable_error()->set_traceback("Traceback ...");
  auto lines = encoder.encode(event);
  ASSERT_EQ(lines.size(), 1u);
  auto error = parse<api::ErrorEvent>(lines[0]);
  EXPECT_EQ(error.type(), "error");
  EXPECT_EQ(error.name(), "ZeroDivisionError");
  EXPECT_EQ(error.value(), "division by zero");
}
