// The Model Context Protocol's JSON-RPC layer for /mcp, apart from HTTP and
// from the runtime: one message in, what to answer (or which tool to run)
// out. Tools, their descriptions and their input schemas come from the one
// table both MCP transports share (sdk/python/vesicle/mcp_tools.json,
// embedded at build time). Protocol errors are JSON-RPC errors; a tool that
// fails, or is called with arguments its schema refuses, answers with an
// isError result, which a model can read and correct.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "vmm/json.hpp"

namespace vesicle::hostd::mcp {

// JSON-RPC 2.0 error codes.
inline constexpr int kParseError = -32700;
inline constexpr int kInvalidRequest = -32600;
inline constexpr int kMethodNotFound = -32601;
inline constexpr int kInvalidParams = -32602;

// The protocol version answered when the client's is not one of ours.
inline constexpr std::string_view kLatestVersion = "2025-06-18";
bool supported_version(std::string_view version);

// The shared tool table as parsed JSON ({"tools": [...]}, with its
// "_comment" keys).
const json::Value& tool_table();
// The tool's entry, or null when there is no such tool.
const json::Value* find_tool(std::string_view name);

// What a tool call produced: MCP content blocks and whether it failed.
struct ToolResult {
  json::Array content;
  bool is_error = false;

  static ToolResult text(std::string text);
  static ToolResult error(std::string message);
  void add_text(std::string text);
  void add_image(std::string_view bytes, std::string mime_type);
};

struct ToolCall {
  std::string name;
  json::Object arguments;
};

// One POSTed message, taken apart. Exactly one of: `reply` (answer with it
// now), `call` (run the tool, then answer with tool_reply(id, result)), or
// neither (a notification or a client's response: nothing to answer).
struct Step {
  std::optional<std::string> reply;
  std::optional<ToolCall> call;
  json::Value id;
  // The message was an initialize request that succeeded, agreeing on
  // protocol_version: the HTTP transport starts a session.
  bool initialize = false;
  std::string protocol_version;
  // A JSON-RPC error reply (for the log and for HTTP's status choice).
  bool rpc_error = false;
};

Step step(std::string_view message);

std::string tool_reply(const json::Value& id, const ToolResult& result);
std::string error_reply(const json::Value& id, int code, std::string message);

// Checks `arguments` against a tool's inputSchema (the subset the table
// uses: object, string, integer, boolean, array of strings, enum, minimum,
// maximum, required, additionalProperties false). The message names the
// argument and what it should be.
std::optional<std::string> schema_violation(const json::Value& schema,
                                            const json::Object& arguments);

// Turns arbitrary bytes into valid UTF-8 (each bad byte becomes U+FFFD), so
// a guest's output can go into a JSON string.
std::string utf8_lossy(std::string_view bytes);
std::string base64_encode(std::string_view bytes);
// Strict: the standard alphabet with padding, whitespace not allowed.
std::optional<std::string> base64_decode_strict(std::string_view text);

// The HTTP transport's sessions: an id handed out at initialize, bound to
// the API key that made it; every later request must carry it.
class Sessions {
public:
  explicit Sessions(std::size_t max_sessions = 1024,
                    std::chrono::seconds idle_limit = std::chrono::hours(24))
      : max_(max_sessions), idle_limit_(idle_limit) {}

  std::string open(const std::string& owner, std::string protocol_version);
  // Whether `id` is a live session of `owner` (and marks it used).
  bool touch(const std::string& id, const std::string& owner);
  // Ends the session; false when it is not one of `owner`'s.
  bool close(const std::string& id, const std::string& owner);
  std::size_t size() const;

private:
  struct Session {
    std::string owner;
    std::string protocol_version;
    std::chrono::steady_clock::time_point last_used;
  };
  void expire_locked(std::chrono::steady_clock::time_point now);

  mutable std::mutex mutex_;
  std::map<std::string, Session> sessions_;
  std::size_t max_;
  std::chrono::seconds idle_limit_;
};

} // namespace vesicle::hostd::mcp
