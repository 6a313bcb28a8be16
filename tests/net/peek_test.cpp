// Reading SNI and Host from the first bytes of a connection
// (net/peek.hpp), with real ClientHellos from OpenSSL and hand-made
// hostile ones.
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <string>
#include <vector>

#include "net/peek.hpp"

namespace vesicle::net {
namespace {

using namespace std::literals;

// What OpenSSL sends first as a client, with `sni` unless empty.
std::vector<uint8_t> openssl_client_hello(const std::string& sni) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL* ssl = SSL_new(ctx);
  BIO *inside = nullptr, *outside = nullptr;
  BIO_new_bio_pair(&inside, 0, &outside, 0);
  SSL_set_bio(ssl, inside, inside);
  if (!sni.empty()) SSL_set_tlsext_host_name(ssl, sni.c_str());
  SSL_connect(ssl); // wants to read the ServerHello: returns at once
  std::vector<uint8_t> bytes(BIO_ctrl_pending(outside));
  BIO_read(outside, bytes.data(), static_cast<int>(bytes.size()));
  SSL_free(ssl);
  BIO_free(outside);
  SSL_CTX_free(ctx);
  return bytes;
}

void put16(std::vector<uint8_t>& out, size_t value) {
  out.push_back(static_cast<uint8_t>(value >> 8));
  out.push_back(static_cast<uint8_t>(value));
}

// A minimal ClientHello with the given extensions, split into records of at
// most `record_size` bytes of handshake data.
std::vector<uint8_t> hand_client_hello(const std::vector<std::vector<uint8_t>>& extensions,
                                       size_t record_size = 16384) {
  std::vector<uint8_t> body = {0x03, 0x03};
  body.insert(body.end(), 32, 0xAB); // random
  body.push_back(0);                 // session id
  put16(body, 2);
  body.insert(body.end(), {0x13, 0x01}); // one cipher suite
  body.insert(body.end(), {1, 0});       // null compression
  std::vector<uint8_t> all;
  for (const auto& extension : extensions)
    all.insert(all.end(), extension.begin(), extension.end());
  put16(body, all.size());
  body.insert(body.end(), all.begin(), all.end());
  std::vector<uint8_t> handshake = {1, 0, 0, 0};
  handshake[2] = static_cast<uint8_t>(body.size() >> 8);
  handshake[3] = static_cast<uint8_t>(body.size());
  handshake.insert(handshake.end(), body.begin(), body.end());
  std::vector<uint8_t> records;
  for (size_t at = 0; at < handshake.size(); at += record_size) {
    size_t length = std::min(record_size, handshake.size() - at);
    records.insert(records.end(), {22, 3, 1});
    put16(records, length);
    records.insert(records.end(), handshake.begin() + at, handshake.begin() + at + length);
  }
  return records;
}

std::vector<uint8_t> sni_extension(const std::vector<std::string>& names) {
  std::vector<uint8_t> list;
  for (const auto& name : names) {
    list.push_back(0);
    put16(list, name.size());
    list.insert(list.end(), name.begin(), name.end());
  }
  std::vector<uint8_t> data;
  put16(data, list.size());
  data.insert(data.end(), list.begin(), list.end());
  std::vector<uint8_t> extension;
  put16(extension, 0);
  put16(extension, data.size());
  extension.insert(extension.end(), data.begin(), data.end());
  return extension;
}

std::vector<uint8_t> bytes_of(std::string_view text) {
  return {text.begin(), text.end()};
}

TEST(PeekTls, ReadsSniFromOpenSslClientHello) {
  auto hello = openssl_client_hello("Allowed.Test");
  ASSERT_GT(hello.size(), 100u);
  auto result = peek_tls_client_hello(hello);
  ASSERT_EQ(result.status, PeekStatus::done) << result.error;
  EXPECT_EQ(result.name, "allowed.test");
}

TEST(PeekTls, NeedsMoreUntilTheWholeHelloArrived) {
  auto hello = openssl_client_hello("allowed.test");
  for (size_t length = 0; length < hello.size(); ++length) {
    auto result = peek_tls_client_hello(std::span<const uint8_t>(hello.data(), length));
    ASSERT_EQ(result.status, PeekStatus::need_more) << length << ": " << result.error;
  }
}

TEST(PeekTls, RefusesHelloWithoutSni) {
  auto result = peek_tls_client_hello(openssl_client_hello(""));
  EXPECT_EQ(result.status, PeekStatus::invalid);
}

TEST(PeekTls, ReassemblesHelloSplitAcrossRecords) {
  auto hello = hand_client_hello({sni_extension({"allowed.test"})}, 7);
  auto result = peek_tls_client_hello(hello);
  ASSERT_EQ(result.status, PeekStatus::done) << result.error;
  EXPECT_EQ(result.name, "allowed.test");
}

TEST(PeekTls, RefusesIpLiteralAndBadNames) {
  for (std::string name :
       std::vector<std::string>{"198.18.1.10", "allowed.test\x01", "-x.test", "a..test", ""}) {
    auto result = peek_tls_client_hello(hand_client_hello({sni_extension({name})}));
    EXPECT_EQ(result.status, PeekStatus::invalid) << name;
  }
}

TEST(PeekTls, RefusesTwoHostNames) {
  auto result =
      peek_tls_client_hello(hand_client_hello({sni_extension({"allowed.test", "denied.test"})}));
  EXPECT_EQ(result.status, PeekStatus::invalid);
}

TEST(PeekTls, RefusesDuplicateSniExtensions) {
  auto result = peek_tls_client_hello(
      hand_client_hello({sni_extension({"allowed.test"}), sni_extension({"denied.test"})}));
  EXPECT_EQ(result.status, PeekStatus::invalid);
}

TEST(PeekTls, RefusesEncryptedClientHello) {
  std::vector<uint8_t> ech = {0xfe, 0x0d, 0x00, 0x01, 0x00};
  auto result = peek_tls_client_hello(hand_client_hello({sni_extension({"allowed.test"}), ech}));
  EXPECT_EQ(result.status, PeekStatus::invalid);
}

TEST(PeekTls, RefusesNonTls) {
  EXPECT_EQ(peek_tls_client_hello(bytes_of("GET / HTTP/1.1\r\n")).status, PeekStatus::invalid);
  EXPECT_EQ(peek_tls_client_hello(bytes_of("\x16\x02\x00\x00\x05hello"sv)).status,
            PeekStatus::invalid);
}

TEST(PeekHttp, ReadsHostWithoutPort) {
  auto result = peek_http_host(bytes_of("GET /x HTTP/1.1\r\nHost: Allowed.Test:80\r\n"
                                        "User-Agent: t\r\n\r\n"));
  ASSERT_EQ(result.status, PeekStatus::done) << result.error;
  EXPECT_EQ(result.name, "allowed.test");
}

TEST(PeekHttp, NeedsMoreUntilTheHeadEnds) {
  std::string request = "GET / HTTP/1.1\r\nHost: allowed.test\r\nAccept: */*\r\n\r\n";
  for (size_t length = 0; length < request.size(); ++length) {
    auto result = peek_http_host(bytes_of(std::string_view(request).substr(0, length)));
    ASSERT_EQ(result.status, PeekStatus::need_more) << length;
  }
  EXPECT_EQ(peek_http_host(bytes_of(request)).status, PeekStatus::done);
}

TEST(PeekHttp, RefusesMissingDuplicateAndLiteralHosts) {
  for (std::string_view request : std::vector<std::string_view>{
           "GET / HTTP/1.1\r\n\r\n", "GET / HTTP/1.0\r\n\r\n",
           "GET / HTTP/1.1\r\nHost: allowed.test\r\nHost: denied.test\r\n\r\n",
           "GET / HTTP/1.1\r\nHost: 198.18.1.10\r\n\r\n",
           "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
           "GET / HTTP/1.1\r\nHost: allowed.test:x\r\n\r\n",
           "GET / HTTP/1.1\r\nHost: allowed.test@denied.test\r\n\r\n",
           "\x16\x03\x01\x00\x05hello"sv}) {
    EXPECT_EQ(peek_http_host(bytes_of(request)).status, PeekStatus::invalid) << request;
  }
}

TEST(PeekHttp, RefusesHeadsLargerThanWeInspect) {
  std::string request = "GET / HTTP/1.1\r\nX-Pad: " + std::string(kMaxPeekBytes, 'a') + "\r\n";
  EXPECT_EQ(peek_http_host(bytes_of(request)).status, PeekStatus::invalid);
}

} // namespace
} // namespace vesicle::net
