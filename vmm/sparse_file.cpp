#include "vmm/sparse_file.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace vesicle::vmm {

Result<void> for_each_data_extent(int fd, std::uint64_t size, const std::string& what,
                                  const ExtentFn& each) {
  const auto end = static_cast<off_t>(size);
  off_t offset = 0;
  while (offset < end) {
    const off_t data = ::lseek(fd, offset, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break; // only a hole is left
      return sys_error("seek to data in", what);
    }
    if (data >= end) break;
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return sys_error("seek to a hole in", what);
    hole = std::min(hole, end);
    if (auto done = each(data, hole); !done) return done;
    offset = hole;
  }
  return {};
}

Result<void> for_each_data_chunk(int fd, std::uint64_t size, const std::string& what,
                                 std::span<char> buffer, const ChunkFn& each) {
  return for_each_data_extent(fd, size, what, [&](off_t first, off_t last) -> Result<void> {
    for (off_t at = first; at < last;) {
      const auto want =
          static_cast<std::size_t>(std::min<off_t>(last - at, static_cast<off_t>(buffer.size())));
      const ssize_t n = ::pread(fd, buffer.data(), want, at);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return sys_error("read", what);
      if (n == 0) return Error{EIO, "read", what, "the file shrank while being read", {}};
      if (auto done = each(static_cast<std::uint64_t>(at),
                           std::span<const char>(buffer.data(), static_cast<std::size_t>(n)));
          !done)
        return done;
      at += n;
    }
    return {};
  });
}

} // namespace vesicle::vmm
