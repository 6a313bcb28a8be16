#include "hostd/ndjson.hpp"

#include "common/escape.hpp"
#include "hostd/json.hpp"
#include "hostd/rfc3339.hpp"
#include "messages/api.pb.h"
#include "messages/display.hpp"

namespace vesicle::hostd {

namespace {

// The length of the sequence a lead byte starts (0: not a lead byte).
std::size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) return 2;
  if (lead >= 0xe0 && lead <= 0xef) return 3;
  if (lead >= 0xf0 && lead <= 0xf4) return 4;
  return 0;
}

// Whether the second byte is allowed after `lead` (this is where overlong
// forms, surrogates and code points past U+10FFFF are excluded).
bool second_byte_ok(unsigned char lead, unsigned char second) {
  switch (lead) {
  case 0xe0:
    return second >= 0xa0 && second <= 0xbf;
  case 0xed:
    return second >= 0x80 && second <= 0x9f;
  case 0xf0:
    return second >= 0x90 && second <= 0xbf;
  case 0xf4:
    return second >= 0x80 && second <= 0x8f;
  default:
    return second >= 0x80 && second <= 0xbf;
  }
}

bool continuation(unsigned char byte) {
  return (byte & 0xc0) == 0x80;
}

// Whether bytes[0..n) is a valid but incomplete start of a sequence.
bool valid_prefix(std::string_view bytes) {
  auto lead = static_cast<unsigned char>(bytes[0]);
  auto length = sequence_length(lead);
  if (length < 2 || bytes.size() >= length) return false;
  if (bytes.size() >= 2 && !second_byte_ok(lead, static_cast<unsigned char>(bytes[1])))
    return false;
  for (std::size_t i = 2; i < bytes.size(); ++i)
    if (!continuation(static_cast<unsigned char>(bytes[i]))) return false;
  return true;
}

// One NDJSON line written field by field, for the events every exec sends
// (output, result, error, exit): protobuf's JSON printer walks the message
// by reflection, which was a fifth of hostd's CPU per exec (perf). The
// fields go out in the order and spelling the printer uses (the proto's
// field order, snake_case, every primitive printed), and ndjson_test checks
// each line against the printer's. Strings must be valid UTF-8: the
// callers check that first, as the printer would.
class Line {
public:
  explicit Line(std::string_view type) {
    text_.reserve(96);
    text_ += "{\"type\":\"";
    text_ += type;
    text_ += '"';
  }
  Line& text(std::string_view name, std::string_view value) {
    key(name);
    text_ += '"';
    append_escaped(text_, value, true, ControlEscape::json);
    text_ += '"';
    return *this;
  }
  Line& number(std::string_view name, std::int64_t value) {
    key(name);
    text_ += std::to_string(value);
    return *this;
  }
  Line& flag(std::string_view name, bool value) {
    key(name);
    text_ += value ? "true" : "false";
    return *this;
  }
  // Opens a nested object as the value of `name`; close it with end_object.
  Line& object(std::string_view name) {
    key(name);
    text_ += '{';
    first_ = true;
    return *this;
  }
  Line& end_object() {
    text_ += '}';
    first_ = false;
    return *this;
  }
  // seq and ts, which every event has (the exit's failure comes after them).
  Line& stamp(std::uint32_t seq) {
    number("seq", seq);
    return text("ts", rfc3339_now());
  }
  std::string close() {
    text_ += "}\n";
    return std::move(text_);
  }

private:
  void key(std::string_view name) {
    if (!first_) text_ += ',';
    first_ = false;
    text_ += '"';
    text_ += name;
    text_ += "\":";
  }
  std::string text_;
  bool first_ = false;
};

} // namespace

bool is_valid_utf8(std::string_view bytes) {
  std::size_t i = 0;
  while (i < bytes.size()) {
    auto lead = static_cast<unsigned char>(bytes[i]);
    auto length = sequence_length(lead);
    if (length == 0 || i + length > bytes.size()) return false;
    if (length >= 2 && !second_byte_ok(lead, static_cast<unsigned char>(bytes[i + 1])))
      return false;
    for (std::size_t k = 2; k < length; ++k)
      if (!continuation(static_cast<unsigned char>(bytes[i + k]))) return false;
    i += length;
  }
  return true;
}

std::string Utf8HoldBack::feed(std::string_view bytes) {
  std::string out = std::move(held_);
  held_.clear();
  out.append(bytes);
  // An incomplete sequence is at most 3 bytes long: look for its lead byte
  // among the last three.
  for (std::size_t back = 1; back <= 3 && back <= out.size(); ++back) {
    auto byte = static_cast<unsigned char>(out[out.size() - back]);
    if (continuation(byte)) continue;
    std::string_view tail(out.data() + out.size() - back, back);
    if (valid_prefix(tail)) {
      held_.assign(tail);
      out.resize(out.size() - back);
    }
    break;
  }
  return out;
}

