#include "vmm/guest_memory.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>
#include <vector>

namespace vesicle::vmm {

namespace fs = std::filesystem;

namespace {

constexpr unsigned kSeals = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
// How long seal() keeps trying while the kernel answers EBUSY.
constexpr std::chrono::milliseconds kSealPatience{3000};

// Copies the data extents of `in` to `out` at the same offsets (`out` has
// the size already) and shows each piece to `seen`, if given. copy_file_range
// does not cross from a disk file into a memfd on every kernel, so this reads
// and writes.
Result<void> copy_extents(int in, int out, std::uint64_t size, const std::string& what,
                          const ChunkFn& seen = {}) {
  std::vector<char> buffer(1 << 20);
  return for_each_data_chunk(
      in, size, what, buffer, [&](std::uint64_t at, std::span<const char> bytes) -> Result<void> {
        for (std::size_t done = 0; done < bytes.size();) {
          const ssize_t w = ::pwrite(out, bytes.data() + done, bytes.size() - done,
                                     static_cast<off_t>(at + done));
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) return sys_error("write a copy of", what);
          done += static_cast<std::size_t>(w);
        }
        return seen ? seen(at, bytes) : Result<void>{};
      });
}

Result<UniqueFd> new_memfd(const std::string& name, std::uint64_t bytes) {
  UniqueFd fd(::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return sys_error("memfd_create", name);
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) return sys_error("ftruncate", name);
  if (::fchmod(fd.get(), 0600) != 0) return sys_error("fchmod", name);
  return fd;
}

} // namespace

fs::path fd_path(int fd) {
  return fs::path("/proc/self/fd") / std::to_string(fd);
}

fs::path GuestMemory::path() const {
  return fd_path(fd_.get());
}

Result<std::shared_ptr<GuestMemory>> GuestMemory::create(const std::string& name,
                                                         std::uint64_t bytes) {
  auto fd = new_memfd(name, bytes);
  if (!fd) return std::move(fd).error();
  return std::shared_ptr<GuestMemory>(new GuestMemory(std::move(fd.value()), bytes));
}

Result<std::shared_ptr<GuestMemory>>
GuestMemory::load(const fs::path& file, const std::string& name, const ChunkFn& seen) {
  UniqueFd in(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return sys_error("open", file.string());
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) return sys_error("stat", file.string());
  const auto bytes = static_cast<std::uint64_t>(st.st_size);
  auto fd = new_memfd(name, bytes);
  if (!fd) return std::move(fd).error();
  if (auto copied = copy_extents(in.get(), fd->get(), bytes, file.string(), seen); !copied)
    return std::move(copied).error();
  std::shared_ptr<GuestMemory> memory(new GuestMemory(std::move(fd.value()), bytes));
  if (auto sealed = memory->seal(); !sealed) return std::move(sealed).error();
  return memory;
}

Result<void> GuestMemory::seal() {
  if (sealed_) return {};
  // EBUSY has two causes. A writable shared mapping (a VM still running on
  // the file) lasts. Pages the kernel holds longer than F_ADD_SEALS waits for
  // them (~150 ms) pass: reclaim isolates pages it scans, and a host running
  // DAMON's pageout scheme (these machines do) scans page cache, memfds
  // included, with the scanner preempted on a busy host. CI saw one such
  // EBUSY on a fresh copy nothing mapped. So EBUSY is tried again for a while.
  const auto deadline = std::chrono::steady_clock::now() + kSealPatience;
  while (::fcntl(fd_.get(), F_ADD_SEALS, kSeals) != 0) {
    const int error_number = errno;
    if (error_number == EINTR) continue;
    if (error_number == EBUSY && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    Error error = sys_error("seal guest memory", path().string(), error_number);
    if (error_number == EBUSY)
      error.detail = "a VM still maps it writable and shared, or the kernel held its pages for " +
                     std::to_string(kSealPatience.count()) + " ms";
    return error;
  }
  if (::fchmod(fd_.get(), 0666) != 0) return sys_error("fchmod", path().string());
  sealed_ = true;
  return {};
}

Result<void> GuestMemory::open_to_vms() {
  if (::fchmod(fd_.get(), 0666) != 0) return sys_error("fchmod", path().string());
  return {};
}

Result<void> GuestMemory::give_to(uid_t uid, gid_t gid) {
  if (sealed_)
    return make_error("give guest memory", "it is sealed, shared by every VM restored from it");
  if (::fchown(fd_.get(), uid, gid) != 0) return sys_error("fchown", path().string());
  return {};
}

Result<void> GuestMemory::write_to(const fs::path& file) const {
  UniqueFd out(::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0400));
  if (!out) return sys_error("create", file.string());
  auto fail = [&](Error error) {
    ::unlink(file.c_str());
    return error;
  };
  if (::ftruncate(out.get(), static_cast<off_t>(bytes_)) != 0)
    return fail(sys_error("ftruncate", file.string()));
  if (auto copied = copy_extents(fd_.get(), out.get(), bytes_, path().string()); !copied)
    return fail(std::move(copied).error());
  if (::fsync(out.get()) != 0) return fail(sys_error("fsync", file.string()));
  return {};
}

} // namespace vesicle::vmm
