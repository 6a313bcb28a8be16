// One logger for hostd and the layers under it: a line per event on stderr
// (journald picks it up), with a level, a message, then key=value fields:
//
//   2026-12-05T01:52:08.123Z info sandbox ended sandbox=sb-1f2e reason="idle for 300 s"
//
// so `grep sandbox=sb-1f2e` finds every line about one sandbox. Call sites:
//
//   log::info("fork done", {{"sandbox", id}, {"ms", ms}});
//
// A value is quoted ("...", with \" \\ \n escapes) when it is empty or holds
// a space, '=', '"' or a control character; the message is quoted when it
// holds '=' or '"'. So a line splits unambiguously: timestamp, level,
// message (the words before the first key=value), fields.
// spdlog does the writing (thread-safe, one write per line); its headers
// stay out of this one.
#pragma once

#include <concepts>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vesicle::log {

// Least to most severe (common/log.cpp's table follows this order).
enum class Level { debug, info, warn, error };

// For error messages: the names parse_level accepts.
inline constexpr const char* kLevelNames = "debug, info, warn or error";

std::optional<Level> parse_level(std::string_view name);
const char* to_string(Level level);

// Events below the level are dropped. Default info; settable at any time,
// from any thread.
void set_level(Level level);
Level level();
bool enabled(Level level);

struct Field {
  Field(std::string_view key, std::string_view value) : key(key), value(value) {}
  Field(std::string_view key, const char* value) : key(key), value(value) {}
  Field(std::string_view key, bool value) : key(key), value(value ? "true" : "false") {}
  template <std::integral T>
  Field(std::string_view key, T value) : key(key), value(std::to_string(value)) {}

  std::string_view key; // a literal at the call site: [a-z_]+
  std::string value;
};
using Fields = std::initializer_list<Field>;

// The line after its timestamp: "info message key=value ...".
std::string format(Level level, std::string_view message, Fields fields = {});

void write(Level level, std::string_view message, Fields fields = {});
// For a line whose fields are known only at run time (some present, some not).
void write(Level level, std::string_view message, const std::vector<Field>& fields);
inline void debug(std::string_view message, Fields fields = {}) {
  write(Level::debug, message, fields);
}
inline void info(std::string_view message, Fields fields = {}) {
  write(Level::info, message, fields);
}
inline void warn(std::string_view message, Fields fields = {}) {
  write(Level::warn, message, fields);
}
inline void error(std::string_view message, Fields fields = {}) {
  write(Level::error, message, fields);
}

} // namespace vesicle::log
