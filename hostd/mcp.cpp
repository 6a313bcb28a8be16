#include "hostd/mcp.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>

#include <openssl/rand.h>

#include "common/log.hpp"
#include "hostd/api.hpp"
#include "hostd/mcp_tools_json.hpp"
#include "hostd/ndjson.hpp"
#include "vmm/qemu.hpp"

namespace vesicle::hostd::mcp {

namespace {

// The versions this server speaks, newest first (their differences do not
// touch tools). A client asking for a newer one gets kLatestVersion and,
// like the TypeScript SDK, goes on with it.
constexpr std::array<std::string_view, 3> kVersions = {"2025-06-18", "2025-03-26", "2024-11-05"};

constexpr std::string_view kBase64Alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

json::Value parse_table() {
  auto parsed = json::parse(kToolsJson);
  // The table is part of the build, and a unit test parses it: a broken
  // one cannot reach a running hostd; say so loudly if it ever does.
  if (!parsed || !parsed->as_object().count("tools")) {
    log::error("the embedded MCP tool table is not valid JSON",
               {{"error", parsed ? std::string("no \"tools\" member") : parsed.error().message()}});
    std::abort();
  }
  return std::move(parsed.value());
}

// A copy without the "_comment"-style keys, which are for people.
json::Value without_private_keys(const json::Value& value) {
  if (value.is_array()) {
    json::Array out;
    for (const auto& item : value.as_array())
      out.push_back(without_private_keys(item));
    return out;
  }
  if (!value.is_object()) return value;
  json::Object out;
  for (const auto& [key, item] : value.as_object())
    if (key.empty() || key.front() != '_') out.emplace(key, without_private_keys(item));
  return out;
}

std::string result_reply(const json::Value& id, json::Value result) {
  json::Object reply{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}};
  return json::Value(std::move(reply)).dump();
}

Step error_step(const json::Value& id, int code, std::string message) {
  Step out;
  out.id = id;
  out.reply = error_reply(id, code, std::move(message));
  out.rpc_error = true;
  return out;
}

const char* type_name(const json::Value& value) {
  if (value.is_null()) return "null";
  if (value.is_bool()) return "a boolean";
  if (value.is_int()) return "an integer";
  if (value.is_number()) return "a number";
  if (value.is_string()) return "a string";
  if (value.is_array()) return "an array";
  return "an object";
}

std::optional<std::string> value_violation(const std::string& name, const json::Value& schema,
                                           const json::Value& value) {
  const auto& type = schema["type"].as_string();
  bool ok = true;
  if (type == "string") ok = value.is_string();
  if (type == "integer") ok = value.is_int();
  if (type == "boolean") ok = value.is_bool();
  if (type == "object") ok = value.is_object();
  if (type == "array") ok = value.is_array();
  if (!ok)
    return name + ": must be " + (type == "integer" ? "an " : "a ") + type + ", got " +
           type_name(value);
  if (schema.contains("enum")) {
    const auto& options = schema["enum"].as_array();
    bool listed = false;
    std::string names;
    for (const auto& option : options) {
      listed = listed || option.as_string() == value.as_string();
      names += (names.empty() ? "\"" : ", \"") + option.as_string() + "\"";
    }
    if (!listed) return name + ": must be one of " + names + ", got \"" + value.as_string() + "\"";
  }
  if (value.is_int()) {
    if (schema.contains("minimum") && value.as_int() < schema["minimum"].as_int())
      return name + ": must be at least " + std::to_string(schema["minimum"].as_int()) + ", got " +
             std::to_string(value.as_int());
    if (schema.contains("maximum") && value.as_int() > schema["maximum"].as_int())
      return name + ": must be at most " + std::to_string(schema["maximum"].as_int()) + ", got " +
             std::to_string(value.as_int());
  }
  if (value.is_array() && schema.contains("items")) {
    std::size_t index = 0;
    for (const auto& item : value.as_array()) {
      if (auto bad =
              value_violation(name + "[" + std::to_string(index) + "]", schema["items"], item))
        return bad;
      ++index;
    }
  }
  return std::nullopt;
}

Step initialize(const json::Value& id, const json::Object& params) {
  auto requested = params.find("protocolVersion");
  if (requested == params.end() || !requested->second.is_string())
    return error_step(id, kInvalidParams,
                      "initialize: params.protocolVersion must be a string such as \"" +
                          std::string(kLatestVersion) + "\"");
  const auto& asked = requested->second.as_string();
  // Spec: answer with the client's version when we speak it, else with
  // ours; the client then decides whether it can go on.
  std::string version = supported_version(asked) ? asked : std::string(kLatestVersion);
  json::Object result{
      {"protocolVersion", version},
      {"capabilities", json::Object{{"tools", json::Object{{"listChanged", false}}}}},
      {"serverInfo", json::Object{{"name", "vesicle-hostd"}, {"version", kVersion}}},
      {"instructions", tool_table()["instructions"]}};
  Step out;
  out.id = id;
  out.reply = result_reply(id, std::move(result));
  out.initialize = true;
  out.protocol_version = std::move(version);
  return out;
}

Step tools_call(const json::Value& id, const json::Object& params) {
  auto name = params.find("name");
  if (name == params.end() || !name->second.is_string())
    return error_step(id, kInvalidParams, "tools/call: params.name must be the tool's name");
  const auto* tool = find_tool(name->second.as_string());
  if (!tool)
    return error_step(id, kInvalidParams,
                      "tools/call: no tool named \"" + name->second.as_string() +
                          "\"; tools/list names them");
  ToolCall call{name->second.as_string(), {}};
  if (auto arguments = params.find("arguments"); arguments != params.end()) {
    if (!arguments->second.is_object() && !arguments->second.is_null())
      return error_step(id, kInvalidParams,
                        std::string("tools/call: params.arguments must be an object, got ") +
                            type_name(arguments->second));
    call.arguments = arguments->second.as_object();
  }
  Step out;
  out.id = id;
  if (auto bad = schema_violation((*tool)["inputSchema"], call.arguments)) {
    out.reply = tool_reply(id, ToolResult::error(call.name + ": " + *bad));
    return out;
  }
  out.call = std::move(call);
  return out;
}

} // namespace

