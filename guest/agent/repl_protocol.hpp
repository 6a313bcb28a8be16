// The pipe protocol between the agent and guest/repl/repl.py.
//
// Both directions carry messages of the same shape: a 4-byte little-endian
// body length, then the body, a sequence of fields, each a 1-byte tag, a
// 4-byte little-endian length and that many bytes. Binary, so code and
// results need no escaping and neither side needs a JSON parser.
//
// agent -> REPL (fd 3 in the REPL):
//   'k' "exec", 'q' cell sequence number (decimal), 'c' the cell's code
//   'k' "reseed", 's' seed bytes: after an identity refresh, reseed the
//       global generators of `random` and `numpy.random` where imported. No
//       reply. The REPL reads commands only between cells, so a reseed
//       written while a cell runs takes effect before the next cell.
// REPL -> agent (fd 4 in the REPL), once per cell, after flushing stdout and
// stderr:
//   'k' "done", 'q' the sequence number it answers,
//   'r' repr of the trailing expression (absent when there is none or it is
//       None),
//   'n' exception class, 'v' str(exception), 't' traceback (all three absent
//       when the cell did not raise).
// The sequence number lets the agent ignore a reply to a cell it has
// already given up on.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/result.hpp"

namespace vesicle::agent::repl_protocol {

using Fields = std::vector<std::pair<char, std::string>>;

// Largest body the agent accepts from the REPL; repl.py cuts its texts well
// below this, so a larger one means the pipe is being abused.
inline constexpr std::size_t kMaxReplyBytes = 8u << 20;

std::string encode(const Fields& fields);

// Takes one complete message off the front of `buffer`: nullopt when more
// bytes are needed, an Error when the bytes cannot be a message.
Result<std::optional<Fields>> take(std::string& buffer, std::size_t max_body = kMaxReplyBytes);

// The value of the first field with `tag`, if any.
const std::string* find(const Fields& fields, char tag);

} // namespace vesicle::agent::repl_protocol
