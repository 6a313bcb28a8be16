// Escaping text so that it stays on one line inside a quoted string: what
// the JSON writer (vmm/json.cpp) and the log line formatter (common/log.cpp)
// both need, each with its own spelling of a control character.
#pragma once

#include <string>
#include <string_view>

namespace vesicle {

enum class ControlEscape {
  json, // \u00XX for every byte below 0x20 (DEL stays as it is)
  log,  // \xXX for every byte below 0x20 and for DEL
};

// Appends `text` to `out` with \n, \r and \t spelled so, other control
// characters as `style` says, and (when `escape_quotes`) " and \ escaped
// with a backslash. Adds no surrounding quotes.
void append_escaped(std::string& out, std::string_view text, bool escape_quotes,
                    ControlEscape style);

} // namespace vesicle
