#include "hostd/exec_request_json.hpp"

#include <cstdint>
#include <limits>

#include "hostd/json.hpp"
#include "hostd/ndjson.hpp"
#include "vmm/json.hpp"

namespace vesicle::hostd {

namespace {

// A \uD800-\uDFFF escape: our reader and protobuf's may treat a lone
// surrogate differently, so such a body is left to protobuf. Looks for any
// \u escape starting with D (an escaped backslash before a 'u' matches
// too; that only sends the body the slower way).
bool may_hold_a_surrogate(std::string_view body) {
  for (auto at = body.find("\\u"); at != std::string_view::npos; at = body.find("\\u", at + 2))
    if (at + 2 < body.size() && (body[at + 2] == 'd' || body[at + 2] == 'D')) return true;
  return false;
}

// A JSON string that protobuf would store as is.
const std::string* text(const json::Value& value) {
  if (!value.is_string() || !is_valid_utf8(value.as_string())) return nullptr;
  return &value.as_string();
}

} // namespace

std::optional<api::ExecRequest> plain_exec_request(std::string_view body) {
  if (may_hold_a_surrogate(body)) return std::nullopt;
  // protobuf keeps the last of a field given twice but refuses a map key
  // given twice; such a body is left to it.
  auto document = json::parse(body, json::DuplicateNames::refuse);
  if (!document || !document->is_object()) return std::nullopt;
  api::ExecRequest request;
  for (const auto& [name, value] : document->as_object()) {
    if (name == "code" || name == "language" || name == "cwd") {
      const auto* s = text(value);
      if (!s) return std::nullopt;
      if (name == "code")
        request.set_code(*s);
      else if (name == "language")
        request.set_language(*s);
      else
        request.set_cwd(*s);
    } else if (name == "timeout_s") {
      if (!value.is_int() || value.as_int() < 0 ||
          value.as_int() > std::numeric_limits<std::uint32_t>::max())
        return std::nullopt;
      request.set_timeout_s(static_cast<std::uint32_t>(value.as_int()));
    } else if (name == "env") {
      if (!value.is_object()) return std::nullopt;
      for (const auto& [key, entry] : value.as_object()) {
        const auto* s = text(entry);
        if (!s || !is_valid_utf8(key)) return std::nullopt;
        (*request.mutable_env())[key] = *s;
      }
    } else {
      return std::nullopt;
    }
  }
  return request;
}

Result<void> parse_exec_request(std::string_view body, api::ExecRequest& request) {
  if (auto plain = plain_exec_request(body)) {
    request = std::move(*plain);
    return {};
  }
  return from_json(body, request);
}

} // namespace vesicle::hostd
