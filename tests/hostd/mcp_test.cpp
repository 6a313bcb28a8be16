// hostd/mcp.cpp, the JSON-RPC side of /mcp: hostile and malformed messages
// get the right JSON-RPC error, the embedded tool table is the shared one,
// arguments are checked against its schemas, and the helpers (UTF-8, base64,
// sessions) hold up. The transport and the tools against real VMs are
// tested by tests/mcp/ with the official MCP client.
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "hostd/mcp.hpp"

namespace vesicle::hostd::mcp {
namespace {

json::Value parse_reply(const Step& step) {
  EXPECT_TRUE(step.reply.has_value());
  auto parsed = json::parse(step.reply.value_or("null"));
  EXPECT_TRUE(parsed) << *step.reply;
  return parsed ? parsed.value() : json::Value();
}

void expect_error(std::string_view message, const json::Value& id, int code,
                  std::string_view words) {
  auto step = mcp::step(message);
  EXPECT_TRUE(step.rpc_error) << message;
  EXPECT_FALSE(step.call.has_value());
  auto reply = parse_reply(step);
  EXPECT_EQ(reply["jsonrpc"].as_string(), "2.0");
  EXPECT_EQ(reply["id"].dump(), id.dump()) << message;
  EXPECT_EQ(reply["error"]["code"].as_int(), code) << message << " -> " << *step.reply;
  EXPECT_NE(reply["error"]["message"].as_string().find(words), std::string::npos)
      << message << " -> " << *step.reply;
}

TEST(McpStep, MalformedMessagesAreJsonRpcErrors) {
  const json::Value null;
  expect_error("{not json", null, kParseError, "parse error");
  expect_error("", null, kParseError, "parse error");
  expect_error("\xff\xfe{}", null, kParseError, "not valid UTF-8");
  expect_error(std::string(10000, '['), null, kParseError, "nesting");
  expect_error(R"([{"jsonrpc":"2.0","id":1,"method":"ping"}])", null, kInvalidRequest, "batches");
  expect_error("42", null, kInvalidRequest, "got an integer");
  expect_error(R"({"jsonrpc":"2.0","id":{"a":1},"method":"ping"})", null, kInvalidRequest,
               "id must be");
  expect_error(R"({"jsonrpc":"2.0","id":1.5,"method":"ping"})", null, kInvalidRequest,
               "id must be");
  expect_error(R"({"jsonrpc":"1.0","id":7,"method":"ping"})", 7, kInvalidRequest,
               "\"jsonrpc\" must be \"2.0\"");
  expect_error(R"({"jsonrpc":"2.0","id":8})", 8, kInvalidRequest, "\"method\" is missing");
  expect_error(R"({"jsonrpc":"2.0","id":9,"method":5})", 9, kInvalidRequest, "must be a string");
  expect_error(R"({"jsonrpc":"2.0","id":"p","method":"ping","params":[1]})", "p", kInvalidParams,
               "\"params\" must be an object");
  expect_error(R"({"jsonrpc":"2.0","id":10,"method":"resources/list"})", 10, kMethodNotFound,
               "resources/list");
  expect_error(R"({"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"rm_rf"}})", 11,
               kInvalidParams, "no tool named \"rm_rf\"");
  expect_error(R"({"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"arguments":{}}})", 12,
               kInvalidParams, "params.name");
  expect_error(
      R"({"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":"fork","arguments":[]}})",
      13, kInvalidParams, "arguments must be an object");
  expect_error(R"({"jsonrpc":"2.0","id":14,"method":"initialize","params":{}})", 14, kInvalidParams,
               "protocolVersion");
}

TEST(McpStep, NotificationsAndResponsesGetNoAnswer) {
  for (const char* message : {R"({"jsonrpc":"2.0","method":"notifications/initialized"})",
                              R"({"jsonrpc":"2.0","method":"notifications/whatever"})",
                              R"({"jsonrpc":"2.0","id":"x","result":{}})"}) {
    auto step = mcp::step(message);
    EXPECT_FALSE(step.reply.has_value()) << message;
    EXPECT_FALSE(step.call.has_value()) << message;
    EXPECT_FALSE(step.rpc_error) << message;
  }
}

