// The MCP server's handling of one POSTed message (hostd/mcp.cpp: JSON-RPC
// over hostd's JSON parser, then the tool table's input schemas) and its
// base64 decoding of file contents a client sends. Every reply is one JSON
// object in valid UTF-8; a tool call handed on to the runtime names a tool
// that exists and passed its schema; base64 decodes what it encoded, and a
// decoded text has exactly the length its padding says.
#include <string>
#include <string_view>

#include "hostd/mcp.hpp"
#include "hostd/ndjson.hpp"
#include "tests/fuzz/fuzz_check.hpp"

namespace mcp = vesicle::hostd::mcp;

namespace {

void check_reply(const std::string& reply) {
  FUZZ_CHECK(vesicle::hostd::is_valid_utf8(reply));
  auto parsed = vesicle::json::parse(reply);
  FUZZ_CHECK(parsed && parsed->is_object());
  FUZZ_CHECK((*parsed)["jsonrpc"].as_string() == "2.0");
}

} // namespace

extern "C" int VESICLE_FUZZ_ENTRY(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  const mcp::Step step = mcp::step(text);
  FUZZ_CHECK(!(step.reply && step.call));
  if (step.reply) check_reply(*step.reply);
  if (step.call) {
    const auto* tool = mcp::find_tool(step.call->name);
    FUZZ_CHECK(tool);
    FUZZ_CHECK(!mcp::schema_violation((*tool)["inputSchema"], step.call->arguments));
    // What the runtime's answer looks like, with the call's id.
    check_reply(mcp::tool_reply(step.id, mcp::ToolResult::error("failed: " + step.call->name)));
  }

  FUZZ_CHECK(mcp::base64_decode_strict(mcp::base64_encode(text)) == std::string(text));
  if (auto decoded = mcp::base64_decode_strict(text)) {
    std::size_t padding = 0;
    while (padding < text.size() && text[text.size() - 1 - padding] == '=')
      ++padding;
    FUZZ_CHECK(decoded->size() == text.size() / 4 * 3 - padding);
  }
  return 0;
}
