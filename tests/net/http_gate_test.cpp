// Every request head of a kept-alive HTTP/1.1 connection is found and
// checked, whatever the body framing and however the bytes arrive
// (net/http_gate.hpp).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "net/http_gate.hpp"

namespace vesicle::net {
namespace {

using Verdict = HttpGate::Verdict;

std::span<const uint8_t> bytes(const std::string& text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

// Feeds `stream` in pieces of `piece` bytes and forwards everything the
// gate lets through, recording each head's host; stops at the first
// invalid step (recorded as "!error").
struct Run {
  std::vector<std::string> hosts;
  std::string forwarded;
};
Run run(const std::string& stream, size_t piece) {
  HttpGate gate;
  Run out;
  size_t at = 0;
  while (true) {
    auto step = gate.next();
    if (step.verdict == Verdict::need_more) {
      if (at >= stream.size()) break;
      auto n = std::min(piece, stream.size() - at);
      gate.append(bytes(stream.substr(at, n)));
      at += n;
      continue;
    }
    if (step.verdict == Verdict::invalid) {
      out.hosts.push_back("!" + step.error);
      break;
    }
    if (step.verdict == Verdict::head) out.hosts.push_back(step.host);
    const auto& buffered = gate.buffered();
    out.forwarded.append(buffered.begin(), buffered.begin() + static_cast<long>(step.bytes));
    gate.forwarded(step.bytes);
  }
  return out;
}

const std::string kTwoRequests = "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
                                 "GET /x HTTP/1.1\r\nHost: denied.test:80\r\n\r\n";

TEST(HttpGate, FindsEveryHeadOnAKeptAliveConnection) {
  for (size_t piece : {1, 3, 7, 1000}) {
    auto result = run(kTwoRequests, piece);
    EXPECT_EQ(result.hosts, (std::vector<std::string>{"allowed.test", "denied.test"})) << piece;
    EXPECT_EQ(result.forwarded, kTwoRequests) << piece;
  }
}

TEST(HttpGate, SkipsBodiesByContentLengthAndChunks) {
  // A body that looks like a request head must not be taken for one.
  const std::string fake = "GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n";
  const std::string stream =
      "POST /a HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: " + std::to_string(fake.size()) +
      "\r\n\r\n" + fake +
      "POST /b HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\n" +
      "5\r\nhello\r\n" + "10\r\n" + fake.substr(0, 16) + "\r\n0\r\n\r\n" +
      "GET /c HTTP/1.1\r\nHost: third.test\r\n\r\n";
  for (size_t piece : {1, 5, 4096}) {
    auto result = run(stream, piece);
    EXPECT_EQ(result.hosts,
              (std::vector<std::string>{"allowed.test", "www.example.test", "third.test"}))
        << piece;
    EXPECT_EQ(result.forwarded, stream) << piece;
  }
}

TEST(HttpGate, NothingOfAHeadPassesBeforeItIsChecked) {
  HttpGate gate;
  gate.append(bytes("GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\nGET / HTTP/1.1\r\nHo"));
  auto first = gate.next();
  ASSERT_EQ(first.verdict, Verdict::head);
  EXPECT_EQ(gate.next().bytes, first.bytes); // the same step until forwarded
  gate.forwarded(first.bytes);
  EXPECT_EQ(gate.next().verdict, Verdict::need_more); // the second head is incomplete
  gate.append(bytes("st: denied.test\r\n\r\n"));
  auto second = gate.next();
  ASSERT_EQ(second.verdict, Verdict::head);
  EXPECT_EQ(second.host, "denied.test");
}

TEST(HttpGate, RefusesWhatIsNotARequestHead) {
  EXPECT_EQ(run("\x16\x03\x01 not http\r\n\r\n", 100).hosts.at(0).front(), '!');
  auto no_host = run("GET / HTTP/1.1\r\n\r\n", 100);
  ASSERT_EQ(no_host.hosts.size(), 1u);
  EXPECT_EQ(no_host.hosts[0].front(), '!');
  EXPECT_TRUE(no_host.forwarded.empty());
  auto literal = run("GET / HTTP/1.1\r\nHost: 198.18.1.20\r\n\r\n", 100);
  EXPECT_EQ(literal.hosts.at(0).front(), '!');
  // A second head that is garbage ends the connection without passing it.
  auto garbage = run("GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\nSSH-2.0-x\r\n\r\n", 100);
  ASSERT_EQ(garbage.hosts.size(), 2u);
  EXPECT_EQ(garbage.hosts[1].front(), '!');
  EXPECT_EQ(garbage.forwarded, "GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
  // A head that never ends is refused at the peek limit.
  auto endless = run("GET / HTTP/1.1\r\nX: " + std::string(20000, 'a'), 512);
  ASSERT_EQ(endless.hosts.size(), 1u);
  EXPECT_EQ(endless.hosts[0].front(), '!');
}

TEST(HttpGate, AfterAnUpgradeBytesPassUnparsed) {
  const std::string stream = "GET /ws HTTP/1.1\r\nHost: allowed.test\r\nConnection: Upgrade\r\n"
                             "Upgrade: websocket\r\n\r\n\x81\x05hello not http";
  auto result = run(stream, 10);
  EXPECT_EQ(result.hosts, (std::vector<std::string>{"allowed.test"}));
  EXPECT_EQ(result.forwarded, stream);
}

} // namespace
} // namespace vesicle::net
