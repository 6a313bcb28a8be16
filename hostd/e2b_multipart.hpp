// A multipart/form-data body read as it streams in (RFC 7578), for E2B's
// POST /files: each part's headers, then its bytes in pieces, never the
// whole body in memory. Pure (no I/O): feed() answers with what the bytes
// fed so far complete, and the caller acts on it.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace vesicle::hostd::e2b {

// The boundary of a "multipart/form-data; boundary=..." Content-Type.
std::optional<std::string> multipart_boundary(std::string_view content_type);

class MultipartReader {
public:
  struct Step {
    enum class Kind { begin, data, end } kind;
    std::string name;     // begin: the part's form field name
    std::string filename; // begin: its filename="..."
    std::string data;     // data: the next bytes of the part
  };

  explicit MultipartReader(std::string boundary);
  // The steps the next piece of the body completes, in order.
  Result<std::vector<Step>> feed(std::string_view piece);
  // Whether the closing boundary came (a body without it is cut short).
  bool complete() const { return state_ == State::done; }

private:
  enum class State { preamble, after_boundary, headers, body, done };
  std::string delimiter_; // "\r\n--" + boundary
  std::string buffer_;
  State state_ = State::preamble;
};

} // namespace vesicle::hostd::e2b
