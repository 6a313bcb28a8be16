#include "hostd/metrics.hpp"

#include <cstdio>

namespace vesicle::hostd {

namespace {
std::string number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", value);
  return text;
}
} // namespace

void LatencyHistogram::record(const std::string& label, double seconds) {
  auto& series = series_[label];
  for (std::size_t i = 0; i < kBounds.size(); ++i) {
    if (seconds <= kBounds[i]) {
      ++series.buckets[i];
      break;
    }
  }
  ++series.count;
  series.sum += seconds;
}

std::string LatencyHistogram::render(const std::string& name, const std::string& help,
                                     const std::string& label_name) const {
  std::string text = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  for (const auto& [label, series] : series_) {
    const std::string prefix = name + "_bucket{" + label_name + "=\"" + label + "\",le=\"";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < kBounds.size(); ++i) {
      cumulative += series.buckets[i];
      text += prefix + number(kBounds[i]) + "\"} " + std::to_string(cumulative) + "\n";
    }
    text += prefix + "+Inf\"} " + std::to_string(series.count) + "\n";
    const std::string labels = "{" + label_name + "=\"" + label + "\"}";
    text += name + "_sum" + labels + " " + number(series.sum) + "\n";
    text += name + "_count" + labels + " " + std::to_string(series.count) + "\n";
  }
  return text;
}

} // namespace vesicle::hostd
