#include "common/record_file.hpp"

#include <fstream>
#include <iterator>

namespace vesicle {

bool RecordLine::flag_value(bool& out) const {
  if (value != "0" && value != "1") return false;
  out = value == "1";
  return true;
}

Result<void> read_record_lines(std::string_view text, const RecordFormat& format,
                               const std::function<RecordLineOutcome(const RecordLine&)>& on_line) {
  const std::string operation = "parse " + std::string(format.name);
  bool versioned = false;
  RecordLine line;
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const auto whole = text.substr(start, end - start);
    start = end + 1;
    ++line.number;
    if (whole.empty()) continue;
    const auto space_at = whole.find(' ');
    line.key = whole.substr(0, space_at);
    line.value =
        space_at == std::string_view::npos ? std::string_view{} : whole.substr(space_at + 1);
    auto bad = [&](const std::string& why) {
      return make_error(operation, "line " + std::to_string(line.number) + " (" +
                                       std::string(line.key) + "): " + why);
    };
    if (line.number == 1) {
      int version = 0;
      if (line.key != format.magic || !line.number_value(version))
        return bad("not a vesicle " + std::string(format.name) + " file");
      if (version != format.version)
        return bad("written by another version of vesicle; this hostd reads version " +
                   std::to_string(format.version));
      versioned = true;
      continue;
    }
    switch (on_line(line)) {
    case RecordLineOutcome::taken:
      break;
    case RecordLineOutcome::unknown_key:
      return bad("unknown key");
    case RecordLineOutcome::bad_value:
      return bad("not a valid value");
    }
  }
  if (!versioned) return make_error(operation, "empty file");
  return {};
}

Result<std::string> read_whole_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return sys_error("open", path.string());
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

} // namespace vesicle
