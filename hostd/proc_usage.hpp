// What a process uses right now, from /proc: for the operator's view of a
// sandbox's QEMU (its RSS is the guest RAM touched plus QEMU's own; its CPU
// time is the guest's work under TCG).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <sys/types.h>

namespace vesicle::hostd {

struct ProcessUsage {
  std::uint64_t rss_bytes = 0;
  double cpu_seconds = 0; // user + system, since the process started
};

// Nothing when the process is gone (or `pid` is 0).
std::optional<ProcessUsage> process_usage(pid_t pid);

// The parsing, apart, for the tests: /proc/<pid>/stat's text and
// /proc/<pid>/statm's, with the system's clock ticks and page size.
std::optional<ProcessUsage> parse_process_usage(std::string_view stat, std::string_view statm,
                                                long ticks_per_second, long page_size);

} // namespace vesicle::hostd
