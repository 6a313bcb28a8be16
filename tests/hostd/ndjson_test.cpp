#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <ctime>
#include <map>

#include "hostd/ndjson.hpp"
#include "hostd/rfc3339.hpp"
#include "messages/api.pb.h"
#include "messages/display.hpp"
#include "vmm/json.hpp"

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

namespace {

guest::Event display_event(std::map<std::string, std::string> data, bool main_result = false) {
  guest::Event event;
  for (auto& [mime, bytes] : data)
    (*event.mutable_display()->mutable_data())[mime] = bytes;
  event.mutable_display()->set_main_result(main_result);
  return event;
}

} // namespace

TEST(ExecEventEncoder, DisplayTextTypesAsTextTheRestAsBase64) {
  ExecEventEncoder encoder;
  EXPECT_EQ(encoder.encode(out("before \xe2\x82")).size(), 1u);
  const std::string png("\x89PNG\r\n\x1a\n", 8);
  auto lines = encoder.encode(display_event({{"image/png", png},
                                             {"text/plain", "<Figure>"},
                                             {"text/html", "<table>\xc3\xa9</table>"},
                                             {"application/vnd.x+json", "{\"a\": 1}"},
                                             {"text/latex", "\xff not UTF-8"}},
                                            true));
  // The held-back stdout bytes go out first, then the display.
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_NE(lines[0].find("\"data_b64\""), std::string::npos) << lines[0];
  auto event = parse<api::DisplayEvent>(lines[1]);
  EXPECT_EQ(event.type(), "display");
  EXPECT_TRUE(event.is_main_result());
  EXPECT_EQ(event.seq(), 3u);
  EXPECT_FALSE(event.ts().empty());
  EXPECT_EQ(event.data().at("text/plain"), "<Figure>");
  EXPECT_EQ(event.data().at("text/html"), "<table>\xc3\xa9</table>");
  EXPECT_EQ(event.data().at("application/vnd.x+json"), "{\"a\": 1}");
  EXPECT_EQ(event.data_b64().at("image/png"), png);
  EXPECT_EQ(event.data_b64().at("text/latex"), "\xff not UTF-8");
  EXPECT_EQ(event.data().size() + event.data_b64().size(), 5u);
  // On the wire: base64 under data_b64.
  EXPECT_NE(lines[1].find("\"image/png\":\"iVBORw0KGgo=\""), std::string::npos) << lines[1];
  EXPECT_NE(lines[1].find("\"is_main_result\":true"), std::string::npos) << lines[1];
}

TEST(ExecEventEncoder, DisplayOverTheLimitBecomesAStderrNote) {
  ExecEventEncoder encoder;
  auto lines =
      encoder.encode(display_event({{"image/png", std::string(display::kMaxBundleBytes, 'x')}}));
  ASSERT_EQ(lines.size(), 1u);
  auto note = parse<api::OutputEvent>(lines[0]);
  EXPECT_EQ(note.type(), "stderr");
  EXPECT_NE(note.data().find("display output of"), std::string::npos) << note.data();
  EXPECT_NE(note.data().find(std::to_string(display::kMaxBundleBytes)), std::string::npos);

  // Bad MIME types are left out; a bundle with nothing left is no event.
  lines = encoder.encode(display_event({{"not a type", "x"}, {"text/plain", "ok"}}));
  ASSERT_EQ(lines.size(), 1u);
  auto kept = parse<api::DisplayEvent>(lines[0]);
  EXPECT_EQ(kept.data().size(), 1u);
  EXPECT_FALSE(kept.is_main_result());
  EXPECT_TRUE(encoder.encode(display_event({{"nope", "x"}})).empty());
}

namespace {

// What protobuf's own printer makes of the message a line parses into, with
// hostd's options (snake_case names, every primitive printed).
template <class M> std::string reprinted(const std::string& line) {
  M message = parse<M>(line);
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string printed;
  EXPECT_TRUE(google::protobuf::util::MessageToJsonString(message, &printed, options).ok());
  return printed;
}

// The same JSON document, whatever the spelling of escapes and whitespace.
std::string canonical(const std::string& text) {
  auto value = json::parse(text);
  EXPECT_TRUE(static_cast<bool>(value)) << text;
  return value ? value->dump() : std::string("not JSON: ") + text;
}

template <class M> void expect_as_printed(const std::string& line) {
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "one line: " << line;
  EXPECT_EQ(canonical(line), canonical(reprinted<M>(line))) << line;
}

} // namespace

