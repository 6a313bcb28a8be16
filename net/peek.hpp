// Reading the name a client is heading for from the first bytes of its
// connection, before anything is forwarded: the SNI of a TLS ClientHello
// (port 443) and the Host header of an HTTP/1.x request (port 80).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace vesicle::net {

enum class PeekStatus { need_more, done, invalid };

// Connections whose first bytes exceed this without a verdict are refused.
inline constexpr size_t kMaxPeekBytes = 16 * 1024;

struct PeekResult {
  PeekStatus status = PeekStatus::need_more;
  std::string name;  // normalized host name (done only)
  std::string error; // why (invalid only)
};

// A ClientHello with exactly one valid host_name in server_name. Refused:
// no SNI (e.g. a client connecting to an IP literal), an IP literal or
// malformed name, and any ClientHello offering Encrypted Client Hello, whose
// outer SNI need not be the server the client is really talking to.
PeekResult peek_tls_client_hello(std::span<const uint8_t> bytes);

// An HTTP/1.x request head with exactly one Host header naming a host
// (an optional :port is dropped).
PeekResult peek_http_host(std::span<const uint8_t> bytes);

} // namespace vesicle::net
