// What a process's memory costs the host, from /proc/<pid>/smaps_rollup:
// for /metrics' per-sandbox figures. RSS counts a page shared by ten VMs
// (a template's RAM mapped share=off) ten times; PSS splits it among them,
// so PSS summed over the VMs is what they cost together; USS is what
// destroying this one VM would give back.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <sys/types.h>

namespace vesicle::hostd {

struct MemoryFootprint {
  std::uint64_t pss_bytes = 0; // Pss
  std::uint64_t uss_bytes = 0; // Private_Clean + Private_Dirty
};

// Nothing when the process is gone (or `pid` is 0) or its text is not
// understood. Reading it walks the process's page tables (milliseconds for
// a VM of a few hundred MiB): call it off the event loop.
std::optional<MemoryFootprint> memory_footprint(pid_t pid);

// The parsing, apart, for the tests: smaps_rollup's text ("Pss:  1234 kB"
// lines after a header line). Nothing unless Pss, Private_Clean and
// Private_Dirty each appear once, in kB, with a number that fits.
std::optional<MemoryFootprint> parse_smaps_rollup(std::string_view text);

} // namespace vesicle::hostd
