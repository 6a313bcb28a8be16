#include "common/escape.hpp"

namespace vesicle {

void append_escaped(std::string& out, std::string_view text, bool escape_quotes,
                    ControlEscape style) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (unsigned char c : text) {
    switch (c) {
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    case '"':
    case '\\':
      if (escape_quotes) out += '\\';
      out += static_cast<char>(c);
      break;
    default:
      if (c < ' ' || (c == 0x7f && style == ControlEscape::log)) {
        out += style == ControlEscape::json ? "\\u00" : "\\x";
        out += kHex[c >> 4];
        out += kHex[c & 0xf];
      } else {
        out += static_cast<char>(c);
      }
    }
  }
}

} // namespace vesicle
