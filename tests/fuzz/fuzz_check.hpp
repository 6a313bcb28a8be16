// What the fuzz targets share: a failed property aborts with a message, so
// libFuzzer saves the input as a crash the same way a sanitizer report
// does; and the entry point's name, which the replay test renames
// (tests/fuzz/CMakeLists.txt) so all targets fit in one GoogleTest binary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#ifndef VESICLE_FUZZ_ENTRY
#define VESICLE_FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

#define FUZZ_CHECK(condition)                                                                      \
  do {                                                                                             \
    if (!(condition)) {                                                                            \
      std::fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #condition);        \
      std::abort();                                                                                \
    }                                                                                              \
  } while (0)

extern "C" int VESICLE_FUZZ_ENTRY(const std::uint8_t* data, std::size_t size);
