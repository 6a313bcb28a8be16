// Timings of one benchmark step and their percentiles, for the benchmark
// programs' tables and JSON.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace vesicle::bench {

using Clock = std::chrono::steady_clock;

struct Series {
  std::string name;
  std::vector<double> values; // milliseconds unless `unit` says otherwise
  std::string unit = "ms";

  // Nearest-rank percentile of the values, 0 when there are none.
  double percentile(double p) const {
    if (values.empty()) return 0;
    auto sorted = values;
    std::sort(sorted.begin(), sorted.end());
    auto rank = static_cast<std::size_t>(p / 100.0 * (sorted.size() - 1) + 0.5);
    return sorted[std::min(rank, sorted.size() - 1)];
  }
  void print_row() const {
    std::printf("%-34s %6zu %10.2f %10.2f %10.2f %s\n", name.c_str(), values.size(), percentile(50),
                percentile(95), percentile(99), unit.c_str());
  }
  std::string json() const {
    char text[320];
    std::snprintf(text, sizeof text,
                  "{\"step\": \"%s\", \"unit\": \"%s\", \"n\": %zu, \"p50\": %.3f, \"p95\": %.3f, "
                  "\"p99\": %.3f}",
                  name.c_str(), unit.c_str(), values.size(), percentile(50), percentile(95),
                  percentile(99));
    return text;
  }
};

inline void print_header() {
  std::printf("%-34s %6s %10s %10s %10s\n", "step", "n", "p50", "p95", "p99");
}

inline double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Writes the results' JSON text to `path` and says so.
inline void write_results(const std::string& path, const std::string& json) {
  std::ofstream out(path);
  out << json;
  std::printf("wrote %s\n", path.c_str());
}

} // namespace vesicle::bench
