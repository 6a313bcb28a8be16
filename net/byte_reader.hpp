// A bounds-checked big-endian reader over a byte span, for the wire formats
// the network layer parses (DNS messages, TLS ClientHello). Every read says
// whether the bytes were there; a failed read leaves nothing half-read that
// the callers use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace vesicle::net {

class ByteReader {
public:
  explicit ByteReader(std::span<const uint8_t> data, size_t pos = 0) : data_(data), pos_(pos) {}
  // The whole span, for formats that point back into it (DNS names).
  std::span<const uint8_t> data() const { return data_; }
  size_t pos() const { return pos_; }
  void seek(size_t pos) { pos_ = pos; }
  size_t remaining() const { return data_.size() - pos_; }

  bool u8(uint8_t& out) {
    if (remaining() < 1) return false;
    out = data_[pos_++];
    return true;
  }
  bool u16(uint16_t& out) {
    if (remaining() < 2) return false;
    out = static_cast<uint16_t>(data_[pos_] << 8 | data_[pos_ + 1]);
    pos_ += 2;
    return true;
  }
  bool u24(uint32_t& out) {
    if (remaining() < 3) return false;
    out = uint32_t{data_[pos_]} << 16 | uint32_t{data_[pos_ + 1]} << 8 | data_[pos_ + 2];
    pos_ += 3;
    return true;
  }
  bool u32(uint32_t& out) {
    uint16_t high, low;
    if (!u16(high) || !u16(low)) return false;
    out = uint32_t{high} << 16 | low;
    return true;
  }
  bool bytes(size_t count, std::vector<uint8_t>& out) {
    if (remaining() < count) return false;
    out.assign(data_.begin() + pos_, data_.begin() + pos_ + count);
    pos_ += count;
    return true;
  }
  bool skip(size_t count) {
    if (remaining() < count) return false;
    pos_ += count;
    return true;
  }
  // A reader over the next `count` bytes alone.
  std::optional<ByteReader> take(size_t count) {
    if (remaining() < count) return std::nullopt;
    ByteReader sub(data_.subspan(pos_, count));
    pos_ += count;
    return sub;
  }

private:
  std::span<const uint8_t> data_;
  size_t pos_ = 0;
};

} // namespace vesicle::net
