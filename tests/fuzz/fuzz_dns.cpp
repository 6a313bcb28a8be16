// The DNS codec (net/dns.cpp) and the allowlist forwarder's rules
// (net/dns_policy.cpp) over a message from the guest or from upstream. A
// message that parses is decided on as a guest's query and filtered as an
// upstream's answer to a fixed question; what the codec encodes, it parses
// back to the same names.
#include <span>

#include "net/dns.hpp"
#include "net/dns_policy.hpp"
#include "tests/fuzz/fuzz_check.hpp"

namespace dns = vesicle::net::dns;
using vesicle::net::DnsPolicy;

namespace {

const DnsPolicy& policy() {
  static const DnsPolicy value = [] {
    DnsPolicy p;
    p.allow = vesicle::net::Allowlist::parse({"allowed.test", "*.example.com"}).value();
    p.denied = {vesicle::net::Cidr::parse("10.0.0.0/8").value(),
                vesicle::net::Cidr::parse("127.0.0.0/8").value()};
    return p;
  }();
  return value;
}

// Encodes `message`; if that works, it must parse back with the same names.
void round_trip(const dns::Message& message) {
  auto wire = dns::encode(message);
  if (!wire) return;
  auto again = dns::parse(*wire);
  FUZZ_CHECK(again);
  FUZZ_CHECK(again->questions.size() == message.questions.size());
  for (std::size_t i = 0; i < message.questions.size(); ++i)
    FUZZ_CHECK(dns::same_name(again->questions[i].name, message.questions[i].name));
  FUZZ_CHECK(again->answers.size() == message.answers.size());
}

} // namespace

extern "C" int VESICLE_FUZZ_ENTRY(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> wire(data, size);
  dns::parse_header(wire);
  auto message = dns::parse(wire);
  if (!message) return 0;
  round_trip(*message);

  // As a guest's query.
  auto decision = vesicle::net::decide_query(*message, policy());
  if (decision.action == vesicle::net::QueryAction::forward) {
    FUZZ_CHECK(policy().allow.allows(decision.name));
    round_trip(vesicle::net::upstream_query(message->questions.at(0), 0x1234));
  }
  round_trip(vesicle::net::empty_reply(*message, dns::kNxDomain));

  // As upstream's answer to a guest's question for an allowed name.
  dns::Message query;
  query.header.id = 7;
  query.header.rd = true;
  query.questions.push_back(
      {message->questions.empty() ? "www.example.com" : message->questions[0].name, dns::kTypeA,
       dns::kClassIN});
  auto filtered = vesicle::net::filter_answer(query, *message, message->header.id, policy());
  if (filtered) {
    round_trip(filtered->reply);
    for (const auto& learned : filtered->learned) {
      FUZZ_CHECK(!vesicle::net::contains_any(policy().denied, learned.address));
      FUZZ_CHECK(learned.lifetime >= policy().min_ttl && learned.lifetime <= policy().max_ttl);
    }
  }
  return 0;
}