// The exec stream's common events are written by hand (no reflection); each
// must be the document protobuf's printer makes of the same message, for
// any text: quotes, backslashes, every control character, DEL, multi-byte
// UTF-8, U+2028, empty.
TEST(ExecEventEncoder, HandWrittenLinesAreWhatProtobufPrints) {
  std::string controls;
  for (int c = 0; c < 0x20; ++c)
    controls += static_cast<char>(c);
  const std::vector<std::string> texts = {"",
                                          "1\n",
                                          "say \"hi\" \\ back\\",
                                          controls,
                                          "del \x7f",
                                          "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
                                          "line\xe2\x80\xa8sep",
                                          "</script>",
                                          std::string(5000, 'x')};
  ExecEventEncoder encoder;
  for (const auto& text : texts) {
    auto lines = encoder.encode(out(text));
    if (text.empty()) {
      EXPECT_TRUE(lines.empty());
    } else {
      ASSERT_EQ(lines.size(), 1u) << text;
      expect_as_printed<api::OutputEvent>(lines[0]);
      EXPECT_EQ(parse<api::OutputEvent>(lines[0]).data(), text);
    }
    guest::Event err;
    err.set_stderr(text + "!");
    lines = encoder.encode(err);
    ASSERT_EQ(lines.size(), 1u);
    expect_as_printed<api::OutputEvent>(lines[0]);
    EXPECT_EQ(parse<api::OutputEvent>(lines[0]).type(), "stderr");

    guest::Event result;
    result.set_result(text);
    lines = encoder.encode(result);
    ASSERT_EQ(lines.size(), 1u);
    expect_as_printed<api::ResultEvent>(lines[0]);
    EXPECT_EQ(parse<api::ResultEvent>(lines[0]).data(), text);

    guest::Event error;
    error.mutable_error()->set_name(text);
    error.mutable_error()->set_value("v" + text);
    error.mutable_error()->set_traceback(text + "tb");
    lines = encoder.encode(error);
    ASSERT_EQ(lines.size(), 1u);
    expect_as_printed<api::ErrorEvent>(lines[0]);
    EXPECT_EQ(parse<api::ErrorEvent>(lines[0]).traceback(), text + "tb");
  }
  // Guest text that is not UTF-8 never reaches a hand-written string.
  guest::Event bad;
  bad.set_result("\xff\xfe");
  auto lines = encoder.encode(bad);
  ASSERT_EQ(lines.size(), 1u);
  expect_as_printed<api::ResultEvent>(lines[0]);

  guest::Exit exit;
  exit.set_exit_code(-2);
  exit.set_signal(9);
  exit.set_timed_out(true);
  exit.set_truncated(true);
  exit.set_repl_restarted(true);
  exit.set_duration_us(4'294'967'295'000ull); // duration_ms at uint32's top
  lines = encoder.finish(exit);
  ASSERT_EQ(lines.size(), 1u);
  expect_as_printed<api::ExitEvent>(lines[0]);
  auto last = parse<api::ExitEvent>(lines[0]);
  EXPECT_EQ(last.exit_code(), -2);
  EXPECT_EQ(last.duration_ms(), 4'294'967'295u);
  EXPECT_FALSE(last.has_failure());

  ExecEventEncoder failing;
  lines = failing.finish(guest::Exit{}, "sandbox_died", "it said \"bye\"\n\xff");
  ASSERT_EQ(lines.size(), 1u);
  expect_as_printed<api::ExitEvent>(lines[0]);
  EXPECT_EQ(parse<api::ExitEvent>(lines[0]).failure().code(), "sandbox_died");
  EXPECT_EQ(parse<api::ExitEvent>(lines[0]).seq(), 1u);
}

TEST(Rfc3339, NowIsUtcToTheMillisecond) {
  // The bounds are read from the clock rfc3339_now reads, to the millisecond:
  // std::time() reads a coarser clock that can still show the last second
  // a few milliseconds into the next one.
  const auto unix_ms = [] {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
  };
  for (int i = 0; i < 3; ++i) {
    const auto before = unix_ms();
    const std::string now = rfc3339_now();
    const auto after = unix_ms();
    ASSERT_EQ(now.size(), 24u) << now;
    std::tm parts{};
    const char* end = strptime(now.c_str(), "%Y-%m-%dT%H:%M:%S", &parts);
    ASSERT_NE(end, nullptr) << now;
    EXPECT_STREQ(end + 4, "Z") << now;
    EXPECT_EQ(end[0], '.');
    for (int k = 1; k <= 3; ++k)
      EXPECT_TRUE(end[k] >= '0' && end[k] <= '9') << now;
    const std::int64_t at =
        std::int64_t{timegm(&parts)} * 1000 + std::stoi(std::string(end + 1, 3));
    EXPECT_GE(at, before) << now;
    EXPECT_LE(at, after) << now;
  }
}

TEST(Rfc3339, AnyTimeToTheMillisecond) {
  EXPECT_EQ(rfc3339(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(rfc3339(1714564800123), "2024-05-01T12:00:00.123Z");
  EXPECT_EQ(rfc3339(1714564800999), "2024-05-01T12:00:00.999Z"); // the same second again
  EXPECT_EQ(rfc3339(1714564801005), "2024-05-01T12:00:01.005Z");
  EXPECT_EQ(rfc3339(-1), "1969-12-31T23:59:59.999Z");
  EXPECT_EQ(rfc3339(1714564800123), "2024-05-01T12:00:00.123Z"); // back to an earlier one
}

TEST(DisplayRules, MimeTypesAndTextTypes) {
  EXPECT_TRUE(display::valid_mime_type("image/png"));
  EXPECT_TRUE(display::valid_mime_type("application/vnd.plotly.v1+json"));
  EXPECT_TRUE(display::valid_mime_type("text/plain;charset=utf-8"));
  EXPECT_FALSE(display::valid_mime_type(""));
  EXPECT_FALSE(display::valid_mime_type("png"));
  EXPECT_FALSE(display::valid_mime_type("/png"));
  EXPECT_FALSE(display::valid_mime_type("image/"));
  EXPECT_FALSE(display::valid_mime_type("a/b/c"));
  EXPECT_FALSE(display::valid_mime_type("text/ plain"));
  EXPECT_FALSE(display::valid_mime_type("text/pl\xc3\xa4in"));
  EXPECT_FALSE(display::valid_mime_type("text/" + std::string(display::kMaxMimeTypeBytes, 'a')));
  EXPECT_TRUE(display::is_text_type("text/html"));
  EXPECT_TRUE(display::is_text_type("image/svg+xml"));
  EXPECT_TRUE(display::is_text_type("application/json"));
  EXPECT_TRUE(display::is_text_type("application/geo+json"));
  EXPECT_FALSE(display::is_text_type("image/png"));
  EXPECT_FALSE(display::is_text_type("application/pdf"));
}
