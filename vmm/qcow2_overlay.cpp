#include "vmm/qcow2_overlay.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <vector>

#include "common/unique_fd.hpp"

namespace vesicle::vmm {

namespace {

constexpr std::uint32_t kClusterBits = 16;
constexpr std::uint64_t kCluster = std::uint64_t{1} << kClusterBits;
constexpr std::uint64_t kRefcountTable = 1 * kCluster;
constexpr std::uint64_t kRefcountBlock = 2 * kCluster;
constexpr std::uint64_t kL1Table = 3 * kCluster;
constexpr std::uint32_t kHeaderLength = 112; // version 3 with the compression-type byte
constexpr std::uint32_t kBackingFormatExtension = 0xe2792aca;
// QEMU refuses backing file names of 1024 bytes or more.
constexpr std::size_t kMaxBackingName = 1023;

void put_be(std::vector<unsigned char>& out, std::size_t at, std::uint64_t value, int bytes) {
  for (int i = bytes - 1; i >= 0; --i, value >>= 8)
    out[at + static_cast<std::size_t>(i)] = static_cast<unsigned char>(value & 0xff);
}

std::uint64_t get_be(const unsigned char* in, int bytes) {
  std::uint64_t value = 0;
  for (int i = 0; i < bytes; ++i)
    value = (value << 8) | in[i];
  return value;
}

Result<void> write_all(int fd, const std::vector<unsigned char>& bytes, std::uint64_t offset,
                       const std::filesystem::path& path) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n =
        ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error("write", path.string());
    }
    done += static_cast<std::size_t>(n);
  }
  return {};
}

} // namespace

Result<std::uint64_t> image_virtual_size(const std::filesystem::path& image,
                                         const std::string& format) {
  UniqueFd fd(::open(image.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", image.string());
  if (format == "raw") {
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return sys_error("stat", image.string());
    return static_cast<std::uint64_t>(st.st_size);
  }
  if (format != "qcow2")
    return make_error("read the image's size", "unknown format " + format + " (raw or qcow2)",
                      image.string());
  std::array<unsigned char, 32> header{};
  if (::pread(fd.get(), header.data(), header.size(), 0) != static_cast<ssize_t>(header.size()))
    return make_error("read the image's size", "too short for a qcow2 header", image.string());
  if (get_be(header.data(), 4) != 0x514649fb)
    return make_error("read the image's size", "not a qcow2 image (bad magic)", image.string());
  return get_be(header.data() + 24, 8);
}

Result<void> write_qcow2_overlay(const std::filesystem::path& overlay, const std::string& backing,
                                 const std::string& format, std::uint64_t size_bytes,
                                 bool in_place) {
  const std::string what = overlay.string();
  if (format != "raw" && format != "qcow2")
    return make_error("create the overlay", "unknown backing format " + format + " (raw or qcow2)",
                      what);
  if (backing.empty() || backing.size() > kMaxBackingName)
    return make_error("create the overlay", "the backing file's name must have 1 to 1023 bytes",
                      backing);
  if (size_bytes == 0) {
    auto size = image_virtual_size(backing, format);
    if (!size) return std::move(size).error().with_context("sizing the overlay");
    size_bytes = *size;
  }
  // Sizes are whole 512-byte sectors, as qemu-img rounds them.
  size_bytes = (size_bytes + 511) & ~std::uint64_t{511};
  if (size_bytes == 0) return make_error("create the overlay", "its size is zero", what);

  // One L1 entry maps an L2 table of cluster/8 entries of one cluster each.
  const std::uint64_t per_l1 = kCluster * (kCluster / 8);
  const std::uint64_t l1_entries = (size_bytes + per_l1 - 1) / per_l1;
  if (l1_entries * 8 > kCluster)
    return make_error("create the overlay", "larger than one L1 cluster maps (4 PiB)", what);

  std::vector<unsigned char> header(kCluster, 0);
  put_be(header, 0, 0x514649fb, 4); // "QFI\xfb"
  put_be(header, 4, 3, 4);          // version
  // The backing name follows the header extensions.
  const std::size_t extensions = kHeaderLength;
  const std::size_t format_padded = (format.size() + 7) & ~std::size_t{7};
  const std::size_t extensions_end = extensions + 8 + format_padded + 8;
  put_be(header, 8, extensions_end, 8);
  put_be(header, 16, backing.size(), 4);
  put_be(header, 20, kClusterBits, 4);
  put_be(header, 24, size_bytes, 8);
  put_be(header, 32, 0, 4); // no encryption
  put_be(header, 36, l1_entries, 4);
  put_be(header, 40, kL1Table, 8);
  put_be(header, 48, kRefcountTable, 8);
  put_be(header, 56, 1, 4); // refcount table clusters
  // 60: no snapshots; 72..95: no incompatible, compatible or autoclear features.
  put_be(header, 96, 4, 4); // refcount_order: 16-bit refcounts
  put_be(header, 100, kHeaderLength, 4);
  // 104: compression type zlib (0), padded to 112.
  put_be(header, extensions, kBackingFormatExtension, 4);
  put_be(header, extensions + 4, format.size(), 4);
  std::memcpy(header.data() + extensions + 8, format.data(), format.size());
  // Then the end-of-extensions marker (type 0, length 0), already zero.
  std::memcpy(header.data() + extensions_end, backing.data(), backing.size());

  std::vector<unsigned char> refcount_table(kCluster, 0);
  put_be(refcount_table, 0, kRefcountBlock, 8);
  std::vector<unsigned char> refcount_block(kCluster, 0);
  for (std::size_t cluster = 0; cluster < 4; ++cluster)
    put_be(refcount_block, cluster * 2, 1, 2);
  // The L1 table is all zero; the file ends where it does.
  std::vector<unsigned char> l1(l1_entries * 8, 0);

  UniqueFd fd(in_place ? ::open(overlay.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC)
                       : ::open(overlay.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) return sys_error(in_place ? "open" : "create", what);
  Result<void> written = write_all(fd.get(), header, 0, overlay);
  if (written) written = write_all(fd.get(), refcount_table, kRefcountTable, overlay);
  if (written) written = write_all(fd.get(), refcount_block, kRefcountBlock, overlay);
  if (written) written = write_all(fd.get(), l1, kL1Table, overlay);
  if (!written) {
    if (!in_place) ::unlink(overlay.c_str());
    return written;
  }
  return {};
}

} // namespace vesicle::vmm
