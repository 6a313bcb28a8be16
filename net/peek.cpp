#include "net/peek.hpp"

#include <boost/asio/buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>

#include <optional>
#include <set>
#include <vector>

#include "net/allowlist.hpp"
#include "net/byte_reader.hpp"

namespace vesicle::net {
namespace {

constexpr uint8_t kHandshakeRecord = 22;
constexpr uint8_t kClientHello = 1;
constexpr uint16_t kServerNameExtension = 0;
constexpr uint16_t kEncryptedClientHelloExtension = 0xfe0d;

PeekResult invalid(std::string why) {
  return {PeekStatus::invalid, {}, std::move(why)};
}

using Cursor = ByteReader;

PeekResult parse_client_hello_body(Cursor body) {
  uint8_t session_length, compression_length;
  uint16_t cipher_length, extensions_length;
  if (!body.skip(2 + 32) || !body.u8(session_length) || session_length > 32 ||
      !body.skip(session_length) || !body.u16(cipher_length) || cipher_length % 2 != 0 ||
      !body.skip(cipher_length) || !body.u8(compression_length) || !body.skip(compression_length)) {
    return invalid("malformed ClientHello");
  }
  if (body.remaining() == 0) return invalid("ClientHello without extensions (no SNI)");
  if (!body.u16(extensions_length)) return invalid("malformed ClientHello extensions");
  auto extensions = body.take(extensions_length);
  if (!extensions) return invalid("truncated ClientHello extensions");
  std::set<uint16_t> seen;
  std::optional<std::string> sni;
  while (extensions->remaining() > 0) {
    uint16_t type, length;
    if (!extensions->u16(type) || !extensions->u16(length)) return invalid("malformed extension");
    auto data = extensions->take(length);
    if (!data) return invalid("truncated extension");
    if (!seen.insert(type).second) return invalid("duplicate TLS extension");
    if (type == kEncryptedClientHelloExtension) {
      return invalid("Encrypted Client Hello hides the real server name");
    }
    if (type != kServerNameExtension) continue;
    uint16_t list_length;
    if (!data->u16(list_length)) return invalid("malformed server_name");
    auto list = data->take(list_length);
    if (!list || data->remaining() != 0) return invalid("malformed server_name list");
    while (list->remaining() > 0) {
      uint8_t name_type;
      uint16_t name_length;
      if (!list->u8(name_type) || !list->u16(name_length)) return invalid("malformed server_name");
      auto name_bytes = list->take(name_length);
      if (!name_bytes) return invalid("truncated server_name");
      if (name_type != 0) continue;
      if (sni) return invalid("more than one host_name in server_name");
      std::string text;
      for (size_t i = 0; i < name_length; ++i) {
        uint8_t c = 0;
        name_bytes->u8(c);
        text.push_back(static_cast<char>(c));
      }
      sni = std::move(text);
    }
  }
  if (!sni) return invalid("ClientHello without SNI (a connection to an IP literal?)");
  auto normalized = normalize_hostname(*sni);
  if (!normalized) return invalid("SNI is not a host name: " + *sni);
  return {PeekStatus::done, *normalized, {}};
}

} // namespace

PeekResult peek_tls_client_hello(std::span<const uint8_t> bytes) {
  // The ClientHello may span several handshake records: gather their
  // payloads until the whole message is there.
  std::vector<uint8_t> handshake;
  Cursor records(bytes);
  while (true) {
    if (handshake.size() >= 4) {
      uint32_t length = uint32_t{handshake[1]} << 16 | uint32_t{handshake[2]} << 8 | handshake[3];
      if (handshake[0] != kClientHello)
        return invalid("first handshake message is not ClientHello");
      if (length + 4 > kMaxPeekBytes) return invalid("ClientHello larger than we inspect");
      if (handshake.size() >= length + 4) {
        Cursor body(std::span<const uint8_t>(handshake).subspan(4, length));
        return parse_client_hello_body(body);
      }
    }
    if (records.remaining() == 0) return {PeekStatus::need_more, {}, {}};
    if (bytes[bytes.size() - records.remaining()] != kHandshakeRecord) {
      return invalid("not a TLS handshake");
    }
    if (records.remaining() < 5) return {PeekStatus::need_more, {}, {}};
    uint8_t type = 0, major = 0, minor = 0;
    uint16_t length = 0;
    records.u8(type);
    records.u8(major);
    records.u8(minor);
    records.u16(length);
    if (major != 3) return invalid("not a TLS record");
    if (length == 0 || length > 16384) return invalid("bad TLS record length");
    auto payload = records.take(length);
    if (!payload) return {PeekStatus::need_more, {}, {}};
    for (size_t i = 0; i < length; ++i) {
      uint8_t c = 0;
      payload->u8(c);
      handshake.push_back(c);
    }
  }
}

PeekResult peek_http_host(std::span<const uint8_t> bytes) {
  namespace http = boost::beast::http;
  http::request_parser<http::empty_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(kMaxPeekBytes));
  parser.eager(false);
  boost::beast::error_code ec;
  parser.put(boost::asio::buffer(bytes.data(), bytes.size()), ec);
  if (ec == http::error::need_more) return {PeekStatus::need_more, {}, {}};
  if (ec) return invalid("not an HTTP/1.x request: " + ec.message());
  if (!parser.is_header_done()) return {PeekStatus::need_more, {}, {}};
  const auto& request = parser.get();
  if (request.count(http::field::host) != 1) {
    return invalid("an HTTP request needs exactly one Host header");
  }
  std::string host(request[http::field::host]);
  if (!host.empty() && host.front() == '[') return invalid("IPv6 literal in Host");
  if (auto colon = host.rfind(':'); colon != std::string::npos) {
    auto port = std::string_view(host).substr(colon + 1);
    if (port.empty() || port.find_first_not_of("0123456789") != std::string_view::npos) {
      return invalid("malformed Host header: " + host);
    }
    host.resize(colon);
  }
  auto normalized = normalize_hostname(host);
  if (!normalized) return invalid("Host is not a host name: " + host);
  return {PeekStatus::done, *normalized, {}};
}

} // namespace vesicle::net
