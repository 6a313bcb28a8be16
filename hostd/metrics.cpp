#include "hostd/metrics.hpp"

#include <cstdio>

namespace vesicle::hostd {

namespace {
std::string number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", value);
  return text;
}

// A label value as the text format wants it: \\, \" and \n escaped.
std::string label_value(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
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

std::string
render_sandbox_memory(const std::vector<std::pair<std::string, MemoryFootprint>>& sandboxes) {
  std::uint64_t pss_total = 0, uss_total = 0;
  std::string pss =
      "# HELP vesicle_sandbox_pss_bytes Proportional set size of a live sandbox's QEMU "
      "(/proc/<pid>/smaps_rollup): its own pages plus its share of the pages it maps with other "
      "VMs (a template's RAM).\n# TYPE vesicle_sandbox_pss_bytes gauge\n";
  std::string uss = "# HELP vesicle_sandbox_uss_bytes Unique set size of a live sandbox's QEMU "
                    "(Private_Clean + Private_Dirty): what destroying it gives back.\n"
                    "# TYPE vesicle_sandbox_uss_bytes gauge\n";
  for (const auto& [id, footprint] : sandboxes) {
    const std::string labels = "{sandbox=\"" + label_value(id) + "\"} ";
    pss += "vesicle_sandbox_pss_bytes" + labels + std::to_string(footprint.pss_bytes) + "\n";
    uss += "vesicle_sandbox_uss_bytes" + labels + std::to_string(footprint.uss_bytes) + "\n";
    pss_total += footprint.pss_bytes;
    uss_total += footprint.uss_bytes;
  }
  return pss + uss +
         "# HELP vesicle_sandboxes_pss_bytes PSS summed over the live sandboxes' QEMUs (not the "
         "pool's waiting VMs).\n# TYPE vesicle_sandboxes_pss_bytes gauge\n"
         "vesicle_sandboxes_pss_bytes " +
         std::to_string(pss_total) +
         "\n# HELP vesicle_sandboxes_uss_bytes USS summed over the live sandboxes' QEMUs.\n"
         "# TYPE vesicle_sandboxes_uss_bytes gauge\nvesicle_sandboxes_uss_bytes " +
         std::to_string(uss_total) + "\n";
}

} // namespace vesicle::hostd
