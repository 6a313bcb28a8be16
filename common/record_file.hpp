// The "key value" record files vesicle keeps beside what it saves (a
// Space's `space` file, a saved template's `template` file): a first line
// "<magic> <version>", then one "key value" line each; blank lines are
// skipped. The reading both parsers share; what each key means is theirs.
#pragma once

#include <charconv>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

#include "common/result.hpp"

namespace vesicle {

struct RecordLine {
  int number = 0; // 1-based, blank lines counted
  std::string_view key;
  std::string_view value; // all after the first space; "" without one

  // The value as a whole number of Number's type (all of it, nothing after).
  template <class Number> bool number_value(Number& out) const {
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), out);
    return ec == std::errc() && end == value.data() + value.size();
  }
  // "0" or "1".
  bool flag_value(bool& out) const;
};

// What a parser made of one line; the reader turns the last two into an
// error naming the line and its key.
enum class RecordLineOutcome { taken, unknown_key, bad_value };

struct RecordFormat {
  std::string_view magic; // the first line's word: "vesicle-space"
  int version = 0;        // the only version this build reads
  std::string_view name;  // the record in errors: "Space" ("parse Space: ...")
};

// Checks the first line against `format`, then hands every other non-empty
// line to `on_line`; the first line refused ends the reading with an error.
Result<void> read_record_lines(std::string_view text, const RecordFormat& format,
                               const std::function<RecordLineOutcome(const RecordLine&)>& on_line);

// The whole text of the file at `path`.
Result<std::string> read_whole_file(const std::filesystem::path& path);

// Reads the record file at `path` and parses it with `parse` (parse_space,
// parse_template); a parse error names the file.
template <class Parse>
auto read_record_file(const std::filesystem::path& path, Parse parse)
    -> decltype(parse(std::string_view{})) {
  auto text = read_whole_file(path);
  if (!text) return std::move(text).error();
  auto parsed = parse(text.value());
  if (!parsed) return std::move(parsed).error().with_context(path.string());
  return parsed;
}

} // namespace vesicle
