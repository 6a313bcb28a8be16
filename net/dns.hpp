// DNS messages (RFC 1035), parsed and built here: enough for a forwarder
// that reads questions, reads A/CNAME answers and writes fresh replies.
// Names are kept in presentation form: labels joined by '.', any byte
// outside [A-Za-z0-9-_] escaped as \DDD, so a hostile label such as "a.b"
// can never pass for two labels.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "net/ipv4.hpp"

namespace vesicle::net::dns {

enum : uint16_t {
  kTypeA = 1,
  kTypeNS = 2,
  kTypeCNAME = 5,
  kTypeSOA = 6,
  kTypeAAAA = 28,
  kTypeOPT = 41,
  kClassIN = 1,
};

enum Rcode : uint8_t {
  kNoError = 0,
  kFormErr = 1,
  kServFail = 2,
  kNxDomain = 3,
  kNotImp = 4,
  kRefused = 5,
};

struct Header {
  uint16_t id = 0;
  bool qr = false;
  uint8_t opcode = 0;
  bool aa = false, tc = false, rd = false, ra = false;
  uint8_t rcode = 0;
};

struct Question {
  std::string name;
  uint16_t type = kTypeA;
  uint16_t klass = kClassIN;
};

struct Record {
  std::string name;
  uint16_t type = 0;
  uint16_t klass = kClassIN;
  uint32_t ttl = 0;
  std::vector<uint8_t> rdata; // for CNAME: empty, see target
  std::string target;         // CNAME target, decoded (compression resolved)
};

struct Message {
  Header header;
  std::vector<Question> questions;
  std::vector<Record> answers;
  std::vector<Record> authorities;
  std::vector<Record> additionals;
};

// Largest message this code reads or writes (UDP with EDNS, and TCP).
inline constexpr size_t kMaxMessage = 4096;

Result<Message> parse(std::span<const uint8_t> wire);
// Only the header of a message too broken to parse (to answer FORMERR).
std::optional<Header> parse_header(std::span<const uint8_t> wire);
Result<std::vector<uint8_t>> encode(const Message& message);

Record a_record(std::string name, uint32_t ttl, Ipv4 address);
Record cname_record(std::string name, uint32_t ttl, std::string target);
std::optional<Ipv4> a_address(const Record& record);

// Case-insensitive comparison of two presentation-form names.
bool same_name(std::string_view a, std::string_view b);

} // namespace vesicle::net::dns
