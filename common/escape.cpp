#include "common/escape.hpp"

namespace vesicle {

namespace {

bool needs_escape(unsigned char c, bool escape_quotes, ControlEscape style) {
  return c < ' ' || (c == 0x7f && style == ControlEscape::log) ||
         (escape_quotes && (c == '"' || c == '\\'));
}

} // namespace

void append_escaped(std::string& out, std::string_view text, bool escape_quotes,
                    ControlEscape style) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::size_t plain = 0; // start of the run of bytes that go out as they are
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (!needs_escape(c, escape_quotes, style)) continue;
    // Runs are appended whole: most text has no byte to escape.
    out.append(text.data() + plain, i - plain);
    plain = i + 1;
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
      out += '\\';
      out += static_cast<char>(c);
      break;
    default:
      out += style == ControlEscape::json ? "\\u00" : "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  out.append(text.data() + plain, text.size() - plain);
}

} // namespace vesicle
