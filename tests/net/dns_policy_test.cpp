// The allowlist DNS forwarder's decisions (net/dns_policy.hpp).
#include <gtest/gtest.h>

#include "net/dns_policy.hpp"
#include "net/ruleset.hpp"

namespace vesicle::net {
namespace {

using std::chrono::seconds;

Ipv4 ip(const char* text) {
  return Ipv4::parse(text).value();
}

DnsPolicy policy() {
  DnsPolicy p;
  p.allow = Allowlist::parse({"allowed.test", "*.example.test"}).value();
  p.denied = always_denied_networks(Cidr::parse("10.222.0.0/16").value());
  p.denied.push_back(Cidr::parse("198.18.2.0/24").value());
  p.min_ttl = seconds(60);
  p.max_ttl = seconds(600);
  return p;
}

dns::Message query(std::string name, uint16_t type = dns::kTypeA, uint16_t id = 0x4242) {
  dns::Message message;
  message.header.id = id;
  message.header.rd = true;
  message.questions.push_back({std::move(name), type, dns::kClassIN});
  return message;
}

dns::Message answer(const dns::Message& sent, std::vector<dns::Record> records,
                    uint8_t rcode = dns::kNoError) {
  dns::Message reply = empty_reply(sent, rcode);
  reply.answers = std::move(records);
  return reply;
}

TEST(DnsPolicy, ForwardsOnlyListedNamesAndOnlyTypeA) {
  auto p = policy();
  EXPECT_EQ(decide_query(query("allowed.test"), p).action, QueryAction::forward);
  EXPECT_EQ(decide_query(query("Www.Example.Test."), p).action, QueryAction::forward);
  EXPECT_EQ(decide_query(query("www.example.test"), p).name, "www.example.test");
  EXPECT_EQ(decide_query(query("denied.test"), p).action, QueryAction::nxdomain);
  EXPECT_EQ(decide_query(query("example.test"), p).action, QueryAction::nxdomain);
  EXPECT_EQ(decide_query(query("a\\046b.example.test"), p).action, QueryAction::nxdomain);
  EXPECT_EQ(decide_query(query("allowed.test", dns::kTypeAAAA), p).action, QueryAction::nodata);
  EXPECT_EQ(decide_query(query("allowed.test", 16 /* TXT */), p).action, QueryAction::nodata);
}

TEST(DnsPolicy, RejectsMalformedQueries) {
  auto p = policy();
  auto two = query("allowed.test");
  two.questions.push_back(two.questions[0]);
  EXPECT_EQ(decide_query(two, p).action, QueryAction::formerr);
  auto response = query("allowed.test");
  response.header.qr = true;
  EXPECT_EQ(decide_query(response, p).action, QueryAction::formerr);
  auto update = query("allowed.test");
  update.header.opcode = 5;
  EXPECT_EQ(decide_query(update, p).action, QueryAction::notimp);
}

TEST(DnsPolicy, UpstreamQueryIsFreshAndAsksOnlyForA) {
  auto q = upstream_query({"allowed.test", dns::kTypeA, dns::kClassIN}, 777);
  EXPECT_EQ(q.header.id, 777);
  EXPECT_TRUE(q.header.rd);
  EXPECT_FALSE(q.header.qr);
  ASSERT_EQ(q.questions.size(), 1u);
  EXPECT_EQ(q.questions[0].type, dns::kTypeA);
  EXPECT_TRUE(q.answers.empty() && q.additionals.empty());
}

TEST(DnsPolicy, LearnsAnsweredAddressesWithCappedLifetimes) {
  auto p = policy();
  auto guest = query("allowed.test");
  auto sent = upstream_query(guest.questions[0], 9);
  auto result =
      filter_answer(guest,
                    answer(sent, {dns::a_record("allowed.test", 5, ip("198.18.1.10")),
                                  dns::a_record("allowed.test", 100000, ip("198.18.1.11"))}),
                    9, p);
  ASSERT_TRUE(result) << result.error().message();
  EXPECT_EQ(result->reply.header.id, 0x4242);
  EXPECT_TRUE(result->reply.header.qr);
  ASSERT_EQ(result->reply.answers.size(), 2u);
  EXPECT_EQ(result->reply.answers[0].ttl, 5u);   // never longer than upstream says
  EXPECT_EQ(result->reply.answers[1].ttl, 600u); // nor longer than the firewall allows
  ASSERT_EQ(result->learned.size(), 2u);
  EXPECT_EQ(result->learned[0].lifetime, seconds(60));
  EXPECT_EQ(result->learned[1].lifetime, seconds(600));
}

// DNS rebinding: a listed name whose answer points inside a denied network.
TEST(DnsPolicy, DropsAnswersInsideDeniedNetworks) {
  auto p = policy();
  auto guest = query("rebind.example.test");
  auto sent = upstream_query(guest.questions[0], 1);
  for (const char* bad : {"169.254.169.254", "127.0.0.1", "10.222.0.6", "198.18.2.10", "0.0.0.0",
                          "172.16.0.1", "224.0.0.1"}) {
    auto result =
        filter_answer(guest,
                      answer(sent, {dns::a_record("rebind.example.test", 0, ip(bad)),
                                    dns::a_record("rebind.example.test", 0, ip("198.18.1.10"))}),
                      1, p);
    ASSERT_TRUE(result);
    ASSERT_EQ(result->refused.size(), 1u) << bad;
    ASSERT_EQ(result->reply.answers.size(), 1u) << bad;
    EXPECT_EQ(dns::a_address(result->reply.answers[0])->str(), "198.18.1.10");
    ASSERT_EQ(result->learned.size(), 1u);
    EXPECT_EQ(result->learned[0].address.str(), "198.18.1.10");
  }
}

TEST(DnsPolicy, KeepsOnlyTheQuestionsCnameChain) {
  auto p = policy();
  auto guest = query("allowed.test");
  auto sent = upstream_query(guest.questions[0], 3);
  auto result = filter_answer(
      guest,
      answer(sent, {dns::a_record("evil.test", 60, ip("203.0.113.9")), // not ours: dropped
                    dns::a_record("cdn.elsewhere.test", 60, ip("198.18.1.12")),
                    dns::cname_record("allowed.test", 60, "cdn.elsewhere.test")}),
      3, p);
  ASSERT_TRUE(result);
  ASSERT_EQ(result->reply.answers.size(), 2u);
  EXPECT_EQ(result->reply.answers[0].type, dns::kTypeA);
  EXPECT_EQ(result->reply.answers[0].name, "cdn.elsewhere.test");
  EXPECT_EQ(result->reply.answers[1].type, dns::kTypeCNAME);
  ASSERT_EQ(result->learned.size(), 1u);
  EXPECT_EQ(result->learned[0].address.str(), "198.18.1.12");
}

TEST(DnsPolicy, RefusesAnswersToAnotherQuestion) {
  auto p = policy();
  auto guest = query("allowed.test");
  auto sent = upstream_query(guest.questions[0], 5);
  auto wrong_id = answer(sent, {dns::a_record("allowed.test", 60, ip("198.18.1.10"))});
  wrong_id.header.id = 6;
  EXPECT_FALSE(filter_answer(guest, wrong_id, 5, p));
  auto other = upstream_query({"denied.test", dns::kTypeA, dns::kClassIN}, 5);
  EXPECT_FALSE(filter_answer(guest, answer(other, {}), 5, p));
  auto not_response = answer(sent, {});
  not_response.header.qr = false;
  EXPECT_FALSE(filter_answer(guest, not_response, 5, p));
}

TEST(DnsPolicy, PassesNxdomainAndTurnsOtherFailuresIntoServfail) {
  auto p = policy();
  auto guest = query("www.example.test");
  auto sent = upstream_query(guest.questions[0], 8);
  auto nx = filter_answer(guest, answer(sent, {}, dns::kNxDomain), 8, p);
  ASSERT_TRUE(nx);
  EXPECT_EQ(nx->reply.header.rcode, dns::kNxDomain);
  auto refused = filter_answer(guest, answer(sent, {}, dns::kRefused), 8, p);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->reply.header.rcode, dns::kServFail);
  EXPECT_TRUE(refused->learned.empty());
}

TEST(LearnedAddresses, BindsAddressesToNamesUntilTheyExpire) {
  LearnedAddresses learned;
  auto now = LearnedAddresses::Clock::now();
  learned.learn("allowed.test", ip("198.18.1.10"), now + seconds(60));
  EXPECT_TRUE(learned.allows("allowed.test", ip("198.18.1.10"), now));
  EXPECT_FALSE(learned.allows("denied.test", ip("198.18.1.10"), now));
  EXPECT_FALSE(learned.allows("allowed.test", ip("198.18.1.20"), now));
  EXPECT_FALSE(learned.allows("allowed.test", ip("198.18.1.10"), now + seconds(61)));
  learned.learn("allowed.test", ip("198.18.1.10"), now + seconds(10)); // never shortens
  EXPECT_TRUE(learned.allows("allowed.test", ip("198.18.1.10"), now + seconds(30)));
  learned.expire(now + seconds(61));
  EXPECT_EQ(learned.size(), 0u);
}

} // namespace
} // namespace vesicle::net
