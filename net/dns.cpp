#include "net/dns.hpp"

#include <cctype>
#include <cstdio>

#include "net/byte_reader.hpp"

namespace vesicle::net::dns {
namespace {

bool plain_char(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

using Reader = ByteReader;

// A possibly compressed name at the reader's position; the reader moves past
// its bytes in place (not to where a pointer leads). Pointers must point
// backwards and at most 32 are followed, so a hostile message cannot make
// this loop.
bool read_name(Reader& reader, std::string& out) {
  const std::span<const uint8_t> data = reader.data();
  out.clear();
  size_t pos = reader.pos();
  bool jumped = false;
  int jumps = 0;
  size_t wire_length = 1;
  while (true) {
    if (pos >= data.size()) return false;
    uint8_t length = data[pos];
    if ((length & 0xC0) == 0xC0) {
      if (pos + 1 >= data.size()) return false;
      size_t target = size_t(length & 0x3F) << 8 | data[pos + 1];
      if (target >= pos || ++jumps > 32) return false;
      if (!jumped) reader.seek(pos + 2);
      jumped = true;
      pos = target;
      continue;
    }
    if ((length & 0xC0) != 0) return false;
    if (length == 0) {
      if (!jumped) reader.seek(pos + 1);
      return true;
    }
    if (pos + 1 + length > data.size()) return false;
    wire_length += length + 1;
    if (wire_length > 255) return false;
    if (!out.empty()) out.push_back('.');
    for (size_t i = pos + 1; i < pos + 1 + length; ++i) {
      uint8_t c = data[i];
      if (plain_char(c)) {
        out.push_back(static_cast<char>(c));
      } else {
        char escaped[5];
        std::snprintf(escaped, sizeof escaped, "\\%03u", unsigned{c});
        out += escaped;
      }
    }
    pos += 1 + length;
  }
}

bool read_header(Reader& reader, Header& header, uint16_t counts[4]) {
  uint16_t flags;
  if (!reader.u16(header.id) || !reader.u16(flags)) return false;
  header.qr = flags & 0x8000;
  header.opcode = (flags >> 11) & 0xF;
  header.aa = flags & 0x0400;
  header.tc = flags & 0x0200;
  header.rd = flags & 0x0100;
  header.ra = flags & 0x0080;
  header.rcode = flags & 0xF;
  for (int i = 0; i < 4; ++i) {
    if (!reader.u16(counts[i])) return false;
  }
  return true;
}

bool read_record(Reader& reader, std::span<const uint8_t> wire, Record& record) {
  uint16_t length;
  if (!read_name(reader, record.name) || !reader.u16(record.type) || !reader.u16(record.klass) ||
      !reader.u32(record.ttl) || !reader.u16(length) || reader.remaining() < length) {
    return false;
  }
  if (record.type == kTypeCNAME) {
    Reader target(wire.first(reader.pos() + length), reader.pos());
    if (!read_name(target, record.target) || target.pos() != reader.pos() + length) return false;
    return reader.skip(length);
  }
  return reader.bytes(length, record.rdata);
}

class Writer {
public:
  void u8(uint8_t value) { out_.push_back(value); }
  void u16(uint16_t value) {
    out_.push_back(static_cast<uint8_t>(value >> 8));
    out_.push_back(static_cast<uint8_t>(value));
  }
  void u32(uint32_t value) {
    u16(static_cast<uint16_t>(value >> 16));
    u16(static_cast<uint16_t>(value));
  }
  void raw(std::span<const uint8_t> bytes) { out_.insert(out_.end(), bytes.begin(), bytes.end()); }
  size_t size() const { return out_.size(); }
  void patch_u16(size_t at, uint16_t value) {
    out_[at] = static_cast<uint8_t>(value >> 8);
    out_[at + 1] = static_cast<uint8_t>(value);
  }

  // Presentation form back to labels (no compression).
  Result<void> name(std::string_view text) {
    size_t start = out_.size();
    std::vector<uint8_t> label;
    auto flush = [&]() -> Result<void> {
      if (label.empty() || label.size() > 63) {
        return make_error("encode DNS name", "empty or over-long label", std::string(text));
      }
      u8(static_cast<uint8_t>(label.size()));
      raw(label);
      label.clear();
      return {};
    };
    for (size_t i = 0; i < text.size(); ++i) {
      char c = text[i];
      if (c == '.') {
        if (auto flushed = flush(); !flushed) return flushed;
      } else if (c == '\\') {
        if (i + 3 < text.size() && std::isdigit(static_cast<unsigned char>(text[i + 1])) &&
            std::isdigit(static_cast<unsigned char>(text[i + 2])) &&
            std::isdigit(static_cast<unsigned char>(text[i + 3]))) {
          int value = (text[i + 1] - '0') * 100 + (text[i + 2] - '0') * 10 + (text[i + 3] - '0');
          if (value > 255) return make_error("encode DNS name", "bad escape", std::string(text));
          label.push_back(static_cast<uint8_t>(value));
          i += 3;
        } else if (i + 1 < text.size()) {
          label.push_back(static_cast<uint8_t>(text[++i]));
        } else {
          return make_error("encode DNS name", "dangling escape", std::string(text));
        }
      } else {
        label.push_back(static_cast<uint8_t>(c));
      }
    }
    if (!text.empty() && text != ".") {
      if (auto flushed = flush(); !flushed) return flushed;
    }
    u8(0);
    if (out_.size() - start > 255) {
      return make_error("encode DNS name", "longer than 255 bytes", std::string(text));
    }
    return {};
  }

  std::vector<uint8_t> take() { return std::move(out_); }

private:
  std::vector<uint8_t> out_;
};

Result<void> write_record(Writer& writer, const Record& record) {
  if (auto named = writer.name(record.name); !named) return named;
  writer.u16(record.type);
  writer.u16(record.klass);
  writer.u32(record.ttl);
  size_t length_at = writer.size();
  writer.u16(0);
  size_t start = writer.size();
  if (record.type == kTypeCNAME) {
    if (auto target = writer.name(record.target); !target) return target;
  } else {
    if (record.rdata.size() > 0xFFFF) return make_error("encode DNS record", "rdata too long");
    writer.raw(record.rdata);
  }
  writer.patch_u16(length_at, static_cast<uint16_t>(writer.size() - start));
  return {};
}

} // namespace

std::optional<Header> parse_header(std::span<const uint8_t> wire) {
  Reader reader(wire);
  Header header;
  uint16_t counts[4];
  if (!read_header(reader, header, counts)) return std::nullopt;
  return header;
}

Result<Message> parse(std::span<const uint8_t> wire) {
  auto malformed = [](const char* where) {
    return make_error("parse DNS message", std::string("malformed ") + where);
  };
  if (wire.size() > 65535) return malformed("message (too long)");
  Reader reader(wire);
  Message message;
  uint16_t counts[4];
  if (!read_header(reader, message.header, counts)) return malformed("header");
  for (uint16_t i = 0; i < counts[0]; ++i) {
    Question question;
    if (!read_name(reader, question.name) || !reader.u16(question.type) ||
        !reader.u16(question.klass)) {
      return malformed("question");
    }
    message.questions.push_back(std::move(question));
  }
  std::vector<Record>* sections[3] = {&message.answers, &message.authorities, &message.additionals};
  for (int s = 0; s < 3; ++s) {
    for (uint16_t i = 0; i < counts[s + 1]; ++i) {
      Record record;
      if (!read_record(reader, wire, record)) return malformed("resource record");
      sections[s]->push_back(std::move(record));
    }
  }
  return message;
}

Result<std::vector<uint8_t>> encode(const Message& message) {
  Writer writer;
  const Header& h = message.header;
  writer.u16(h.id);
  uint16_t flags = static_cast<uint16_t>(
      (h.qr ? 0x8000 : 0) | (h.opcode & 0xF) << 11 | (h.aa ? 0x0400 : 0) | (h.tc ? 0x0200 : 0) |
      (h.rd ? 0x0100 : 0) | (h.ra ? 0x0080 : 0) | (h.rcode & 0xF));
  writer.u16(flags);
  writer.u16(static_cast<uint16_t>(message.questions.size()));
  writer.u16(static_cast<uint16_t>(message.answers.size()));
  writer.u16(static_cast<uint16_t>(message.authorities.size()));
  writer.u16(static_cast<uint16_t>(message.additionals.size()));
  for (const auto& question : message.questions) {
    if (auto named = writer.name(question.name); !named) return std::move(named).error();
    writer.u16(question.type);
    writer.u16(question.klass);
  }
  for (const auto* section : {&message.answers, &message.authorities, &message.additionals}) {
    for (const auto& record : *section) {
      if (auto written = write_record(writer, record); !written) return std::move(written).error();
    }
  }
  if (writer.size() > kMaxMessage) {
    return make_error("encode DNS message", "longer than " + std::to_string(kMaxMessage));
  }
  return writer.take();
}

Record a_record(std::string name, uint32_t ttl, Ipv4 address) {
  Record record{std::move(name), kTypeA, kClassIN, ttl, {}, {}};
  record.rdata = {static_cast<uint8_t>(address.value >> 24),
                  static_cast<uint8_t>(address.value >> 16),
                  static_cast<uint8_t>(address.value >> 8), static_cast<uint8_t>(address.value)};
  return record;
}

Record cname_record(std::string name, uint32_t ttl, std::string target) {
  return Record{std::move(name), kTypeCNAME, kClassIN, ttl, {}, std::move(target)};
}

std::optional<Ipv4> a_address(const Record& record) {
  if (record.type != kTypeA || record.klass != kClassIN || record.rdata.size() != 4) {
    return std::nullopt;
  }
  const auto& d = record.rdata;
  return Ipv4{uint32_t{d[0]} << 24 | uint32_t{d[1]} << 16 | uint32_t{d[2]} << 8 | d[3]};
}

bool same_name(std::string_view a, std::string_view b) {
  if (!a.empty() && a.back() == '.') a.remove_suffix(1);
  if (!b.empty() && b.back() == '.') b.remove_suffix(1);
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

} // namespace vesicle::net::dns
