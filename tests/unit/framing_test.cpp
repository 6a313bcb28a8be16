#include <gtest/gtest.h>

#include "messages/framing.hpp"
#include "messages/guest.pb.h"

namespace vesicle::wire {
namespace {

guest::Event stdout_event(std::uint64_t id, std::string data) {
  guest::Event event;
  event.set_id(id);
  event.set_stdout(std::move(data));
  return event;
}

guest::Event decode_event(FrameDecoder& decoder) {
  auto payload = decoder.next();
  EXPECT_TRUE(payload.ok()) << payload.error().message();
  EXPECT_TRUE(payload->has_value());
  guest::Event event;
  EXPECT_TRUE(parse_payload(**payload, event).ok());
  return event;
}

TEST(Framing, RoundTripsBinaryPayloadsExactly) {
  std::string every_byte;
  for (int b = 0; b < 256; ++b) every_byte.push_back(static_cast<char>(b));
  FrameDecoder decoder;
  decoder.feed(encode_frame(stdout_event(7, every_byte)));
  guest::Event event = decode_event(decoder);
  EXPECT_EQ(event.id(), 7u);
  EXPECT_EQ(event.stdout(), every_byte);
  EXPECT_EQ(decoder.pending_bytes(), 0u);
}

TEST(Framing, ReassemblesFramesFedOneByteAtATime) {
  std::string stream = encode_frame(stdout_event(1, "first")) + encode_frame(stdout_event(2, ""));
  FrameDecoder decoder;
  std::vector<std::uint64_t> ids;
  for (char c : stream) {
    decoder.feed(std::string_view(&c, 1));
    while (true) {
      auto payload = decoder.next();
      ASSERT_TRUE(payload.ok());
      if (!payload->has_value()) break;
      guest::Event event;
      ASSERT_TRUE(parse_payload(**payload, event).ok());
      ids.push_back(event.id());
    }
  }
  EXPECT_EQ(ids, (std::vector<std::uint64_t>{1, 2}));
}

TEST(Framing, TruncatedFrameStaysPending) {
  std::string frame = encode_frame(stdout_event(3, "hello world"));
  FrameDecoder decoder;
  decoder.feed(std::string_view(frame).substr(0, frame.size() - 1));
  auto payload = decoder.next();
  ASSERT_TRUE(payload.ok());
  EXPECT_FALSE(payload->has_value());
  EXPECT_EQ(decoder.pending_bytes(), frame.size() - 1);
}

TEST(Framing, OversizedLengthIsAnErrorAndSticks) {
  FrameDecoder decoder;
  const std::string huge_header = "\xff\xff\xff\x7f";
  decoder.feed(huge_header);
  auto payload = decoder.next();
  ASSERT_FALSE(payload.ok());
  EXPECT_NE(payload.error().message().find("exceeds the limit"), std::string::npos);
  decoder.feed(encode_frame(stdout_event(4, "x")));
  EXPECT_FALSE(decoder.next().ok());
}

TEST(Framing, CorruptPayloadIsRejected) {
  // Field 10 (stdout) declared as a length-delimited field 100 bytes long,
  // but only 2 bytes follow.
  const std::string corrupt = "\x52\x64\x41\x42";
  guest::Event event;
  auto parsed = parse_payload(corrupt, event);
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.error().message().find("vesicle.guest.Event"), std::string::npos);
}

TEST(Framing, MaximumSizedFrameIsAccepted) {
  std::string data(kMaxFramePayload - 16, 'z');
  FrameDecoder decoder;
  decoder.feed(encode_frame(stdout_event(5, data)));
  EXPECT_EQ(decode_event(decoder).stdout().size(), data.size());
}

} // namespace
} // namespace vesicle::wire
