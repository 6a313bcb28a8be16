#include "hostd/e2b_connect.hpp"

#include "common/escape.hpp"

namespace vesicle::hostd::e2b {

std::string envelope(std::string_view json, std::uint8_t flags) {
  std::string out;
  out.reserve(5 + json.size());
  const auto size = static_cast<std::uint32_t>(json.size());
  out += static_cast<char>(flags);
  out += static_cast<char>(size >> 24 & 0xff);
  out += static_cast<char>(size >> 16 & 0xff);
  out += static_cast<char>(size >> 8 & 0xff);
  out += static_cast<char>(size & 0xff);
  out.append(json);
  return out;
}

Result<std::string> single_envelope(std::string_view body) {
  if (body.size() < 5)
    return Error::of(ErrorKind::invalid_argument,
                     "a Connect streaming request holds one envelope (5-byte prefix and a "
                     "message); got " +
                         std::to_string(body.size()) + " bytes");
  const auto flags = static_cast<std::uint8_t>(body[0]);
  if (flags & kCompressed)
    return Error::of(ErrorKind::invalid_argument,
                     "compressed Connect envelopes are not supported; send them uncompressed");
  const std::uint32_t size = static_cast<std::uint32_t>(static_cast<unsigned char>(body[1])) << 24 |
                             static_cast<std::uint32_t>(static_cast<unsigned char>(body[2])) << 16 |
                             static_cast<std::uint32_t>(static_cast<unsigned char>(body[3])) << 8 |
                             static_cast<std::uint32_t>(static_cast<unsigned char>(body[4]));
  if (body.size() - 5 != size)
    return Error::of(ErrorKind::invalid_argument,
                     "the Connect envelope says " + std::to_string(size) + " bytes but " +
                         std::to_string(body.size() - 5) + " follow; send exactly one envelope");
  return std::string(body.substr(5));
}

std::string_view connect_code(ErrorKind kind) {
  switch (kind) {
  case ErrorKind::invalid_argument:
  case ErrorKind::too_large:
    return "invalid_argument";
  case ErrorKind::not_found:
    return "not_found";
  case ErrorKind::unauthenticated:
    return "unauthenticated";
  case ErrorKind::guest_died:
  case ErrorKind::unavailable:
    return "unavailable";
  case ErrorKind::capacity:
  case ErrorKind::quota:
    return "resource_exhausted";
  case ErrorKind::conflict:
    return "failed_precondition";
  case ErrorKind::timeout:
    return "deadline_exceeded";
  default:
    return "internal";
  }
}

unsigned connect_http_status(std::string_view code) {
  if (code == "invalid_argument" || code == "failed_precondition" || code == "out_of_range")
    return 400;
  if (code == "unauthenticated") return 401;
  if (code == "permission_denied") return 403;
  if (code == "not_found") return 404;
  if (code == "already_exists" || code == "aborted") return 409;
  if (code == "resource_exhausted") return 429;
  if (code == "unimplemented") return 501;
  if (code == "unavailable") return 503;
  if (code == "deadline_exceeded") return 504;
  return 500;
}

std::string json_string(std::string_view text) {
  std::string out = "\"";
  append_escaped(out, text, true, ControlEscape::json);
  return out + "\"";
}

std::string error_json(std::string_view code, std::string_view message) {
  return "{\"code\":" + json_string(code) + ",\"message\":" + json_string(message) + "}";
}

std::string end_of_stream(std::string_view code, std::string_view message) {
  if (code.empty()) return envelope("{}", kEndStream);
  return envelope("{\"error\":" + error_json(code, message) + "}", kEndStream);
}

} // namespace vesicle::hostd::e2b
