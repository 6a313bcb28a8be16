// What the allowlist DNS forwarder decides, as pure functions over parsed
// messages (no sockets), so every rule is unit-tested:
//  - a query for a listed name is forwarded upstream as a fresh query of our
//    own (new id, one question, type A only); anything else gets NXDOMAIN, and
//    AAAA/other types of listed names get an empty answer (IPv6 is refused);
//  - an upstream answer is rebuilt, not relayed: only the CNAME chain of the
//    question and its A records survive, A records inside denied networks are
//    dropped (DNS rebinding), TTLs are capped, and the surviving addresses are
//    "learned" for that name: the firewall and the proxy allow exactly those.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "net/allowlist.hpp"
#include "net/dns.hpp"
#include "net/ipv4.hpp"

namespace vesicle::net {

struct DnsPolicy {
  Allowlist allow;
  std::vector<Cidr> denied;
  std::chrono::seconds min_ttl{60};  // an allowed address stays allowed at least this long
  std::chrono::seconds max_ttl{600}; // and at most this long after the answer
};

enum class QueryAction { forward, nxdomain, nodata, formerr, notimp };

struct QueryDecision {
  QueryAction action = QueryAction::formerr;
  std::string name; // normalized question name (when there is one)
  std::string reason;
};

QueryDecision decide_query(const dns::Message& query, const DnsPolicy& policy);

// The query sent upstream for an allowed question.
dns::Message upstream_query(const dns::Question& question, uint16_t id);

// A reply to `query` with no records and the given rcode.
dns::Message empty_reply(const dns::Message& query, uint8_t rcode);

struct Learned {
  Ipv4 address;
  std::chrono::seconds lifetime;
};

struct FilteredAnswer {
  dns::Message reply;           // what the guest receives
  std::vector<Learned> learned; // addresses now allowed for the name
  std::vector<Ipv4> refused;    // A records dropped as inside denied networks
};

// Checks that `upstream` answers the question we sent (id, question) and
// rebuilds the guest's reply from it.
Result<FilteredAnswer> filter_answer(const dns::Message& guest_query, const dns::Message& upstream,
                                     uint16_t sent_id, const DnsPolicy& policy);

// The addresses each allowed name resolved to, with expiry. The proxy
// connects to an address only if it was learned for the very name the
// client sent in its SNI or Host header.
class LearnedAddresses {
public:
  using Clock = std::chrono::steady_clock;
  void learn(const std::string& name, Ipv4 address, Clock::time_point expires);
  bool allows(const std::string& name, Ipv4 address, Clock::time_point now) const;
  void expire(Clock::time_point now);
  size_t size() const;
  struct Entry {
    std::string name;
    Ipv4 address;
    Clock::time_point expires;
  };
  std::vector<Entry> entries() const;

private:
  std::map<std::string, std::map<Ipv4, Clock::time_point>> by_name_;
};

} // namespace vesicle::net
