// hostd's own counters for /metrics (Prometheus text format 0.0.4). Only
// the HTTP handlers touch them, and they all run on the one asio thread, so
// nothing here is synchronized.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "hostd/smaps_rollup.hpp"

namespace vesicle::hostd {

// A latency histogram per label value (e.g. per create source).
class LatencyHistogram {
public:
  // Upper bounds in seconds: fine below 10 ms where pool hits land, coarse
  // up to the cold boots of a loaded TCG host.
  static constexpr std::array<double, 15> kBounds = {
      0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

  void record(const std::string& label, double seconds);
  // The # HELP / # TYPE header and every series, labelled `label_name`.
  std::string render(const std::string& name, const std::string& help,
                     const std::string& label_name) const;

private:
  struct Series {
    std::array<std::uint64_t, kBounds.size()> buckets{}; // not cumulative
    std::uint64_t count = 0;
    double sum = 0;
  };
  std::map<std::string, Series> series_;
};

struct Metrics {
  LatencyHistogram create_seconds; // by source: pool, restore, boot, failed
  LatencyHistogram fork_seconds;   // by outcome: ok, failed
  LatencyHistogram freeze_seconds; // by outcome: ok, failed
  LatencyHistogram resume_seconds; // by outcome: ok, failed
  // Error answers by kind (common/error_kind.hpp's names).
  std::map<std::string, std::uint64_t> errors;
};

// The gauges vesicle_sandbox_pss_bytes and vesicle_sandbox_uss_bytes, one
// series per sandbox id, and their sums over every sandbox listed
// (vesicle_sandboxes_pss_bytes, vesicle_sandboxes_uss_bytes).
std::string
render_sandbox_memory(const std::vector<std::pair<std::string, MemoryFootprint>>& sandboxes);

} // namespace vesicle::hostd
