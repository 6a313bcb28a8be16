#include "common/log.hpp"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <span>

#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_sinks.h>

#include "common/escape.hpp"

namespace vesicle::log {

namespace {

// Per level, in the order of enum Level: its name, spdlog's level, and the
// syslog priority journald reads from a line's start (sd-daemon.h: debug
// 7, info 6, warning 4, err 3).
struct LevelInfo {
  const char* name;
  spdlog::level::level_enum spdlog;
  const char* journal_prefix;
};
constexpr LevelInfo kLevels[] = {
    {"debug", spdlog::level::debug, "<7>"},
    {"info", spdlog::level::info, "<6>"},
    {"warn", spdlog::level::warn, "<4>"},
    {"error", spdlog::level::err, "<3>"},
};

const LevelInfo& info_of(Level level) {
  return kLevels[static_cast<int>(level)];
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

bool needs_quotes(std::string_view text, bool is_message) {
  if (text.empty()) return true;
  for (unsigned char c : text) {
    if (c == '=' || c == '"') return true;
    if (!is_message && (c <= ' ' || c == 0x7f)) return true;
  }
  return false;
}

void append_text(std::string& out, std::string_view text, bool is_message) {
  const bool quoted = needs_quotes(text, is_message);
  if (quoted) out += '"';
  // Control characters are escaped even in an unquoted message: an event is
  // one line, whatever an error's text holds.
  append_escaped(out, text, quoted, ControlEscape::log);
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
  if (!out.logger->should_log(info_of(level).spdlog)) return;
  auto line = format_line(level, message, first, last);
  if (out.journal) line.insert(0, info_of(level).journal_prefix);
  out.logger->log(info_of(level).spdlog, spdlog::string_view_t(line.data(), line.size()));
}

} // namespace

std::optional<Level> parse_level(std::string_view name) {
  for (std::size_t i = 0; i < std::size(kLevels); ++i)
    if (name == kLevels[i].name) return static_cast<Level>(i);
  return std::nullopt;
}

const char* to_string(Level level) {
  return info_of(level).name;
}

void set_level(Level level) {
  logger().set_level(info_of(level).spdlog);
}

Level level() {
  // set_level is the only setter, so the level is one of the table's.
  const auto current = logger().level();
  for (std::size_t i = 0; i < std::size(kLevels); ++i)
    if (kLevels[i].spdlog >= current) return static_cast<Level>(i);
  return Level::error;
}

bool enabled(Level level) {
  return logger().should_log(info_of(level).spdlog);
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
