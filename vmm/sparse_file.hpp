// Walking the data of a sparse file: its data extents (SEEK_DATA /
// SEEK_HOLE), skipping the holes, which is what makes copying or hashing a
// guest's RAM file cost what the guest touched rather than its full size.
// Snapshots, their RAM memfds and cross-filesystem moves all read files this
// way.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "common/result.hpp"

namespace vesicle::vmm {

// Calls `each(first, last)` for every data extent [first, last) of `fd` below
// `size`, in order. `what` names the file in errors. Stops at the first error
// `each` returns.
using ExtentFn = std::function<Result<void>(off_t first, off_t last)>;
Result<void> for_each_data_extent(int fd, std::uint64_t size, const std::string& what,
                                  const ExtentFn& each);

// Reads every data extent of `fd` below `size` through `buffer` and calls
// `each(offset, bytes)` for each piece read, in file order. A file that
// shrinks while being read is an error.
using ChunkFn = std::function<Result<void>(std::uint64_t offset, std::span<const char> bytes)>;
Result<void> for_each_data_chunk(int fd, std::uint64_t size, const std::string& what,
                                 std::span<char> buffer, const ChunkFn& each);

} // namespace vesicle::vmm
