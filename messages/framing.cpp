#include "messages/framing.hpp"

namespace vesicle::wire {

void append_frame(std::string& out, const google::protobuf::MessageLite& message) {
  const std::size_t size = message.ByteSizeLong();
  const std::uint32_t length = static_cast<std::uint32_t>(size);
  const char header[kFrameHeaderBytes] = {
      static_cast<char>(length & 0xff), static_cast<char>((length >> 8) & 0xff),
      static_cast<char>((length >> 16) & 0xff), static_cast<char>((length >> 24) & 0xff)};
  out.append(header, kFrameHeaderBytes);
  const std::size_t at = out.size();
  out.resize(at + size);
  message.SerializeWithCachedSizesToArray(reinterpret_cast<std::uint8_t*>(out.data() + at));
}

std::string encode_frame(const google::protobuf::MessageLite& message) {
  std::string out;
  append_frame(out, message);
  return out;
}

void FrameDecoder::feed(std::string_view bytes) {
  // Drop what was consumed before growing, so a long-lived decoder holds at
  // most one partial frame plus the new bytes.
  if (consumed_ > 0) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  buffer_.append(bytes);
}

Result<std::optional<std::string>> FrameDecoder::next() {
  if (failed_) return make_error("decode frame", "the channel already sent a bad frame");
  const std::size_t available = buffer_.size() - consumed_;
  if (available < kFrameHeaderBytes) return std::optional<std::string>{};
  const auto* header = reinterpret_cast<const unsigned char*>(buffer_.data() + consumed_);
  const std::size_t length = std::size_t{header[0]} | std::size_t{header[1]} << 8 |
                             std::size_t{header[2]} << 16 | std::size_t{header[3]} << 24;
  if (length > kMaxFramePayload) {
    failed_ = true;
    return make_error("decode frame",
                      "frame of " + std::to_string(length) + " bytes exceeds the limit of " +
                          std::to_string(kMaxFramePayload));
  }
  if (available < kFrameHeaderBytes + length) return std::optional<std::string>{};
  std::string payload = buffer_.substr(consumed_ + kFrameHeaderBytes, length);
  consumed_ += kFrameHeaderBytes + length;
  return std::optional<std::string>{std::move(payload)};
}

Result<void> parse_payload(std::string_view payload, google::protobuf::MessageLite& message) {
  if (!message.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    return make_error("decode " + message.GetTypeName(),
                      "payload of " + std::to_string(payload.size()) + " bytes is not a valid message");
  }
  return {};
}

} // namespace vesicle::wire
