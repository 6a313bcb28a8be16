// The agent channel's frame decoder (messages/framing.cpp) over bytes a
// guest sends. The first byte picks how the rest is cut into reads; the
// payloads and the verdict must not depend on the cut, and the decoder
// never hands out more bytes than it was fed.
#include <string>
#include <string_view>
#include <vector>

#include "messages/framing.hpp"
#include "tests/fuzz/fuzz_check.hpp"

namespace {

struct Decoded {
  std::vector<std::string> payloads;
  bool failed = false;
  std::size_t pending = 0;
};

// Takes every complete payload out of `decoder`.
void drain(vesicle::wire::FrameDecoder& decoder, Decoded& out) {
  while (!out.failed) {
    auto next = decoder.next();
    if (!next) {
      out.failed = true;
      FUZZ_CHECK(!decoder.next()); // a failed decoder stays failed
      return;
    }
    if (!next.value()) return;
    FUZZ_CHECK(next.value()->size() <= vesicle::wire::kMaxFramePayload);
    out.payloads.push_back(std::move(*next.value()));
  }
}

Decoded decode(std::string_view stream, std::size_t cut) {
  vesicle::wire::FrameDecoder decoder;
  Decoded out;
  for (std::size_t at = 0; at < stream.size() && !out.failed; at += cut) {
    decoder.feed(stream.substr(at, cut));
    drain(decoder, out);
  }
  out.pending = decoder.pending_bytes();
  return out;
}

} // namespace

extern "C" int VESICLE_FUZZ_ENTRY(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t cut = data[0] % 16 + 1;
  const std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);
  const Decoded whole = decode(stream, stream.size() + 1);
  const Decoded pieces = decode(stream, cut);
  FUZZ_CHECK(whole.failed == pieces.failed);
  FUZZ_CHECK(whole.payloads == pieces.payloads);
  if (!whole.failed) {
    std::size_t framed = whole.pending;
    for (const auto& payload : whole.payloads)
      framed += vesicle::wire::kFrameHeaderBytes + payload.size();
    FUZZ_CHECK(framed == stream.size());
    FUZZ_CHECK(whole.pending == pieces.pending);
  }
  return 0;
}
