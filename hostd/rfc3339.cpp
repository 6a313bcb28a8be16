#include "hostd/rfc3339.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <optional>

namespace vesicle::hostd {

std::string rfc3339(std::int64_t unix_ms) {
  // Whole seconds rounded down, so a time before 1970 keeps 0-999 ms.
  const std::int64_t millis = ((unix_ms % 1000) + 1000) % 1000;
  const std::time_t seconds = (unix_ms - millis) / 1000;
  // Every exec event carries one: the date and time of day are formatted
  // once a second per thread (gmtime_r and snprintf were ~1% of an exec's
  // CPU).
  thread_local std::optional<std::time_t> formatted_second;
  thread_local char whole[64]; // 19 used; g++ checks the %d fields at their widest
  if (formatted_second != seconds) {
    std::tm utc{};
    gmtime_r(&seconds, &utc);
    std::snprintf(whole, sizeof whole, "%04d-%02d-%02dT%02d:%02d:%02d", utc.tm_year + 1900,
                  utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec);
    formatted_second = seconds;
  }
  std::string text(whole);
  text += '.';
  text += static_cast<char>('0' + millis / 100);
  text += static_cast<char>('0' + millis / 10 % 10);
  text += static_cast<char>('0' + millis % 10);
  text += 'Z';
  return text;
}

std::string rfc3339_now() {
  using namespace std::chrono;
  return rfc3339(duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count());
}

} // namespace vesicle::hostd
