// What kind of failure an Error is. The kind alone decides how the failure
// reaches a user: its HTTP status, the API's error code, the SDKs'
// exception class and the metrics label all come from the one table in
// error_kind.cpp (kError_kinds), never from an error's text.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace vesicle {

// Numbered from 1: the kind travels between actors as a CAF error code,
// where 0 means "no error".
enum class ErrorKind : std::uint8_t {
  invalid_argument = 1,   // the request is malformed; the subject names the field
  unauthenticated = 2,    // no key, or one hostd does not know
  not_found = 3,          // unknown id (or another key's: the same to the caller)
  method_not_allowed = 4, // the route exists, not with this method
  conflict = 5,           // the sandbox or Space is in the wrong state for this
  guest_died = 6,         // the sandbox's VM died or was ended
  too_large = 7,          // a body, upload or header over its cap
  corrupted = 8,          // stored state (a Space) fails its checks; it is kept
  quota = 9,              // the key's tier allows no more of this
  capacity = 10,          // the host has no room now
  unavailable = 11,       // hostd cannot serve this now (shutting down)
  timeout = 12,           // a deadline passed before the answer came
  internal = 13,          // a bug, or a failure of the host itself
  // The guest broke the agent protocol (an oversized frame, a reply to a
  // request never made, data beyond what was asked, a flood past its
  // budget): hostd disconnected it and ended the sandbox.
  guest_protocol_violation = 14,
  // The key is valid but may not do this (e.g. /metrics without an admin key).
  forbidden = 15,
};

struct ErrorKindInfo {
  ErrorKind kind;
  std::string_view name;          // the kind's own name, and the metrics label
  std::string_view api_code;      // {"error": {"code": ...}} in the REST API
  unsigned http_status;           // the REST API's status for it
  std::string_view sdk_exception; // the Python SDK's class (vesicle/errors.py)
};

// Every kind, in enum order.
std::span<const ErrorKindInfo> error_kinds();
const ErrorKindInfo& kind_info(ErrorKind kind);
// The kind a CAF error code or a stored number stands for, if any.
std::optional<ErrorKind> error_kind_from_code(std::uint8_t code);

} // namespace vesicle
