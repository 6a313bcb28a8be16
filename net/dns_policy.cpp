#include "net/dns_policy.hpp"

#include <algorithm>
#include <set>

namespace vesicle::net {

QueryDecision decide_query(const dns::Message& query, const DnsPolicy& policy) {
  QueryDecision decision;
  if (query.header.qr) {
    decision.reason = "a response, not a query";
    return decision;
  }
  if (query.header.opcode != 0) {
    decision.action = QueryAction::notimp;
    decision.reason = "only standard queries are served";
    return decision;
  }
  if (query.questions.size() != 1) {
    decision.reason = "exactly one question is served";
    return decision;
  }
  const auto& question = query.questions.front();
  auto name = normalize_hostname(question.name);
  if (!name || !policy.allow.allows(*name)) {
    decision.action = QueryAction::nxdomain;
    decision.name = name.value_or(question.name);
    decision.reason = "not in the allowlist";
    return decision;
  }
  decision.name = *name;
  if (question.klass != dns::kClassIN || question.type != dns::kTypeA) {
    // IPv6 and every other record type stay unanswered: the sandbox can
    // only ever be handed IPv4 addresses we have checked.
    decision.action = QueryAction::nodata;
    decision.reason = "only A records are served";
    return decision;
  }
  decision.action = QueryAction::forward;
  return decision;
}

dns::Message upstream_query(const dns::Question& question, uint16_t id) {
  dns::Message message;
  message.header.id = id;
  message.header.rd = true;
  message.questions.push_back({question.name, dns::kTypeA, dns::kClassIN});
  return message;
}

dns::Message empty_reply(const dns::Message& query, uint8_t rcode) {
  dns::Message reply;
  reply.header.id = query.header.id;
  reply.header.qr = true;
  reply.header.opcode = query.header.opcode;
  reply.header.rd = query.header.rd;
  reply.header.ra = true;
  reply.header.rcode = rcode;
  if (query.questions.size() == 1) reply.questions = query.questions;
  return reply;
}

Result<FilteredAnswer> filter_answer(const dns::Message& guest_query, const dns::Message& upstream,
                                     uint16_t sent_id, const DnsPolicy& policy) {
  if (guest_query.questions.size() != 1) {
    return make_error("filter DNS answer", "the guest query has no single question");
  }
  const auto& question = guest_query.questions.front();
  if (!upstream.header.qr || upstream.header.id != sent_id || upstream.questions.size() != 1 ||
      !dns::same_name(upstream.questions.front().name, question.name) ||
      upstream.questions.front().type != dns::kTypeA) {
    return make_error("filter DNS answer", "the upstream reply does not answer our question",
                      question.name);
  }
  FilteredAnswer result;
  if (upstream.header.rcode != dns::kNoError) {
    uint8_t rcode = upstream.header.rcode == dns::kNxDomain ? dns::kNxDomain : dns::kServFail;
    result.reply = empty_reply(guest_query, rcode);
    return result;
  }
  result.reply = empty_reply(guest_query, dns::kNoError);

  // Follow the CNAME chain from the question; records about any other
  // owner are dropped, whatever section or order they came in.
  std::set<std::string> chain;
  chain.insert(normalize_hostname(question.name).value_or(question.name));
  auto in_chain = [&](const std::string& owner) {
    auto normalized = normalize_hostname(owner);
    return normalized && chain.count(*normalized) > 0;
  };
  for (bool grew = true; grew;) {
    grew = false;
    for (const auto& record : upstream.answers) {
      if (record.type != dns::kTypeCNAME || !in_chain(record.name)) continue;
      auto target = normalize_hostname(record.target);
      if (target && chain.insert(*target).second) grew = true;
    }
  }
  auto cap = [&](uint32_t ttl) {
    auto lifetime =
        std::clamp<std::chrono::seconds>(std::chrono::seconds(ttl), policy.min_ttl, policy.max_ttl);
    return lifetime;
  };
  std::set<std::string> cnames_added;
  for (const auto& record : upstream.answers) {
    if (!in_chain(record.name) || record.klass != dns::kClassIN) continue;
    if (record.type == dns::kTypeCNAME) {
      if (!normalize_hostname(record.target)) continue;
      if (!cnames_added.insert(record.name + " " + record.target).second) continue;
      auto ttl = static_cast<uint32_t>(std::min<int64_t>(record.ttl, policy.max_ttl.count()));
      result.reply.answers.push_back(dns::cname_record(record.name, ttl, record.target));
    } else if (auto address = dns::a_address(record)) {
      if (contains_any(policy.denied, *address)) {
        result.refused.push_back(*address);
        continue;
      }
      auto lifetime = cap(record.ttl);
      // The guest may cache the answer no longer than the firewall allows
      // the address, so a cached answer never points at a closed door.
      auto ttl = static_cast<uint32_t>(std::min<int64_t>(record.ttl, lifetime.count()));
      result.reply.answers.push_back(dns::a_record(record.name, ttl, *address));
      result.learned.push_back({*address, lifetime});
    }
  }
  return result;
}

void LearnedAddresses::learn(const std::string& name, Ipv4 address, Clock::time_point expires) {
  auto& expiry = by_name_[name][address];
  expiry = std::max(expiry, expires);
}

bool LearnedAddresses::allows(const std::string& name, Ipv4 address, Clock::time_point now) const {
  auto entry = by_name_.find(name);
  if (entry == by_name_.end()) return false;
  auto found = entry->second.find(address);
  return found != entry->second.end() && found->second > now;
}

void LearnedAddresses::expire(Clock::time_point now) {
  for (auto name = by_name_.begin(); name != by_name_.end();) {
    std::erase_if(name->second, [now](const auto& item) { return item.second <= now; });
    name = name->second.empty() ? by_name_.erase(name) : std::next(name);
  }
}

size_t LearnedAddresses::size() const {
  size_t count = 0;
  for (const auto& [name, addresses] : by_name_)
    count += addresses.size();
  return count;
}

std::vector<LearnedAddresses::Entry> LearnedAddresses::entries() const {
  std::vector<Entry> out;
  for (const auto& [name, addresses] : by_name_) {
    for (const auto& [address, expires] : addresses)
      out.push_back({name, address, expires});
  }
  return out;
}

} // namespace vesicle::net