std::string Utf8HoldBack::flush() {
  return std::exchange(held_, {});
}

void ExecEventEncoder::output(std::vector<std::string>& lines, const char* type,
                              std::string bytes) {
  if (bytes.empty()) return;
  if (is_valid_utf8(bytes)) {
    lines.push_back(Line(type).text("data", bytes).stamp(++seq_).close());
  } else {
    api::OutputBytesEvent event;
    event.set_type(type);
    event.set_data_b64(std::move(bytes));
    event.set_seq(++seq_);
    event.set_ts(rfc3339_now());
    lines.push_back(to_json(event) + "\n");
  }
}

void ExecEventEncoder::display(std::vector<std::string>& lines, const guest::Display& display) {
  // The agent keeps to these rules; hostd checks them again because the
  // guest is not trusted.
  std::size_t bytes = 0;
  for (const auto& [mime, data] : display.data())
    bytes += display::entry_bytes(mime, data);
  if (bytes > display::kMaxBundleBytes) {
    output(lines, "stderr",
           "vesicle: a display output of " + std::to_string(bytes) +
               " bytes was dropped: the limit is " + std::to_string(display::kMaxBundleBytes) +
               " bytes\n");
    return;
  }
  api::DisplayEvent event;
  event.set_type("display");
  for (const auto& [mime, data] : display.data()) {
    if (!display::valid_mime_type(mime)) continue;
    if (display::is_text_type(mime) && is_valid_utf8(data))
      (*event.mutable_data())[mime] = data;
    else
      (*event.mutable_data_b64())[mime] = data;
  }
  if (event.data().empty() && event.data_b64().empty()) return;
  event.set_is_main_result(display.main_result());
  event.set_seq(++seq_);
  event.set_ts(rfc3339_now());
  lines.push_back(to_json(event) + "\n");
}

void ExecEventEncoder::flush_held(std::vector<std::string>& lines) {
  output(lines, "stdout", stdout_.flush());
  output(lines, "stderr", stderr_.flush());
}

std::vector<std::string> ExecEventEncoder::encode(const guest::Event& event) {
  std::vector<std::string> lines;
  switch (event.kind_case()) {
  case guest::Event::kStdout:
    output(lines, "stdout", stdout_.feed(event.stdout()));
    break;
  case guest::Event::kStderr:
    output(lines, "stderr", stderr_.feed(event.stderr()));
    break;
  case guest::Event::kResult: {
    flush_held(lines);
    // repr() is text, but a hostile __repr__ can still smuggle lone
    // surrogates through; never emit a string that is not UTF-8.
    const std::string_view data =
        is_valid_utf8(event.result()) ? std::string_view(event.result()) : "<repr not valid UTF-8>";
    lines.push_back(Line("result").text("data", data).stamp(++seq_).close());
    break;
  }
  case guest::Event::kDisplay:
    flush_held(lines);
    display(lines, event.display());
    break;
  case guest::Event::kError: {
    flush_held(lines);
    const auto& raised = event.error();
    auto text = [](const std::string& s) {
      return is_valid_utf8(s) ? std::string_view(s) : std::string_view("?");
    };
    lines.push_back(Line("error")
                        .text("name", text(raised.name()))
                        .text("value", text(raised.value()))
                        .text("traceback", text(raised.traceback()))
                        .stamp(++seq_)
                        .close());
    break;
  }
  default:
    break; // not an exec event; the agent client keeps those
  }
  return lines;
}

std::vector<std::string> ExecEventEncoder::finish(const guest::Exit& exit, std::string failure_code,
                                                  std::string failure_message) {
  std::vector<std::string> lines;
  flush_held(lines);
  Line line("exit");
  line.number("exit_code", exit.exit_code())
      .number("signal", exit.signal())
      .flag("timed_out", exit.timed_out())
      .flag("truncated", exit.truncated())
      .flag("repl_restarted", exit.repl_restarted())
      .number("duration_ms", static_cast<std::uint32_t>(exit.duration_us() / 1000))
      .stamp(++seq_);
  if (!failure_code.empty()) {
    // The failure's texts come from hostd (an error kind's code and its
    // message); the message may quote the guest, so it is checked too.
    line.object("failure")
        .text("code", failure_code)
        .text("message", is_valid_utf8(failure_message) ? std::string_view(failure_message)
                                                        : std::string_view("?"))
        .end_object();
  }
  lines.push_back(line.close());
  return lines;
}

} // namespace vesicle::hostd
