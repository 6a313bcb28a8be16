// Building the agent's events, and mapping errors onto the wire's Failure.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.hpp"
#include "messages/guest.pb.h"

namespace vesicle::agent {

guest::Event failure_event(guest::Failure::Code code, int errno_value, std::string message);

// NOT_FOUND for a missing path, NO_SPACE for a full disk or quota, IO for
// the rest; the message is the Error's full text.
guest::Event failure_from_error(const Error& error);

guest::Event done_event(std::uint64_t size = 0, std::uint32_t mode = 0, bool eof = false);

// `text` cut to at most `max_bytes` and made valid UTF-8 (invalid sequences
// become U+FFFD): protobuf rejects a string field that is not UTF-8, and
// the host must never be handed an event it cannot parse.
std::string clean_utf8(std::string_view text, std::size_t max_bytes);

} // namespace vesicle::agent