bool supported_version(std::string_view version) {
  return std::find(kVersions.begin(), kVersions.end(), version) != kVersions.end();
}

const json::Value& tool_table() {
  static const json::Value table = parse_table();
  return table;
}

const json::Value* find_tool(std::string_view name) {
  for (const auto& tool : tool_table()["tools"].as_array())
    if (tool["name"].as_string() == name) return &tool;
  return nullptr;
}

ToolResult ToolResult::text(std::string text) {
  ToolResult out;
  out.add_text(std::move(text));
  return out;
}

ToolResult ToolResult::error(std::string message) {
  ToolResult out = text(std::move(message));
  out.is_error = true;
  return out;
}

void ToolResult::add_text(std::string text) {
  content.emplace_back(json::Object{{"type", "text"}, {"text", utf8_lossy(text)}});
}

void ToolResult::add_image(std::string_view bytes, std::string mime_type) {
  content.emplace_back(json::Object{
      {"type", "image"}, {"data", base64_encode(bytes)}, {"mimeType", std::move(mime_type)}});
}

std::optional<std::string> schema_violation(const json::Value& schema,
                                            const json::Object& arguments) {
  const auto& properties = schema["properties"].as_object();
  for (const auto& required : schema["required"].as_array())
    if (!arguments.count(required.as_string())) return required.as_string() + ": required";
  for (const auto& [name, value] : arguments) {
    auto property = properties.find(name);
    if (property == properties.end()) {
      std::string known;
      for (const auto& [known_name, _] : properties)
        known += (known.empty() ? "" : ", ") + known_name;
      return name + ": not an argument of this tool (it takes: " +
             (known.empty() ? std::string("none") : known) + ")";
    }
    if (auto bad = value_violation(name, property->second, value)) return bad;
  }
  return std::nullopt;
}

std::string tool_reply(const json::Value& id, const ToolResult& result) {
  json::Object body{{"content", result.content}, {"isError", result.is_error}};
  return result_reply(id, std::move(body));
}

std::string error_reply(const json::Value& id, int code, std::string message) {
  json::Object error{{"code", code}, {"message", utf8_lossy(message)}};
  json::Object reply{{"jsonrpc", "2.0"}, {"id", id}, {"error", std::move(error)}};
  return json::Value(std::move(reply)).dump();
}

Step step(std::string_view message) {
  const json::Value no_id;
  // Parsed strings go back out in replies (the id, a tool name): anything
  // but valid UTF-8 is refused before that can happen.
  if (!is_valid_utf8(message))
    return error_step(no_id, kParseError, "parse error: the message is not valid UTF-8");
  auto parsed = json::parse(message);
  if (!parsed)
    return error_step(no_id, kParseError,
                      "parse error: " + parsed.error().message() +
                          "; send one JSON-RPC 2.0 object per request");
  const auto& document = parsed.value();
  if (document.is_array())
    return error_step(no_id, kInvalidRequest,
                      "batches are not supported (protocol 2025-06-18 has none): send one "
                      "JSON-RPC message per request");
  if (!document.is_object())
    return error_step(no_id, kInvalidRequest,
                      std::string("invalid request: a JSON-RPC message is an object, got ") +
                          type_name(document));
  const auto& object = document.as_object();
  const bool has_id = object.count("id") != 0;
  const json::Value& id = document["id"];
  if (has_id && !id.is_string() && !id.is_int())
    return error_step(no_id, kInvalidRequest,
                      std::string("invalid request: id must be a string or an integer, got ") +
                          type_name(id));
  if (document["jsonrpc"].as_string() != "2.0")
    return error_step(id, kInvalidRequest, "invalid request: \"jsonrpc\" must be \"2.0\"");
  if (!object.count("method")) {
    // A response to a request of ours: we send none, so there is nothing
    // to match it with; accept and drop it.
    if (has_id && (object.count("result") || object.count("error"))) return Step{};
    return error_step(id, kInvalidRequest, "invalid request: \"method\" is missing");
  }
  if (!document["method"].is_string())
    return error_step(id, kInvalidRequest, "invalid request: \"method\" must be a string");
  const auto& method = document["method"].as_string();
  const json::Value& params = document["params"];
  if (object.count("params") && !params.is_object())
    return error_step(id, kInvalidParams,
                      std::string("invalid params: \"params\" must be an object, got ") +
                          type_name(params));
  // Notifications (initialized, cancelled, progress...) need no answer;
  // the ones we do not know are ignored, as the spec allows.
  if (!has_id) return Step{};

  if (method == "initialize") return initialize(id, params.as_object());
  if (method == "ping") {
    Step out;
    out.id = id;
    out.reply = result_reply(id, json::Object{});
    return out;
  }
  if (method == "tools/list") {
    Step out;
    out.id = id;
    out.reply =
        result_reply(id, json::Object{{"tools", without_private_keys(tool_table()["tools"])}});
    return out;
  }
  if (method == "tools/call") return tools_call(id, params.as_object());
  return error_step(id, kMethodNotFound,
                    "method not found: \"" + method +
                        "\"; this server has initialize, ping, tools/list and tools/call");
}

