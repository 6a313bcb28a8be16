// The Connect protocol (connectrpc.com/docs/protocol), JSON codec, as envd
// speaks it: unary calls are plain JSON both ways with errors
// {"code": "<name>", "message"} under a matching HTTP status; server
// streams carry envelopes (1 flag byte, 4-byte big-endian length, JSON),
// the last one flagged end-of-stream with {} or {"error": {...}}.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/error_kind.hpp"
#include "common/result.hpp"

namespace vesicle::hostd::e2b {

inline constexpr std::uint8_t kEndStream = 0x02;
inline constexpr std::uint8_t kCompressed = 0x01;

// One envelope around `json`.
std::string envelope(std::string_view json, std::uint8_t flags = 0);
// The JSON of the single envelope a server-stream request body holds.
// Refuses a compressed one, a short one and trailing bytes.
Result<std::string> single_envelope(std::string_view body);

// Connect's error code name for a vesicle error kind ("not_found", ...),
// and the HTTP status a unary error goes out with.
std::string_view connect_code(ErrorKind kind);
unsigned connect_http_status(std::string_view code);

// {"code": ..., "message": ...}
std::string error_json(std::string_view code, std::string_view message);
// The end-of-stream envelope: {} or {"error": {...}} when `code` is set.
std::string end_of_stream(std::string_view code = {}, std::string_view message = {});

// A JSON string literal (quotes included).
std::string json_string(std::string_view text);

} // namespace vesicle::hostd::e2b
