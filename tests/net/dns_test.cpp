// DNS message parsing and building (net/dns.hpp).
#include <gtest/gtest.h>

#include <random>

#include "net/allowlist.hpp"
#include "net/dns.hpp"

namespace vesicle::net {
namespace {

std::vector<uint8_t> encoded(const dns::Message& message) {
  auto wire = dns::encode(message);
  EXPECT_TRUE(wire) << wire.error().message();
  return wire ? *wire : std::vector<uint8_t>{};
}

TEST(Dns, RoundTripsQuestionAndAnswers) {
  dns::Message message;
  message.header.id = 0xBEEF;
  message.header.qr = true;
  message.header.rd = true;
  message.header.ra = true;
  message.questions.push_back({"Allowed.Test", dns::kTypeA, dns::kClassIN});
  message.answers.push_back(dns::cname_record("Allowed.Test", 30, "cdn.example.test"));
  message.answers.push_back(
      dns::a_record("cdn.example.test", 60, Ipv4::parse("198.18.1.10").value()));

  auto parsed = dns::parse(encoded(message));
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_EQ(parsed->header.id, 0xBEEF);
  EXPECT_TRUE(parsed->header.qr);
  EXPECT_TRUE(parsed->header.rd);
  EXPECT_TRUE(parsed->header.ra);
  ASSERT_EQ(parsed->questions.size(), 1u);
  EXPECT_EQ(parsed->questions[0].name, "Allowed.Test"); // case kept for the echo
  ASSERT_EQ(parsed->answers.size(), 2u);
  EXPECT_EQ(parsed->answers[0].type, dns::kTypeCNAME);
  EXPECT_EQ(parsed->answers[0].target, "cdn.example.test");
  auto address = dns::a_address(parsed->answers[1]);
  ASSERT_TRUE(address);
  EXPECT_EQ(address->str(), "198.18.1.10");
  EXPECT_EQ(parsed->answers[1].ttl, 60u);
}

// A response as a real server writes it: names compressed with pointers.
TEST(Dns, ParsesCompressedNames) {
  std::vector<uint8_t> wire = {
      0x12, 0x34, 0x81, 0x80, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00,
      // question: www.allowed.test A IN (offset 12)
      3, 'w', 'w', 'w', 7, 'a', 'l', 'l', 'o', 'w', 'e', 'd', 4, 't', 'e', 's', 't', 0, 0x00, 0x01,
      0x00, 0x01,
      // answer 1: www.allowed.test (pointer to 12) CNAME allowed.test (pointer to 16)
      0xC0, 12, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3C, 0x00, 0x02, 0xC0, 16,
      // answer 2: allowed.test (pointer to 16) A 198.18.1.10
      0xC0, 16, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3C, 0x00, 0x04, 198, 18, 1, 10};
  auto parsed = dns::parse(wire);
  ASSERT_TRUE(parsed) << parsed.error().message();
  EXPECT_EQ(parsed->questions[0].name, "www.allowed.test");
  EXPECT_EQ(parsed->answers[0].name, "www.allowed.test");
  EXPECT_EQ(parsed->answers[0].target, "allowed.test");
  EXPECT_EQ(parsed->answers[1].name, "allowed.test");
  EXPECT_EQ(dns::a_address(parsed->answers[1])->str(), "198.18.1.10");
}

TEST(Dns, RefusesPointerLoopsAndForwardPointers) {
  std::vector<uint8_t> header = {0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0};
  auto self_pointer = header;
  self_pointer.insert(self_pointer.end(), {0xC0, 12, 0, 1, 0, 1});
  EXPECT_FALSE(dns::parse(self_pointer));
  auto forward_pointer = header;
  forward_pointer.insert(forward_pointer.end(), {0xC0, 14, 0, 1, 0, 1, 0});
  EXPECT_FALSE(dns::parse(forward_pointer));
  // A label that points back at itself through a pointer placed after it.
  auto cycle = header;
  cycle.insert(cycle.end(), {1, 'a', 0xC0, 12, 0, 1, 0, 1});
  EXPECT_FALSE(dns::parse(cycle));
}

TEST(Dns, RefusesEveryTruncation) {
  dns::Message message;
  message.header.id = 7;
  message.questions.push_back({"allowed.test", dns::kTypeA, dns::kClassIN});
  message.answers.push_back(dns::a_record("allowed.test", 60, Ipv4{0x01020304}));
  auto wire = encoded(message);
  for (size_t length = 0; length < wire.size(); ++length) {
    EXPECT_FALSE(dns::parse(std::span<const uint8_t>(wire.data(), length))) << length;
  }
  EXPECT_TRUE(dns::parse(wire));
}

// A label holding a '.' must not read as two labels.
TEST(Dns, EscapesBytesOutsideHostnames) {
  std::vector<uint8_t> wire = {0,   1,   0,   0, 0,   1,   0,   0,   0, 0, 0, 0, 3,
                               'a', '.', 'b', 4, 't', 'e', 's', 't', 0, 0, 1, 0, 1};
  auto parsed = dns::parse(wire);
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->questions[0].name, "a\\046b.test");
  EXPECT_FALSE(normalize_hostname(parsed->questions[0].name));
  // And it encodes back to the same bytes.
  EXPECT_EQ(encoded(*parsed), wire);
}

TEST(Dns, RefusesOverlongNamesAndLabels) {
  dns::Message message;
  message.questions.push_back({std::string(64, 'a') + ".test", dns::kTypeA, dns::kClassIN});
  EXPECT_FALSE(dns::encode(message));
  std::string long_name;
  for (int i = 0; i < 5; ++i)
    long_name += std::string(60, 'b') + ".";
  message.questions[0].name = long_name + "test";
  EXPECT_FALSE(dns::encode(message));
}

TEST(Dns, SurvivesRandomBytes) {
  std::mt19937 random(42);
  for (int round = 0; round < 20000; ++round) {
    std::vector<uint8_t> wire(random() % 96);
    for (auto& byte : wire)
      byte = static_cast<uint8_t>(random());
    if (wire.size() >= 12) wire[4] = 0, wire[5] = static_cast<uint8_t>(random() % 3);
    auto parsed = dns::parse(wire);
    if (parsed) {
      auto again = dns::encode(*parsed);
      (void)again;
    }
  }
}

TEST(Dns, ComparesNamesCaseInsensitively) {
  EXPECT_TRUE(dns::same_name("Allowed.TEST.", "allowed.test"));
  EXPECT_FALSE(dns::same_name("allowed.test", "allowed.tes"));
}

} // namespace
} // namespace vesicle::net