std::string utf8_lossy(std::string_view bytes) {
  if (is_valid_utf8(bytes)) return std::string(bytes);
  std::string out;
  out.reserve(bytes.size());
  std::size_t i = 0;
  while (i < bytes.size()) {
    const auto lead = static_cast<unsigned char>(bytes[i]);
    std::size_t length = lead < 0x80         ? 1
                         : (lead >> 5) == 6  ? 2
                         : (lead >> 4) == 14 ? 3
                         : (lead >> 3) == 30 ? 4
                                             : 0;
    if (length != 0 && i + length <= bytes.size() && is_valid_utf8(bytes.substr(i, length))) {
      out.append(bytes.substr(i, length));
      i += length;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

std::string base64_encode(std::string_view bytes) {
  const auto* alphabet = kBase64Alphabet.data();
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t n = static_cast<unsigned char>(bytes[i]) << 16 |
                            static_cast<unsigned char>(bytes[i + 1]) << 8 |
                            static_cast<unsigned char>(bytes[i + 2]);
    for (int shift : {18, 12, 6, 0})
      out += alphabet[(n >> shift) & 63];
  }
  const std::size_t rest = bytes.size() - i;
  if (rest > 0) {
    std::uint32_t n = static_cast<unsigned char>(bytes[i]) << 16;
    if (rest == 2) n |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    out += rest == 2 ? alphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// Checks the form strictly, then decodes with vmm's (lenient) decoder.
std::optional<std::string> base64_decode_strict(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::size_t padding = 0;
  while (padding < 2 && padding < text.size() && text[text.size() - 1 - padding] == '=')
    ++padding;
  const auto body = text.substr(0, text.size() - padding);
  if (body.find_first_not_of(kBase64Alphabet) != std::string_view::npos) return std::nullopt;
  return vmm::qemu::base64_decode(text);
}

std::string Sessions::open(const std::string& owner, std::string protocol_version) {
  std::array<unsigned char, 16> random{};
  if (RAND_bytes(random.data(), static_cast<int>(random.size())) != 1) std::abort();
  std::string id;
  static constexpr char kHex[] = "0123456789abcdef";
  for (auto byte : random) {
    id += kHex[byte >> 4];
    id += kHex[byte & 15];
  }
  std::lock_guard lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  expire_locked(now);
  // Full: the session unused longest goes (its client gets 404 and
  // initializes again, as the spec has clients do).
  if (sessions_.size() >= max_) {
    auto oldest = std::min_element(sessions_.begin(), sessions_.end(), [](auto& a, auto& b) {
      return a.second.last_used < b.second.last_used;
    });
    sessions_.erase(oldest);
  }
  sessions_[id] = Session{owner, std::move(protocol_version), now};
  return id;
}

bool Sessions::touch(const std::string& id, const std::string& owner) {
  std::lock_guard lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  expire_locked(now);
  auto found = sessions_.find(id);
  if (found == sessions_.end() || found->second.owner != owner) return false;
  found->second.last_used = now;
  return true;
}

bool Sessions::close(const std::string& id, const std::string& owner) {
  std::lock_guard lock(mutex_);
  auto found = sessions_.find(id);
  if (found == sessions_.end() || found->second.owner != owner) return false;
  sessions_.erase(found);
  return true;
}

std::size_t Sessions::size() const {
  std::lock_guard lock(mutex_);
  return sessions_.size();
}

void Sessions::expire_locked(std::chrono::steady_clock::time_point now) {
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (now - it->second.last_used > idle_limit_)
      it = sessions_.erase(it);
    else
      ++it;
  }
}

} // namespace vesicle::hostd::mcp
