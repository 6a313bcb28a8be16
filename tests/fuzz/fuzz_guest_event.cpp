// What hostd does with the events a guest sends: frames
// (messages/framing.cpp) parsed as guest::Event (messages/guest.proto) and
// turned into the exec's NDJSON lines (hostd/ndjson.cpp, with the display
// rules of messages/display.cpp). Whatever the guest sends, every line is
// one valid JSON document in valid UTF-8, never hostd's "could not encode"
// fallback; the lines are numbered 1, 2, 3, ...; and the stdout lines carry
// exactly the bytes the guest wrote, in order.
#include <string>
#include <string_view>

#include "hostd/json.hpp"
#include "hostd/ndjson.hpp"
#include "messages/api.pb.h"
#include "messages/framing.hpp"
#include "messages/guest.pb.h"
#include "tests/fuzz/fuzz_check.hpp"
#include "vmm/json.hpp"

namespace {

struct Seen {
  std::uint32_t seq = 0;
  std::string stdout_bytes;
};

void check_lines(const std::vector<std::string>& lines, Seen& seen) {
  for (const auto& line : lines) {
    FUZZ_CHECK(!line.empty() && line.back() == '\n');
    FUZZ_CHECK(vesicle::hostd::is_valid_utf8(line));
    FUZZ_CHECK(line.rfind(R"({"error":{"code":"internal")", 0) != 0); // to_json's fallback
    const std::string_view text = std::string_view(line).substr(0, line.size() - 1);
    auto parsed = vesicle::json::parse(text);
    FUZZ_CHECK(parsed && parsed->is_object());
    FUZZ_CHECK((*parsed)["seq"].as_int() == ++seen.seq);
    if ((*parsed)["type"].as_string() != "stdout") continue;
    if (parsed->contains("data_b64")) {
      vesicle::api::OutputBytesEvent event;
      FUZZ_CHECK(vesicle::hostd::from_json(text, event));
      seen.stdout_bytes += event.data_b64();
    } else {
      seen.stdout_bytes += (*parsed)["data"].as_string();
    }
  }
}

} // namespace

extern "C" int VESICLE_FUZZ_ENTRY(const std::uint8_t* data, std::size_t size) {
  vesicle::wire::FrameDecoder decoder;
  decoder.feed(std::string_view(reinterpret_cast<const char*>(data), size));
  vesicle::hostd::ExecEventEncoder encoder;
  vesicle::guest::Exit exit;
  std::string failure;
  std::string written; // what the guest wrote to stdout
  Seen seen;
  for (;;) {
    auto payload = decoder.next();
    if (!payload || !payload.value()) break;
    vesicle::guest::Event event;
    if (!vesicle::wire::parse_payload(*payload.value(), event)) continue;
    if (event.has_exit()) exit = event.exit();
    if (event.has_failure()) failure = event.failure().message();
    if (event.has_stdout()) written += event.stdout();
    check_lines(encoder.encode(event), seen);
  }
  check_lines(encoder.finish(exit, failure.empty() ? "" : "guest_failed", failure), seen);
  FUZZ_CHECK(seen.stdout_bytes == written);
  return 0;
}
