#include "messages/display.hpp"

#include <algorithm>

namespace vesicle::display {

bool valid_mime_type(std::string_view mime) {
  if (mime.empty() || mime.size() > kMaxMimeTypeBytes) return false;
  const bool printable = std::all_of(mime.begin(), mime.end(), [](char c) {
    return c > ' ' && c < 0x7f; // excludes space, controls and non-ASCII
  });
  if (!printable || std::count(mime.begin(), mime.end(), '/') != 1) return false;
  return mime.front() != '/' && mime.back() != '/';
}

bool is_text_type(std::string_view mime) {
  return mime.starts_with("text/") || mime == "image/svg+xml" || mime == "application/json" ||
         mime == "application/javascript" || mime == "application/xml" || mime.ends_with("+json") ||
         mime.ends_with("+xml");
}

} // namespace vesicle::display
