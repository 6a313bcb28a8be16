// The rules for display outputs (guest.proto's Display: a MIME bundle of a
// Python cell) that the guest agent and hostd both apply. guest/repl/repl.py
// applies the same ones before it sends a bundle, so a well-behaved REPL
// never trips them; they are here for the one that is not.
#pragma once

#include <cstddef>
#include <string_view>

#include "messages/framing.hpp"

namespace vesicle::display {

// A bundle goes to the host in one frame: its data, plus kEntryOverhead per
// MIME type for the type and the framing, stays under this.
inline constexpr std::size_t kMaxBundleBytes = wire::kMaxFramePayload - (64u << 10);
inline constexpr std::size_t kEntryOverhead = 16;
inline constexpr std::size_t kMaxMimeTypeBytes = 255;

// "type/subtype" (parameters allowed): 1 to 255 printable ASCII characters,
// no spaces, one '/' with something on each side.
bool valid_mime_type(std::string_view mime);

// Whether clients get this type's data as text (text/*, image/svg+xml,
// application/json, application/javascript, application/xml, *+json,
// *+xml) rather than base64. The SDKs and repl.py use the same list.
bool is_text_type(std::string_view mime);

// What one entry counts against kMaxBundleBytes.
inline std::size_t entry_bytes(std::string_view mime, std::string_view data) {
  return mime.size() + data.size() + kEntryOverhead;
}

} // namespace vesicle::display
