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
//       reply. The REPL reads commands only between cells (and while it
//       waits for a "shown", when it keeps reseeds for after the cell), so
//       a reseed written while a cell runs takes effect before the next one.
//   'k' "shown", 'i' the number of a display message: the agent has sent
//       that display on (or dropped it), and the channel has room. The
//       cell's thread waits for it after each display.
// REPL -> agent (fd 4 in the REPL): any number of display messages while a
// cell runs, each after flushing stdout and stderr,
//   'k' "display", 'q' the cell's sequence number, 'i' its number (for the
//       "shown" answer), 'p' "1" if it is the main result (the trailing
//       expression), then for each MIME type 'm' the type and 'd' its data
//       (see Display in messages/guest.proto);
// then once per cell, after flushing stdout and stderr:
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
#include "messages/guest.pb.h"

namespace vesicle::agent::repl_protocol {

using Fields = std::vector<std::pair<char, std::string>>;

// Largest body the agent accepts from the REPL; repl.py cuts its texts and
// display bundles well below this, so a larger one means the pipe is being
// abused.
inline constexpr std::size_t kMaxReplyBytes = 8u << 20;

std::string encode(const Fields& fields);

// Takes one complete message off the front of `buffer`: nullopt when more
// bytes are needed, an Error when the bytes cannot be a message.
Result<std::optional<Fields>> take(std::string& buffer, std::size_t max_body = kMaxReplyBytes);

// The value of the first field with `tag`, if any.
const std::string* find(const Fields& fields, char tag);

// The Display event of a display message, or an Error saying why it cannot
// be one (a type that is not type/subtype or repeated, data without a
// type, a bundle over display::kMaxBundleBytes).
Result<guest::Display> display_of(const Fields& fields);

} // namespace vesicle::agent::repl_protocol
