// common/log: the line format (fields, quoting, one line per event), the
// level filter, and what really reaches stderr.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/log.hpp"

using namespace vesicle;

namespace {

// A reader written from the format's description in common/log.hpp, not
// from its code: level, message (quoted, or the words before the first
// key=value), then the fields.
struct Parsed {
  std::string level;
  std::string message;
  std::vector<std::pair<std::string, std::string>> fields;
};

std::string read_quoted(const std::string& line, std::size_t& at) {
  std::string out;
  ++at; // the opening quote
  while (at < line.size() && line[at] != '"') {
    char c = line[at++];
    if (c != '\\') {
      out += c;
      continue;
    }
    char e = line[at++];
    if (e == 'n')
      out += '\n';
    else if (e == 'r')
      out += '\r';
    else if (e == 't')
      out += '\t';
    else if (e == 'x') {
      out += static_cast<char>(std::stoi(line.substr(at, 2), nullptr, 16));
      at += 2;
    } else
      out += e;
  }
  ++at; // the closing quote
  return out;
}

Parsed parse(const std::string& line) {
  Parsed parsed;
  std::size_t at = line.find(' ');
  parsed.level = line.substr(0, at);
  ++at;
  auto is_field_start = [&](std::size_t from) {
    auto end = line.find(' ', from);
    auto token = line.substr(from, end == std::string::npos ? std::string::npos : end - from);
    return token.find('=') != std::string::npos;
  };
  if (line[at] == '"') {
    parsed.message = read_quoted(line, at);
  } else {
    while (at < line.size() && !is_field_start(at)) {
      auto end = line.find(' ', at);
      if (!parsed.message.empty()) parsed.message += ' ';
      parsed.message += line.substr(at, end == std::string::npos ? std::string::npos : end - at);
      at = end == std::string::npos ? line.size() : end + 1;
    }
    // Unquoted messages escape control characters too.
    parsed.message = std::regex_replace(parsed.message, std::regex("\\\\n"), "\n");
    at = at > 0 && at <= line.size() && line[at - 1] == ' ' ? at - 1 : at;
  }
  while (at < line.size()) {
    EXPECT_EQ(line[at], ' ') << line;
    ++at;
    auto eq = line.find('=', at);
    std::string key = line.substr(at, eq - at);
    at = eq + 1;
    std::string value;
    if (at < line.size() && line[at] == '"') {
      value = read_quoted(line, at);
    } else {
      auto end = line.find(' ', at);
      value = line.substr(at, end == std::string::npos ? std::string::npos : end - at);
      at = end == std::string::npos ? line.size() : end;
    }
    parsed.fields.emplace_back(key, value);
  }
  return parsed;
}

// Points fd 2 at a file for the life of the object, then back.
class CapturedStderr {
public:
  CapturedStderr() {
    std::fflush(stderr);
    saved_ = ::dup(2);
    int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(fd, 2);
    ::close(fd);
  }
  ~CapturedStderr() {
    restore();
    std::remove(path_.c_str());
  }
  std::vector<std::string> lines() {
    restore();
    std::ifstream in(path_);
    std::vector<std::string> out;
    for (std::string line; std::getline(in, line);)
      out.push_back(line);
    return out;
  }

private:
  void restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
  }
  std::string path_ = "/tmp/vesicle-log-test-" + std::to_string(::getpid());
  int saved_ = -1;
};

TEST(Log, LevelNamesParseBothWays) {
  for (auto level : {log::Level::debug, log::Level::info, log::Level::warn, log::Level::error})
    EXPECT_EQ(log::parse_level(log::to_string(level)), level);
  EXPECT_FALSE(log::parse_level("nonsense"));
  EXPECT_FALSE(log::parse_level("INFO"));
  EXPECT_FALSE(log::parse_level("warning"));
  EXPECT_FALSE(log::parse_level(""));
}

TEST(Log, LevelMessageThenFields) {
  EXPECT_EQ(log::format(log::Level::info, "fork done",
                        {{"sandbox", "sb-1f2e"}, {"ms", 123}, {"n", 3u}, {"ok", true}}),
            "info fork done sandbox=sb-1f2e ms=123 n=3 ok=true");
  EXPECT_EQ(log::format(log::Level::warn, "no fields"), "warn no fields");
  EXPECT_EQ(log::format(log::Level::error, "negative", {{"delta", -5}}), "error negative delta=-5");
  std::string id = "sb-2";
  std::string_view view = "op-x";
  EXPECT_EQ(log::format(log::Level::debug, "strings", {{"sandbox", id}, {"op", view}}),
            "debug strings sandbox=sb-2 op=op-x");
}

