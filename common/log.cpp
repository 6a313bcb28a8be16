#include "common/log.hpp"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>

#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_sinks.h>

namespace vesicle::log {

namespace {

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
  case Level::debug:
    return spdlog::level::debug;
  case Level::info:
    return spdlog::level::info;
  case Level::warn:
    return spdlog::level::warn;
  case Level::error:
    return spdlog::level::err;
  }
  return spdlog::level::info;
}

// journald sets JOURNAL_STREAM to "device:inode" of the stream it reads.
// Only when that is our stderr (not inherited by a child whose stderr went
// elsewhere) does it stamp the time itself and read a "<N>" priority.
bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (!stream) return false;
  unsigned long long device = 0, inode = 0;
  if (std::sscanf(stream, "%llu:%llu", &device, &inode) != 2) return false;
  struct stat st {};
  if (::fstat(2, &st) != 0) return false;
  return st.st_dev == device && st.st_ino == inode;
}

struct Output {
  spdlog::logger* logger;
  bool journal;
};

// Created on first use and never destroyed: a CAF worker or a detached
// coroutine may still log while static destructors run.
const Output& output() {
  static const Output instance = [] {
    auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    Output made{new spdlog::logger("vesicle", std::move(sink)), stderr_is_journal()};
    if (made.journal)
      made.logger->set_pattern("%v");
    else
      made.logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %v", spdlog::pattern_time_type::utc);
    made.logger->set_level(spdlog::level::info);
    return made;
  }();
  return instance;
}

spdlog::logger& logger() {
  return *output().logger;
}

// syslog priorities (sd-daemon.h): debug 7, info 6, warning 4, err 3.
const char* journal_prefix(Level level) {
  switch (level) {
  case Level::debug:
    return "<7>";
  case Level::info:
    return "<6>";
  case Level::warn:
    return "<4>";
  case Level::error:
    return "<3>";
  }
  return "";
}

bool needs_quotes(std::string_view text, bool is_message) {
  if (text.empty()) return true;
  for (unsigned char c : text) {
    if (c == '=' || c == '"') return true;
    if (!is_message && (c <= ' ' || c == 0x7f)) return true;
  }
  return false;
}

// Control characters are escaped even in an unquoted message: an event is
// one line, whatever an error's text holds.
void append_escaped(std::string& out, std::string_view text, bool quoted) {
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
      if (quoted) out += '\\';
      out += static_cast<char>(c);
      break;
    default:
      if (c < ' ' || c == 0x7f) {
        out += "\\x";
        out += kHex[c >> 4];
        out += kHex[c & 0xf];
      } else {
        out += static_cast<char>(c);
      }
    }
  }
}

void append_text(std::string& out, std::string_view text, bool is_message) {
  const bool quoted = needs_quotes(text, is_message);
  if (quoted) out += '"';
  append_escaped(out, text, quoted);
  if (quoted) out += '"';
}

std::string format_line(Level level, std::string_view message, const Field* first,
                        const Field* last) {
  std::string line = to_string(level);
  line += ' ';
  append_text(line, message, true);
  for (const auto& field : std::span(first, last)) {
    line += ' ';
    line += field.key;
    line += '=';
    append_text(line, field.value, false);
  }
  return line;
}

void write_line(Level level, std::string_view message, const Field* first, const Field* last) {
  const auto& out = output();
  if (!out.logger->should_log(to_spdlog(level))) return;
  auto line = format_line(level, message, first, last);
  if (out.journal) line.insert(0, journal_prefix(level));
  out.logger->log(to_spdlog(level), spdlog::string_view_t(line.data(), line.size()));
}

} // namespace

std::optional<Level> parse_level(std::string_view name) {
  for (auto level : {Level::debug, Level::info, Level::warn, Level::error})
    if (name == to_string(level)) return level;
  return std::nullopt;
}

const char* to_string(Level level) {
  switch (level) {
  case Level::debug:
    return "debug";
  case Level::info:
    return "info";
  case Level::warn:
    return "warn";
  case Level::error:
    return "error";
  }
  return "info";
}

void set_level(Level level) {
  logger().set_level(to_spdlog(level));
}

Level level() {
  switch (logger().level()) {
  case spdlog::level::trace:
  case spdlog::level::debug:
    return Level::debug;
  case spdlog::level::info:
    return Level::info;
  case spdlog::level::warn:
    return Level::warn;
  default:
    return Level::error;
  }
}

bool enabled(Level level) {
  return logger().should_log(to_spdlog(level));
}

std::string format(Level level, std::string_view message, Fields fields) {
  return format_line(level, message, fields.begin(), fields.end());
}

void write(Level level, std::string_view message, Fields fields) {
  write_line(level, message, fields.begin(), fields.end());
}

void write(Level level, std::string_view message, const std::vector<Field>& fields) {
  write_line(level, message, fields.data(), fields.data() + fields.size());
}

} // namespace vesicle::log
