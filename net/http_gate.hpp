// Follows the client's half of a proxied HTTP/1.x connection request by
// request, so the allowlist proxy checks the Host of every request head on
// a kept-alive connection, not only the first. It frames each request
// (Content-Length or chunked body) without changing a byte: the proxy
// forwards exactly the bytes it was given, in the order the gate passes
// them.
//
// After a request asking for a protocol switch (an Upgrade header, e.g.
// WebSocket, or CONNECT) the bytes that follow are not HTTP: they pass
// unparsed to the server already checked for that request's Host.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace vesicle::net {

class HttpGate {
public:
  enum class Verdict {
    need_more, // nothing can be decided before more bytes arrive
    forward,   // forward the first `bytes` buffered bytes, then call forwarded()
    head,      // a complete request head of `bytes` bytes naming `host`: check
               // it, and only if allowed forward it and call forwarded()
    invalid,   // not HTTP/1.x, or a head too large: close the connection
  };
  struct Step {
    Verdict verdict = Verdict::need_more;
    size_t bytes = 0;
    std::string host;  // head only: normalized, without port
    std::string error; // invalid only
  };

  HttpGate();
  ~HttpGate();
  HttpGate(HttpGate&&) noexcept;
  HttpGate& operator=(HttpGate&&) noexcept;

  // Bytes read from the client, in order.
  void append(std::span<const uint8_t> bytes);
  // What to do with the front of the buffered bytes. Calling it again
  // without forwarded() gives the same step.
  Step next();
  // The first `bytes` buffered bytes (those of the last forward or head
  // step) went to the server.
  void forwarded(size_t bytes);
  const std::vector<uint8_t>& buffered() const { return pending_; }

private:
  struct Parser;
  enum class State { head, body, opaque };
  Step parse_body();

  std::vector<uint8_t> pending_;
  std::unique_ptr<Parser> parser_;
  State state_ = State::head;
  std::optional<Step> outstanding_; // handed out, not yet forwarded
  size_t parsed_ = 0;               // bytes of an incomplete head the parser has
  bool switches_ = false;           // the last head asks for a protocol switch
};

} // namespace vesicle::net