TEST(Log, ValuesThatWouldBreakTheLineAreQuoted) {
  EXPECT_EQ(log::format(log::Level::info, "m", {{"reason", "idle for 3 s"}}),
            "info m reason=\"idle for 3 s\"");
  EXPECT_EQ(log::format(log::Level::info, "m", {{"expr", "a=b"}}), "info m expr=\"a=b\"");
  EXPECT_EQ(log::format(log::Level::info, "m", {{"empty", ""}}), "info m empty=\"\"");
  EXPECT_EQ(log::format(log::Level::info, "m", {{"q", "say \"hi\" \\ bye"}}),
            "info m q=\"say \\\"hi\\\" \\\\ bye\"");
  EXPECT_EQ(log::format(log::Level::info, "m", {{"tb", "line 1\nline 2\t\x01"}}),
            "info m tb=\"line 1\\nline 2\\t\\x01\"");
  // A message with '=' would read as a field: quoted. Newlines never split
  // an event, quoted or not.
  EXPECT_EQ(log::format(log::Level::info, "set x=1"), "info \"set x=1\"");
  EXPECT_EQ(log::format(log::Level::info, "first\nsecond"), "info first\\nsecond");
}

TEST(Log, EveryLineReadsBackToWhatWasLogged) {
  const std::vector<std::pair<std::string, std::string>> fields = {
      {"sandbox", "sb-1"},    {"reason", "idle for 3 s"}, {"error", "a=b \"c\" \\d\ne"},
      {"empty", ""},          {"path", "/v1/sandboxes"},  {"weird", "x\x7fy"},
      {"tail", "ends in \\"},
  };
  for (std::string message :
       {"sandbox ended", "msg with = sign", "quote \" inside", "two\nlines", ""}) {
    auto line = log::format(log::Level::warn, message,
                            {{fields[0].first, fields[0].second},
                             {fields[1].first, fields[1].second},
                             {fields[2].first, fields[2].second},
                             {fields[3].first, fields[3].second},
                             {fields[4].first, fields[4].second},
                             {fields[5].first, fields[5].second},
                             {fields[6].first, fields[6].second}});
    EXPECT_EQ(line.find('\n'), std::string::npos) << line;
    auto parsed = parse(line);
    EXPECT_EQ(parsed.level, "warn");
    EXPECT_EQ(parsed.message, message) << line;
    EXPECT_EQ(parsed.fields, fields) << line;
  }
}

TEST(Log, TheLevelFiltersWhatReachesStderr) {
  ::unsetenv("JOURNAL_STREAM"); // the plain format, with timestamps
  const auto before = log::level();
  EXPECT_EQ(before, log::Level::info) << "the default level";
  std::vector<std::string> lines;
  {
    CapturedStderr captured;
    log::debug("hidden at info", {{"n", 1}});
    log::info("shown at info", {{"n", 2}});
    log::set_level(log::Level::warn);
    EXPECT_FALSE(log::enabled(log::Level::info));
    EXPECT_TRUE(log::enabled(log::Level::error));
    log::info("hidden at warn", {{"n", 3}});
    log::warn("shown at warn", {{"n", 4}});
    log::error("shown at warn", {{"n", 5}});
    log::set_level(log::Level::debug);
    log::debug("shown at debug", {{"sandbox", "sb-9"}, {"why", "spaces here"}});
    log::set_level(log::Level::error);
    log::warn("hidden at error");
    log::error("shown at error");
    lines = captured.lines();
  }
  log::set_level(before);
  ASSERT_EQ(lines.size(), 5u) << ::testing::PrintToString(lines);
  const std::regex stamp("^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z (.*)$");
  std::vector<std::string> rest;
  for (const auto& line : lines) {
    std::smatch match;
    ASSERT_TRUE(std::regex_match(line, match, stamp)) << line;
    rest.push_back(match[1]);
  }
  EXPECT_EQ(rest[0], "info shown at info n=2");
  EXPECT_EQ(rest[1], "warn shown at warn n=4");
  EXPECT_EQ(rest[2], "error shown at warn n=5");
  EXPECT_EQ(rest[3], "debug shown at debug sandbox=sb-9 why=\"spaces here\"");
  EXPECT_EQ(rest[4], "error shown at error");
}

} // namespace
