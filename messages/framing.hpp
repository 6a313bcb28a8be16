// Length-prefixed framing of protobuf messages on the agent channel: a
// 4-byte little-endian payload length, then the payload. A frame longer than
// kMaxFramePayload is a protocol error (the peer is broken or hostile), not
// something to allocate for.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <google/protobuf/message_lite.h>

#include "common/result.hpp"

namespace vesicle::wire {

inline constexpr std::size_t kFrameHeaderBytes = 4;
inline constexpr std::size_t kMaxFramePayload = 4u << 20;
// Data chunks (file contents, output) are cut to this size so a frame stays
// far below kMaxFramePayload.
inline constexpr std::size_t kMaxChunkBytes = 256u << 10;

// Appends one frame holding `message` to `out`.
void append_frame(std::string& out, const google::protobuf::MessageLite& message);
std::string encode_frame(const google::protobuf::MessageLite& message);

// Splits a byte stream into frame payloads. Feed it whatever arrived; take
// complete payloads with next(). After an error the decoder stays failed.
class FrameDecoder {
public:
  void feed(std::string_view bytes);

  // The next complete payload; std::nullopt when more bytes are needed.
  // An oversized length is an Error.
  Result<std::optional<std::string>> next();

  // Bytes held that do not yet form a complete frame (a stream that ends
  // with this non-zero was truncated).
  std::size_t pending_bytes() const { return buffer_.size() - consumed_; }

private:
  std::string buffer_;
  std::size_t consumed_ = 0;
  bool failed_ = false;
};

// Parses a payload into `message`; an Error names the message type.
Result<void> parse_payload(std::string_view payload, google::protobuf::MessageLite& message);

} // namespace vesicle::wire
