// The exec event stream: guest events in, NDJSON lines out (api-contract.md,
// "Exec"). Output bytes are delivered exactly: a chunk that is valid UTF-8
// goes out as text ("data"), anything else as base64 ("data_b64"). A UTF-8
// sequence cut at a chunk boundary is held back and joined to the next
// chunk of the same stream, so valid text never turns into base64 just
// because the guest's pipe split it. A display output (a MIME bundle) goes
// out with its text types as text and the rest as base64.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "messages/guest.pb.h"

namespace vesicle::hostd {

// True when `bytes` is well-formed UTF-8 (no overlong forms, surrogates or
// code points past U+10FFFF).
bool is_valid_utf8(std::string_view bytes);

// Holds back an incomplete trailing UTF-8 sequence of a byte stream.
class Utf8HoldBack {
public:
  // Returns the bytes that can go out now: what was held, plus `bytes`,
  // minus an incomplete multi-byte sequence at the very end (kept for the
  // next call). Only a tail that could still become valid is held.
  std::string feed(std::string_view bytes);
  // What is still held (the stream ended mid-sequence); empties it.
  std::string flush();
  bool holding() const { return !held_.empty(); }

private:
  std::string held_;
};

// Turns the events of one exec into NDJSON lines (each ending in '\n').
class ExecEventEncoder {
public:
  // The lines for one guest event (none when all its bytes are held back).
  std::vector<std::string> encode(const guest::Event& event);
  // The closing lines: any held-back bytes, then the exit event. A non-empty
  // failure_code marks an exec that could not finish.
  std::vector<std::string> finish(const guest::Exit& exit, std::string failure_code = {},
                                  std::string failure_message = {});
  std::uint32_t next_seq() const { return seq_ + 1; }

private:
  void output(std::vector<std::string>& lines, const char* type, std::string bytes);
  void display(std::vector<std::string>& lines, const guest::Display& display);
  void flush_held(std::vector<std::string>& lines);
  Utf8HoldBack stdout_;
  Utf8HoldBack stderr_;
  std::uint32_t seq_ = 0;
};

} // namespace vesicle::hostd