TEST(McpStep, InitializeNegotiatesTheVersion) {
  auto step = mcp::step(
      R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26"}})");
  EXPECT_TRUE(step.initialize);
  EXPECT_EQ(step.protocol_version, "2025-03-26");
  auto reply = parse_reply(step);
  EXPECT_EQ(reply["result"]["protocolVersion"].as_string(), "2025-03-26");
  EXPECT_EQ(reply["result"]["serverInfo"]["name"].as_string(), "vesicle-hostd");
  EXPECT_FALSE(reply["result"]["capabilities"]["tools"]["listChanged"].as_bool(true));
  // From the shared table, as the stdio server's.
  EXPECT_NE(reply["result"]["instructions"].as_string().find("close_sandbox"), std::string::npos);

  // A version we do not speak: ours, and the client decides.
  step = mcp::step(
      R"({"jsonrpc":"2.0","id":"i","method":"initialize","params":{"protocolVersion":"2099-01-01"}})");
  EXPECT_EQ(parse_reply(step)["result"]["protocolVersion"].as_string(), kLatestVersion);
  EXPECT_EQ(parse_reply(step)["id"].as_string(), "i");
}

TEST(McpStep, ToolsListIsTheSharedTable) {
  // The same file the Python server loads.
  std::ifstream file(VESICLE_MCP_TOOLS_JSON);
  ASSERT_TRUE(file) << VESICLE_MCP_TOOLS_JSON;
  std::stringstream text;
  text << file.rdbuf();
  auto table = json::parse(text.str());
  ASSERT_TRUE(table);

  auto reply = parse_reply(mcp::step(R"({"jsonrpc":"2.0","id":1,"method":"tools/list"})"));
  const auto& tools = reply["result"]["tools"].as_array();
  ASSERT_EQ(tools.size(), table.value()["tools"].as_array().size());
  ASSERT_EQ(tools.size(), 11u);
  for (std::size_t i = 0; i < tools.size(); ++i) {
    const auto& source = table.value()["tools"].as_array()[i];
    EXPECT_EQ(tools[i].dump(), source.dump()) << "tool " << i << " differs from the file";
    EXPECT_TRUE(find_tool(source["name"].as_string()));
  }
  EXPECT_FALSE(find_tool("nope"));
}

TEST(McpStep, ArgumentsAreCheckedAgainstTheSchema) {
  auto call = [](std::string params) {
    return mcp::step(R"({"jsonrpc":"2.0","id":5,"method":"tools/call","params":)" + params + "}");
  };
  struct Case {
    const char* params;
    const char* words;
  };
  const Case cases[] = {
      {R"({"name":"run_python","arguments":{"sandbox_id":"sb-1"}})", "run_python: code: required"},
      {R"({"name":"run_python","arguments":{"sandbox_id":"sb-1","code":5}})",
       "code: must be a string, got an integer"},
      {R"({"name":"run_python","arguments":{"sandbox_id":"sb-1","code":"1","timeout_s":0}})",
       "timeout_s: must be at least 1"},
      {R"({"name":"run_python","arguments":{"sandbox_id":"sb-1","code":"1","timeout_s":1.5}})",
       "timeout_s: must be an integer, got a number"},
      {R"({"name":"fork","arguments":{"sandbox_id":"sb-1","n":33}})", "n: must be at most 32"},
      {R"({"name":"create_sandbox","arguments":{"egress":"sometimes"}})",
       R"(egress: must be one of "off", "open", "allowlist")"},
      {R"({"name":"create_sandbox","arguments":{"allow":[1]}})", "allow[0]: must be a string"},
      {R"({"name":"list_sandboxes","arguments":{"x":1}})",
       "x: not an argument of this tool (it takes: none)"},
  };
  for (const auto& c : cases) {
    auto step = call(c.params);
    EXPECT_FALSE(step.call.has_value()) << c.params;
    EXPECT_FALSE(step.rpc_error) << c.params;
    auto reply = parse_reply(step);
    EXPECT_TRUE(reply["result"]["isError"].as_bool()) << c.params;
    const auto& text = reply["result"]["content"].as_array().at(0)["text"].as_string();
    EXPECT_NE(text.find(c.words), std::string::npos) << c.params << " -> " << text;
  }
  // Good arguments: the tool is to be run.
  auto step = call(R"({"name":"run_python","arguments":{"sandbox_id":"sb-1","code":"1+1"}})");
  ASSERT_TRUE(step.call.has_value());
  EXPECT_FALSE(step.reply.has_value());
  EXPECT_EQ(step.call->name, "run_python");
  EXPECT_EQ(step.call->arguments.at("code").as_string(), "1+1");
  EXPECT_EQ(step.id.as_int(), 5);
  // No arguments at all is an empty object.
  step = call(R"({"name":"list_sandboxes"})");
  EXPECT_TRUE(step.call.has_value());
}

