// The pure parts of hostd's E2B protocol: Connect envelopes and error
// codes, and the streaming multipart/form-data reader, fed in every split.
#include <gtest/gtest.h>

#include "hostd/e2b_connect.hpp"
#include "hostd/e2b_multipart.hpp"

namespace vesicle::hostd::e2b {
namespace {

TEST(E2bConnect, EnvelopeRoundTrips) {
  const std::string json = R"({"process":{"cmd":"/bin/bash"}})";
  auto framed = envelope(json);
  ASSERT_EQ(framed.size(), json.size() + 5);
  EXPECT_EQ(framed[0], '\0');
  EXPECT_EQ(static_cast<unsigned char>(framed[4]), json.size());
  auto back = single_envelope(framed);
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(*back, json);
}

TEST(E2bConnect, RefusesBadEnvelopes) {
  EXPECT_FALSE(single_envelope("abc"));
  auto framed = envelope("{}");
  EXPECT_FALSE(single_envelope(framed + "x")); // trailing bytes
  EXPECT_FALSE(single_envelope(framed.substr(0, framed.size() - 1)));
  framed[0] = static_cast<char>(kCompressed);
  EXPECT_FALSE(single_envelope(framed));
}

TEST(E2bConnect, EndOfStream) {
  EXPECT_EQ(end_of_stream(), envelope("{}", kEndStream));
  auto failed = end_of_stream("not_found", "no \"such\" process");
  EXPECT_EQ(static_cast<unsigned char>(failed[0]), kEndStream);
  EXPECT_EQ(failed.substr(5), R"({"error":{"code":"not_found","message":"no \"such\" process"}})");
}

TEST(E2bConnect, ErrorCodesAndStatuses) {
  EXPECT_EQ(connect_code(ErrorKind::not_found), "not_found");
  EXPECT_EQ(connect_code(ErrorKind::guest_died), "unavailable");
  EXPECT_EQ(connect_http_status("not_found"), 404u);
  EXPECT_EQ(connect_http_status("already_exists"), 409u);
  EXPECT_EQ(connect_http_status("unimplemented"), 501u);
  EXPECT_EQ(connect_http_status("invalid_argument"), 400u);
  EXPECT_EQ(json_string("a\nb\x01"), "\"a\\nb\\u0001\"");
}

TEST(E2bMultipart, Boundary) {
  EXPECT_EQ(multipart_boundary("multipart/form-data; boundary=----formdata-undici-0123"),
            "----formdata-undici-0123");
  EXPECT_EQ(multipart_boundary("multipart/form-data; boundary=\"quoted b\""), "quoted b");
  EXPECT_FALSE(multipart_boundary("application/octet-stream"));
  EXPECT_FALSE(multipart_boundary("multipart/form-data"));
}

struct Part {
  std::string name, filename, data;
  bool ended = false;
};

// Feeds `body` in pieces of `step` bytes; the parts it read.
std::vector<Part> read_all(const std::string& body, std::size_t step, bool& complete) {
  MultipartReader reader("XyZ");
  std::vector<Part> parts;
  for (std::size_t at = 0; at < body.size(); at += step) {
    auto steps = reader.feed(std::string_view(body).substr(at, step));
    EXPECT_TRUE(steps) << steps.error().message();
    if (!steps) return parts;
    for (auto& s : *steps) {
      if (s.kind == MultipartReader::Step::Kind::begin) parts.push_back({s.name, s.filename, {}});
      if (s.kind == MultipartReader::Step::Kind::data) parts.back().data += s.data;
      if (s.kind == MultipartReader::Step::Kind::end) parts.back().ended = true;
    }
  }
  complete = reader.complete();
  return parts;
}

TEST(E2bMultipart, ReadsPartsInEverySplit) {
  // The second part's data holds near misses of the delimiter.
  std::string binary("\0\r\n--XyY\r\n-\xff\r\n--X", 18);
  const std::string body =
      "preamble\r\n--XyZ\r\n"
      "Content-Disposition: form-data; name=\"file\"; filename=\"/tmp/a.txt\"\r\n"
      "Content-Type: application/octet-stream\r\n\r\n"
      "hello\r\n--XyZ\r\n"
      "Content-Disposition: form-data; name=\"file\"; filename=\"b.bin\"\r\n\r\n" +
      binary + "\r\n--XyZ--\r\nepilogue";
  for (std::size_t step : {1u, 2u, 3u, 7u, 16u, 1000u}) {
    bool complete = false;
    auto parts = read_all(body, step, complete);
    ASSERT_EQ(parts.size(), 2u) << "step " << step;
    EXPECT_TRUE(complete);
    EXPECT_EQ(parts[0].name, "file");
    EXPECT_EQ(parts[0].filename, "/tmp/a.txt");
    EXPECT_EQ(parts[0].data, "hello");
    EXPECT_TRUE(parts[0].ended);
    EXPECT_EQ(parts[1].filename, "b.bin");
    EXPECT_EQ(parts[1].data, binary) << "step " << step;
    EXPECT_TRUE(parts[1].ended);
  }
}

TEST(E2bMultipart, BodyWithoutClosingBoundaryIsIncomplete) {
  bool complete = true;
  auto parts =
      read_all("--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc", 4, complete);
  EXPECT_FALSE(complete);
  ASSERT_EQ(parts.size(), 1u);
  EXPECT_FALSE(parts[0].ended);
}

} // namespace
} // namespace vesicle::hostd::e2b
