// Times as the API shows them: RFC 3339 in UTC to the millisecond,
// "2024-05-01T12:00:00.123Z" (created_at, frozen_at, every exec event's ts).
#pragma once

#include <cstdint>
#include <string>

namespace vesicle::hostd {

// `unix_ms`: milliseconds since the Unix epoch.
std::string rfc3339(std::int64_t unix_ms);
std::string rfc3339_now();

} // namespace vesicle::hostd
