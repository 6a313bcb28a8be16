#include "guest/agent/events.hpp"

#include <cerrno>

namespace vesicle::agent {

guest::Event failure_event(guest::Failure::Code code, int errno_value, std::string message) {
  guest::Event event;
  auto* failure = event.mutable_failure();
  failure->set_code(code);
  failure->set_errno_value(errno_value);
  failure->set_message(clean_utf8(message, 64u << 10));
  return event;
}

guest::Event failure_from_error(const Error& error) {
  guest::Failure::Code code = guest::Failure::IO;
  switch (error.errno_value) {
  case ENOENT:
  case ENOTDIR:
    code = guest::Failure::NOT_FOUND;
    break;
  case ENOSPC:
  case EDQUOT:
    code = guest::Failure::NO_SPACE;
    break;
  case EFBIG:
    code = guest::Failure::TOO_LARGE;
    break;
  case 0:
    code = guest::Failure::INTERNAL;
    break;
  default:
    break;
  }
  return failure_event(code, error.errno_value, error.message());
}

guest::Event done_event(std::uint64_t size, std::uint32_t mode, bool eof) {
  guest::Event event;
  auto* done = event.mutable_done();
  done->set_size(size);
  done->set_mode(mode);
  done->set_eof(eof);
  return event;
}

namespace {

// Length of the valid UTF-8 sequence at text[at], or 0 if it is invalid.
std::size_t utf8_sequence_length(std::string_view text, std::size_t at) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(at);
  if (lead < 0x80) return 1;
  std::size_t length = 0;
  std::uint32_t min = 0;
  std::uint32_t cp = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2;
    min = 0x80;
    cp = lead & 0x1F;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    min = 0x800;
    cp = lead & 0x0F;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    min = 0x10000;
    cp = lead & 0x07;
  } else {
    return 0;
  }
  if (at + length > text.size()) return 0;
  for (std::size_t i = 1; i < length; ++i) {
    if ((byte(at + i) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(at + i) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return length;
}

} // namespace

std::string clean_utf8(std::string_view text, std::size_t max_bytes) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(std::min(text.size(), max_bytes));
  std::size_t at = 0;
  while (at < text.size()) {
    const std::size_t length = utf8_sequence_length(text, at);
    const std::string_view piece = length == 0 ? kReplacement : text.substr(at, length);
    if (out.size() + piece.size() > max_bytes) break;
    out.append(piece);
    at += length == 0 ? 1 : length;
  }
  return out;
}

} // namespace vesicle::agent
