#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "hostd/exec_request_json.hpp"
#include "hostd/json.hpp"

using namespace vesicle;
using namespace vesicle::hostd;

namespace {

// Both readings of `body`: protobuf's (from_json) and parse_exec_request's.
// They must agree on whether it is a request and on every field.
void expect_agree(const std::string& body) {
  api::ExecRequest by_protobuf;
  by_protobuf.set_code("left over"); // each parse replaces, never merges
  auto expected = from_json(body, by_protobuf);
  api::ExecRequest ours;
  ours.set_cwd("left over");
  auto got = parse_exec_request(body, ours);
  ASSERT_EQ(static_cast<bool>(expected), static_cast<bool>(got)) << body;
  if (!expected) {
    EXPECT_EQ(expected.error().detail, got.error().detail) << body;
    return;
  }
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(by_protobuf, ours))
      << body << "\nprotobuf: " << by_protobuf.ShortDebugString()
      << "\nours: " << ours.ShortDebugString();
}

} // namespace

TEST(ExecRequestJson, PlainBodiesAreReadDirectlyAndAsProtobufReadsThem) {
  const std::vector<std::string> plain = {
      R"j({"code":"print(1)"})j",
      R"j({"code": "print(1)", "language": "python"})j",
      R"j( {"language":"bash","code":"echo \"hi\" \\ \/ \b\f\n\r\t","timeout_s":30,
           "env":{"A":"1","B":""},"cwd":"/tmp"} )j",
      R"j({"code":"x","timeout_s":0,"env":{}})j",
      R"j({"code":"x","timeout_s":4294967295})j",
      R"j({"code":"x","timeout_s":-0})j",
      R"j({"code":"caf\u00e9 \u20ac \ud83d\ude00"})j",
      "{\"code\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\"}",
      R"j({})j",
  };
  for (const auto& body : plain) {
    expect_agree(body);
  }
  // The direct reading took each of them but the one with an escaped
  // surrogate pair (\ud83d\ude00), which goes to protobuf.
  for (std::size_t i : {0, 1, 2, 3, 4, 5, 7, 8})
    ASSERT_TRUE(plain_exec_request(plain[i]).has_value()) << plain[i];
  EXPECT_EQ(plain_exec_request(plain[2])->env().at("A"), "1");
  EXPECT_EQ(plain_exec_request(plain[2])->code(), "echo \"hi\" \\ / \b\f\n\r\t");
  EXPECT_EQ(plain_exec_request(plain[4])->timeout_s(), 4294967295u);
  EXPECT_EQ(plain_exec_request(plain[5])->timeout_s(), 0u); // -0
  EXPECT_FALSE(plain_exec_request(plain[6]).has_value());
}

TEST(ExecRequestJson, AnythingElseIsLeftToProtobufWhichDecides) {
  const std::vector<std::string> other = {
      R"j({"code":"x","timeoutS":5})j",    // protobuf's camelCase spelling
      R"j({"code":"x","timeout_s":"5"})j", // a number as a string
      R"j({"code":"x","timeout_s":5.0})j", // a float
      R"j({"code":"x","timeout_s":-1})j",  // out of range
      R"j({"code":"x","timeout_s":4294967296})j",
      R"j({"code":"x","timeout_s":1e3})j",
      R"j({"code":"x","timeout_s":01})j", // a leading zero: not JSON
      R"j({"code":"x","timeout_s":-0.0})j",
      R"j({"code":null})j",
      R"j({"code":"x","env":null})j",
      R"j({"code":"x","env":{"A":1}})j",
      R"j({"code":"x","env":[]})j",
      R"j({"code":"x","vcpus":2})j",
      R"j({"code":"a","code":"b"})j",              // a name twice
      R"j({"code":"a","env":{"K":"1","K":"2"}})j", // no such field
      R"j({"code":"\ud800"})j",                    // a lone surrogate
      R"j({"code":"\udc00 then"})j",
      R"j({"code":"\\ud800 is text"})j", // an escaped backslash: still declined
      "{\"code\":\"\xff\xfe\"}",         // not UTF-8
      "{\"code\":\"raw\nnewline\"}",     // a control character in a string
      R"j([1,2])j",
      R"j("code")j",
      R"j({"code":"x",})j",
      R"j({"code":"x"} trailing)j",
      R"j({"code":)j",
      "",
  };
  for (const auto& body : other) {
    EXPECT_FALSE(plain_exec_request(body).has_value()) << body;
    expect_agree(body);
  }
}
