#include "hostd/proc_usage.hpp"

#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

namespace vesicle::hostd {

namespace {

std::optional<std::string> read_small_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

} // namespace

std::optional<ProcessUsage> parse_process_usage(std::string_view stat, std::string_view statm,
                                                long ticks_per_second, long page_size) {
  // The command name (field 2) is in parentheses and may hold spaces and
  // parentheses itself: the fields after it start after the last ')'.
  auto close = stat.rfind(')');
  if (close == std::string_view::npos || ticks_per_second <= 0) return std::nullopt;
  std::istringstream after{std::string(stat.substr(close + 1))};
  // Fields 3..15: state, ppid, pgrp, session, tty_nr, tpgid, flags, minflt,
  // cminflt, majflt, cmajflt, utime, stime.
  std::string skip;
  for (int field = 3; field <= 13; ++field)
    if (!(after >> skip)) return std::nullopt;
  unsigned long long utime = 0, stime = 0;
  if (!(after >> utime >> stime)) return std::nullopt;
  std::istringstream pages{std::string(statm)};
  unsigned long long size = 0, resident = 0;
  if (!(pages >> size >> resident)) return std::nullopt;
  ProcessUsage usage;
  usage.rss_bytes = resident * static_cast<unsigned long long>(page_size);
  usage.cpu_seconds = static_cast<double>(utime + stime) / static_cast<double>(ticks_per_second);
  return usage;
}

std::optional<ProcessUsage> process_usage(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  const std::string dir = "/proc/" + std::to_string(pid);
  auto stat = read_small_file(dir + "/stat");
  auto statm = read_small_file(dir + "/statm");
  if (!stat || !statm) return std::nullopt;
  return parse_process_usage(*stat, *statm, ::sysconf(_SC_CLK_TCK), ::sysconf(_SC_PAGESIZE));
}

} // namespace vesicle::hostd