TEST(McpResult, TextIsValidUtf8AndImagesAreBase64) {
  ToolResult result = ToolResult::text("ok \xff done");
  result.add_image(std::string("\x89PNG\r\n\x1a\n", 8), "image/png");
  auto reply = json::parse(tool_reply(7, result));
  ASSERT_TRUE(reply);
  const auto& content = reply.value()["result"]["content"].as_array();
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["text"].as_string(), "ok \xEF\xBF\xBD done");
  EXPECT_EQ(content[1]["type"].as_string(), "image");
  EXPECT_EQ(content[1]["data"].as_string(), "iVBORw0KGgo=");
  EXPECT_EQ(content[1]["mimeType"].as_string(), "image/png");
  EXPECT_FALSE(reply.value()["result"]["isError"].as_bool(true));
}

TEST(McpBase64, RoundTripsAndRefusesJunk) {
  for (std::string bytes : {std::string(), std::string("a"), std::string("ab"), std::string("abc"),
                            std::string("\0\xff\x01\xfe", 4)}) {
    auto encoded = base64_encode(bytes);
    EXPECT_EQ(encoded.size() % 4, 0u);
    EXPECT_EQ(base64_decode_strict(encoded), bytes) << encoded;
  }
  EXPECT_EQ(base64_encode("hello"), "aGVsbG8=");
  for (const char* junk : {"!!", "aGVsbG8", "aGVs bG8=", "aGVsbG8=\n", "a===", "=aGV"})
    EXPECT_FALSE(base64_decode_strict(junk).has_value()) << junk;
}

TEST(McpUtf8, BadBytesBecomeReplacementCharacters) {
  EXPECT_EQ(utf8_lossy("héllo"), "héllo");
  EXPECT_EQ(utf8_lossy("a\xc3"), "a\xEF\xBF\xBD");
  EXPECT_EQ(utf8_lossy("\xed\xa0\x80x"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDx");
}

TEST(McpSessions, BoundToTheirKeyEndedAndCapped) {
  Sessions sessions(2);
  auto a = sessions.open("key-a", "2025-06-18");
  EXPECT_EQ(a.size(), 32u);
  EXPECT_TRUE(sessions.touch(a, "key-a"));
  EXPECT_FALSE(sessions.touch(a, "key-b"));
  EXPECT_FALSE(sessions.close(a, "key-b"));
  auto b = sessions.open("key-b", "2025-06-18");
  EXPECT_NE(a, b);
  EXPECT_TRUE(sessions.touch(b, "key-b"));
  // Full: the one unused longest (a) goes.
  auto c = sessions.open("key-a", "2025-06-18");
  EXPECT_EQ(sessions.size(), 2u);
  EXPECT_FALSE(sessions.touch(a, "key-a"));
  EXPECT_TRUE(sessions.close(c, "key-a"));
  EXPECT_FALSE(sessions.touch(c, "key-a"));
  EXPECT_FALSE(sessions.close(c, "key-a"));
}

} // namespace
} // namespace vesicle::hostd::mcp
