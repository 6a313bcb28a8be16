#include "vmm/private_memory.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "common/unique_fd.hpp"
#include "vmm/sparse_file.hpp"

namespace vesicle::vmm {

namespace {

constexpr std::uint64_t kPage = 4096;
// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
constexpr std::uint64_t kPresent = 1ull << 63;
constexpr std::uint64_t kSwapped = 1ull << 62;
constexpr std::uint64_t kFileOrShared = 1ull << 61;
// Reads and writes go through a buffer of this size.
constexpr std::size_t kChunk = 1u << 20;

bool zero_page(const char* page) {
  static const char zeros[kPage] = {};
  return std::memcmp(page, zeros, kPage) == 0;
}

Result<void> write_all(int fd, const char* data, std::size_t size, std::uint64_t at,
                       const std::string& what) {
  for (std::size_t done = 0; done < size;) {
    const ssize_t w = ::pwrite(fd, data + done, size - done, static_cast<off_t>(at + done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return sys_error("write", what);
    done += static_cast<std::size_t>(w);
  }
  return {};
}

// Writes the non-zero pages of `bytes` (read from offset `at`) to `out`,
// runs of them at a time.
Result<std::uint64_t> write_nonzero(int out, std::uint64_t at, const char* bytes, std::size_t size,
                                    const std::string& what) {
  std::uint64_t written = 0;
  std::size_t run = 0, run_bytes = 0;
  auto flush = [&]() -> Result<void> {
    if (run_bytes == 0) return {};
    if (auto w = write_all(out, bytes + run, run_bytes, at + run, what); !w) return w;
    written += run_bytes;
    run_bytes = 0;
    return {};
  };
  for (std::size_t offset = 0; offset < size; offset += kPage) {
    const std::size_t length = std::min<std::size_t>(kPage, size - offset);
    const bool keep = length < kPage || !zero_page(bytes + offset);
    if (!keep) {
      if (auto flushed = flush(); !flushed) return flushed.error();
      continue;
    }
    if (run_bytes == 0) run = offset;
    run_bytes += length;
  }
  if (auto flushed = flush(); !flushed) return flushed.error();
  return written;
}

// Which pages of [address, address + bytes) in `pid` are its own
// (anonymous: written since the mapping was made), from its pagemap.
Result<std::vector<bool>> private_pages(pid_t pid, std::uint64_t address, std::uint64_t bytes) {
  const std::string path = "/proc/" + std::to_string(pid) + "/pagemap";
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", path);
  const std::uint64_t pages = bytes / kPage;
  std::vector<bool> mine(pages, false);
  std::vector<std::uint64_t> entries(kChunk / sizeof(std::uint64_t));
  for (std::uint64_t first = 0; first < pages;) {
    const std::uint64_t count = std::min<std::uint64_t>(entries.size(), pages - first);
    const off_t at = static_cast<off_t>((address / kPage + first) * sizeof(std::uint64_t));
    const ssize_t n = ::pread(fd.get(), entries.data(), count * sizeof(std::uint64_t), at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return sys_error("read", path);
    const std::uint64_t got = static_cast<std::uint64_t>(n) / sizeof(std::uint64_t);
    for (std::uint64_t i = 0; i < got; ++i) {
      const std::uint64_t entry = entries[i];
      // Present and not the file's page, or swapped out (only anonymous
      // pages of a private file mapping reach swap through its page table).
      mine[first + i] = ((entry & kPresent) && !(entry & kFileOrShared)) || (entry & kSwapped);
    }
    first += got;
  }
  return mine;
}

} // namespace

Result<std::uint64_t> find_mapping(pid_t pid, const GuestMemory& file, std::uint64_t bytes) {
  struct stat st {};
  if (::fstat(file.fd(), &st) != 0) return sys_error("stat", file.path().string());
  const std::string path = "/proc/" + std::to_string(pid) + "/maps";
  std::ifstream maps(path);
  if (!maps) return sys_error("open", path);
  std::string line;
  while (std::getline(maps, line)) {
    // start-end perms offset dev inode [path]
    std::istringstream fields(line);
    std::string range, perms, offset, dev;
    unsigned long long inode = 0;
    if (!(fields >> range >> perms >> offset >> dev >> inode)) continue;
    if (inode != st.st_ino || offset != "00000000") continue;
    const auto dash = range.find('-');
    if (dash == std::string::npos) continue;
    const std::uint64_t start = std::stoull(range.substr(0, dash), nullptr, 16);
    const std::uint64_t end = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (end - start == bytes) return start;
  }
  return make_error("find the guest RAM mapping",
                    "no mapping of the memory file with the guest's RAM size in " + path +
                        "; is this the VM's QEMU?",
                    file.path().string());
}

Result<std::shared_ptr<GuestMemory>> copy_memory_data(const GuestMemory& source,
                                                      const std::string& name) {
  const std::uint64_t bytes = source.bytes();
  const std::string what = "a copy of guest RAM (" + name + ")";
  auto made = GuestMemory::create(name, bytes);
  if (!made) return std::move(made).error();
  std::shared_ptr<GuestMemory> copy = std::move(made).value();
  if (bytes == 0) return copy;
  // Mapped, not read: one copy of each page instead of two. Only the data
  // extents are touched (a read fault on a hole would allocate a page in
  // the source).
  void* mapped = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, source.fd(), 0);
  if (mapped == MAP_FAILED) return sys_error("map", source.path().string());
  struct Unmap {
    void* at;
    std::uint64_t bytes;
    ~Unmap() { ::munmap(at, bytes); }
  } unmap{mapped, bytes};
  const char* data = static_cast<const char*>(mapped);
  auto copied = for_each_data_extent(
      source.fd(), bytes, source.path().string(), [&](off_t first, off_t last) -> Result<void> {
#ifdef MADV_POPULATE_READ
        // Faults the extent in at once rather than a page at a time.
        (void)::madvise(const_cast<char*>(data) + first, static_cast<std::size_t>(last - first),
                        MADV_POPULATE_READ);
#endif
        for (off_t at = first; at < last;) {
          const auto length =
              static_cast<std::size_t>(std::min<off_t>(last - at, static_cast<off_t>(kChunk)));
          auto written =
              write_nonzero(copy->fd(), static_cast<std::uint64_t>(at), data + at, length, what);
          if (!written) return std::move(written).error();
          at += static_cast<off_t>(length);
        }
        return {};
      });
  if (!copied) return std::move(copied).error();
  return copy;
}

Result<std::uint64_t> count_private_pages(pid_t pid, std::uint64_t address, std::uint64_t bytes) {
  auto mine = private_pages(pid, address, bytes);
  if (!mine) return std::move(mine).error();
  return static_cast<std::uint64_t>(std::count(mine->begin(), mine->end(), true));
}

namespace {

// overlay_private_pages for pages [first, last): reads the private ones
// from `pid` and writes them into `copy` (zero pages become holes); counts
// them into `pages`.
Result<void> overlay_range(pid_t pid, std::uint64_t address, GuestMemory& copy,
                           const std::vector<bool>& mine, std::uint64_t first, std::uint64_t last,
                           std::uint64_t& pages_copied) {
  const std::string what = copy.path().string();
  std::vector<char> buffer(kChunk);
  for (std::uint64_t page = first; page < last;) {
    if (!mine[page]) {
      ++page;
      continue;
    }
    std::uint64_t end = page;
    while (end < last && mine[end] && (end - page) * kPage < kChunk)
      ++end;
    const std::size_t length = static_cast<std::size_t>((end - page) * kPage);
    iovec local{buffer.data(), length};
    iovec remote{reinterpret_cast<void*>(address + page * kPage), length};
    const ssize_t n = ::process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n != static_cast<ssize_t>(length)) {
      Error error = sys_error("read guest RAM from QEMU", "pid " + std::to_string(pid));
      if (n >= 0) error.detail = "a short read: the mapping changed";
      return error;
    }
    // Non-zero pages replace the source's; zero ones become holes (the
    // source may have had data there).
    std::uint64_t zero_from = 0, zero_pages = 0;
    auto punch = [&]() -> Result<void> {
      if (zero_pages == 0) return {};
      if (::fallocate(copy.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      static_cast<off_t>(zero_from * kPage),
                      static_cast<off_t>(zero_pages * kPage)) != 0)
        return sys_error("punch a hole in", what);
      zero_pages = 0;
      return {};
    };
    for (std::uint64_t p = page; p < end; ++p) {
      const char* bytes_at = buffer.data() + (p - page) * kPage;
      if (zero_page(bytes_at)) {
        if (zero_pages == 0) zero_from = p;
        ++zero_pages;
        continue;
      }
      if (auto punched = punch(); !punched) return punched.error();
    }
    if (auto punched = punch(); !punched) return punched.error();
    auto written = write_nonzero(copy.fd(), page * kPage, buffer.data(), length, what);
    if (!written) return std::move(written).error();
    pages_copied += end - page;
    page = end;
  }
  return {};
}

} // namespace

Result<void> overlay_private_pages(pid_t pid, std::uint64_t address, GuestMemory& copy,
                                   RamCopyStats* stats) {
  const std::uint64_t bytes = copy.bytes();
  auto mine = private_pages(pid, address, bytes);
  if (!mine) return std::move(mine).error();
  const std::uint64_t pages = bytes / kPage;
  // The VM is paused while this runs, so it is the fork's wait: two
  // threads, each half of the private pages (page allocation in the copy
  // and the zero checks are CPU work, ~1 ms per MiB for one thread).
  const std::uint64_t total =
      static_cast<std::uint64_t>(std::count(mine->begin(), mine->end(), true));
  std::uint64_t middle = 0;
  for (std::uint64_t seen = 0; middle < pages && seen < total / 2; ++middle)
    seen += (*mine)[middle] ? 1 : 0;
  std::uint64_t first_half = 0, second_half = 0;
  Result<void> second = make_error("copy guest RAM", "not run");
  std::thread helper(
      [&] { second = overlay_range(pid, address, copy, *mine, middle, pages, second_half); });
  Result<void> first = overlay_range(pid, address, copy, *mine, 0, middle, first_half);
  helper.join();
  if (!first) return first;
  if (!second) return second;
  if (stats) stats->private_pages = first_half + second_half;
  return {};
}

} // namespace vesicle::vmm
