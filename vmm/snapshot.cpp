#include "vmm/snapshot.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <span>
#include <sstream>
#include <thread>
#include <vector>

#include "common/hex.hpp"
#include "common/unique_fd.hpp"
#include "vmm/sparse_file.hpp"

namespace vesicle::vmm::snapshot {

namespace fs = std::filesystem;

namespace {

constexpr const char* kRebuild = "; the snapshot must be rebuilt (boot a VM and save it again)";
constexpr std::size_t kReadBytes = 1u << 20;
constexpr std::size_t kPageBytes = 4096;

struct Sha256 {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx{EVP_MD_CTX_new(), EVP_MD_CTX_free};
  Sha256() { EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr); }
  void update(const void* data, std::size_t size) { EVP_DigestUpdate(ctx.get(), data, size); }
  void update_u64(std::uint64_t value) {
    unsigned char bytes[8];
    for (int i = 0; i < 8; ++i)
      bytes[i] = static_cast<unsigned char>(value >> (8 * i));
    update(bytes, sizeof bytes);
  }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx.get(), digest, &length);
    return to_hex(digest, length);
  }
};

// The sparse checksum (snapshot.hpp): every non-zero page with its offset,
// then the file's size. Fed the file's data extents in order.
class SparseDigest {
public:
  void add(std::uint64_t at, std::span<const char> bytes) {
    static const char zero_page[kPageBytes] = {};
    for (std::size_t page = 0; page < bytes.size(); page += kPageBytes) {
      const std::size_t length = std::min(kPageBytes, bytes.size() - page);
      if (std::memcmp(bytes.data() + page, zero_page, length) == 0) continue;
      sha_.update_u64(at + page);
      sha_.update(bytes.data() + page, length);
      data_bytes_ += length;
    }
  }
  FileDigest finish(std::uint64_t size) {
    sha_.update_u64(size);
    FileDigest digest;
    digest.size = size;
    digest.data_bytes = data_bytes_;
    digest.sha256 = sha_.hex();
    return digest;
  }

private:
  Sha256 sha_;
  std::uint64_t data_bytes_ = 0;
};

// A SparseDigest fed from one thread and computed on another: loading a
// snapshot's RAM copies it into a memfd and hashes what was copied, and
// the two take about as long each (~0.6 and ~0.8 ms per MiB), so hashing
// beside the copy nearly halves the check (a Space's resume waits for it).
// add() copies the chunk into a reused buffer, and waits while kDepth
// chunks are queued.
class PipelinedDigest {
public:
  PipelinedDigest() : worker_([this] { run(); }) {}
  ~PipelinedDigest() {
    close();
    if (worker_.joinable()) worker_.join();
  }
  PipelinedDigest(const PipelinedDigest&) = delete;
  PipelinedDigest& operator=(const PipelinedDigest&) = delete;

  void add(std::uint64_t at, std::span<const char> bytes) {
    std::unique_lock lock(mutex_);
    room_.wait(lock, [this] { return queue_.size() < kDepth; });
    std::vector<char> buffer;
    if (!spare_.empty()) {
      buffer = std::move(spare_.back());
      spare_.pop_back();
    }
    lock.unlock();
    buffer.assign(bytes.begin(), bytes.end());
    lock.lock();
    queue_.push_back(Chunk{at, std::move(buffer)});
    ready_.notify_one();
  }
  FileDigest finish(std::uint64_t size) {
    close();
    worker_.join();
    return digest_.finish(size);
  }

private:
  static constexpr std::size_t kDepth = 8;
  struct Chunk {
    std::uint64_t at = 0;
    std::vector<char> bytes;
  };
  void close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    ready_.notify_one();
  }
  void run() {
    for (;;) {
      Chunk chunk;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [this] { return !queue_.empty() || closed_; });
        if (queue_.empty()) return;
        chunk = std::move(queue_.front());
        queue_.pop_front();
      }
      digest_.add(chunk.at, chunk.bytes);
      std::lock_guard lock(mutex_);
      spare_.push_back(std::move(chunk.bytes));
      room_.notify_one();
    }
  }

  SparseDigest digest_;
  std::mutex mutex_;
  std::condition_variable ready_, room_;
  std::deque<Chunk> queue_;
  std::vector<std::vector<char>> spare_;
  bool closed_ = false;
  std::thread worker_; // last: it starts in the constructor and uses the members above
};

// Hashes [offset, offset+length) of fd; false (errno set) on a read error
// or a file shorter than expected.
bool hash_range(int fd, std::uint64_t offset, std::uint64_t length, Sha256& sha,
                std::vector<char>& buffer) {
  while (length > 0) {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(length, kReadBytes));
    const ssize_t n = ::pread(fd, buffer.data(), want, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) {
      errno = EIO; // the file shrank under us
      return false;
    }
    sha.update(buffer.data(), static_cast<std::size_t>(n));
    offset += static_cast<std::uint64_t>(n);
    length -= static_cast<std::uint64_t>(n);
  }
  return true;
}

bool parse_uint(std::string_view text, std::uint64_t& out) {
  if (text.empty()) return false;
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc() && ptr == end;
}

bool is_sha256_hex(std::string_view text) {
  return text.size() == 64 && text.find_first_not_of("0123456789abcdef") == std::string::npos;
}

std::vector<std::string_view> split_words(std::string_view text, std::size_t max_words) {
  std::vector<std::string_view> words;
  while (!text.empty() && words.size() + 1 < max_words) {
    const auto space = text.find(' ');
    if (space == std::string_view::npos) break;
    words.push_back(text.substr(0, space));
    text.remove_prefix(space + 1);
  }
  words.push_back(text);
  return words;
}

Error manifest_error(std::size_t line, std::string detail) {
  return make_error("parse snapshot manifest",
                    "line " + std::to_string(line) + ": " + std::move(detail) + kRebuild);
}

// Whether a file's checksum, computed by the caller, is the manifest's.
Result<void> check_digest(const fs::path& path, const char* role, const FileDigest& expected,
                          const FileDigest& got) {
  if (got.sha256 == expected.sha256) return {};
  return make_error("check snapshot file",
                    std::string("the snapshot's ") + role +
                        " does not match its sha256 in the manifest (it was changed or "
                        "damaged after the save)" +
                        kRebuild,
                    path.string());
}

// Size first (cheap, and names a truncation as one), then the checksum.
Result<void> check_file(const fs::path& path, const char* role, const FileDigest& expected,
                        bool sparse) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    Error error = sys_error("check snapshot file", path.string());
    error.detail = std::string("the snapshot's ") + role +
                   (errno == ENOENT ? " is missing" : " cannot be read") + kRebuild;
    return error;
  }
  if (!S_ISREG(st.st_mode)) {
    return make_error("check snapshot file",
                      std::string("the snapshot's ") + role + " is not a regular file" + kRebuild,
                      path.string());
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size != expected.size) {
    return make_error("check snapshot file",
                      std::string("the snapshot's ") + role + " has " + std::to_string(size) +
                          " bytes, the manifest says " + std::to_string(expected.size) +
                          (size < expected.size ? " (truncated)" : "") + kRebuild,
                      path.string());
  }
  auto digest = sparse ? digest_sparse_file(path) : digest_file(path);
  if (!digest) return std::move(digest).error().with_context(std::string("checking the ") + role);
  return check_digest(path, role, expected, *digest);
}

} // namespace

std::string format_manifest(const Manifest& m) {
  std::ostringstream out;
  out << "vesicle-snapshot " << m.version << "\n"
      << "vcpus " << m.vcpus << "\n"
      << "memory_mib " << m.memory_mib << "\n"
      << "accel " << to_string(m.accel) << "\n"
      << "network " << (m.network ? 1 : 0) << "\n"
      << "kernel " << m.kernel.string() << "\n"
      << "initrd " << m.initrd.string() << "\n"
      << "base_disk " << m.base_disk.string() << "\n"
      << "cmdline " << m.cmdline << "\n"
      << "state " << m.state.size << " " << m.state.sha256 << "\n"
      << "disk " << m.disk.size << " " << m.disk.sha256 << "\n"
      << "memory ";
  if (m.full_ram) {
    out << "in-state\n";
  } else {
    out << m.memory.size << " " << m.memory.data_bytes << " " << m.memory.sha256 << " "
        << m.memory_file.string() << "\n";
  }
  out << "pit " << (m.pit ? 1 : 0) << "\n";
  out << "vcpu_sockets " << (m.vcpu_sockets ? 1 : 0) << "\n";
  return out.str();
}

Result<Manifest> parse_manifest(std::string_view text) {
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    const auto newline = text.find('\n');
    if (newline == std::string_view::npos) {
      // Written atomically and always newline-terminated: a last line without
      // one is a file cut short.
      return manifest_error(lines.size() + 1, "the manifest ends in the middle of a line");
    }
    lines.push_back(text.substr(0, newline));
    text.remove_prefix(newline + 1);
  }
  if (lines.empty()) return manifest_error(1, "the manifest is empty");

  Manifest m;
  {
    auto words = split_words(lines[0], 2);
    std::uint64_t version = 0;
    if (words.size() != 2 || words[0] != "vesicle-snapshot" || !parse_uint(words[1], version)) {
      return manifest_error(1, "not a vesicle snapshot manifest (expected \"vesicle-snapshot "
                               "<version>\")");
    }
    if (version != static_cast<std::uint64_t>(kFormatVersion)) {
      return manifest_error(1, "the snapshot has format version " + std::to_string(version) +
                                   ", this build reads version " + std::to_string(kFormatVersion));
    }
    m.version = kFormatVersion;
  }

  static const char* const keys[] = {"vcpus",  "memory_mib", "accel",     "network",
                                     "kernel", "initrd",     "base_disk", "cmdline",
                                     "state",  "disk",       "memory"};
  constexpr std::size_t key_count = std::size(keys);
  // After them, lines "<key> 0|1" that came in later, in this order. A
  // manifest written before one came in ends before it and means `before`:
  // "pit", since the machine went without the legacy PIT (before, it had
  // one); "vcpu_sockets", since a TCG guest's vCPUs are sockets of their own
  // (before, they were cores).
  struct Flag {
    const char* key;
    bool Manifest::*field;
    bool before;
  };
  static constexpr Flag flags[] = {{"pit", &Manifest::pit, true},
                                   {"vcpu_sockets", &Manifest::vcpu_sockets, false}};
  if (lines.size() < key_count + 1 || lines.size() > key_count + 1 + std::size(flags)) {
    return manifest_error(lines.size(), "the manifest has " + std::to_string(lines.size()) +
                                            " lines, version " + std::to_string(kFormatVersion) +
                                            " has " + std::to_string(key_count + 1) + " to " +
                                            std::to_string(key_count + 1 + std::size(flags)));
  }
  for (std::size_t i = 0; i < std::size(flags); ++i) {
    const std::size_t number = key_count + 2 + i;
    m.*flags[i].field = flags[i].before;
    if (lines.size() < number) continue;
    const std::string key = flags[i].key;
    const std::string_view line = lines[number - 1];
    if (line != key + " 0" && line != key + " 1")
      return manifest_error(number, "expected \"" + key + " 0\" or \"" + key + " 1\"");
    m.*flags[i].field = line == key + " 1";
  }
  for (std::size_t i = 0; i < key_count; ++i) {
    const std::size_t number = i + 2;
    const std::string_view line = lines[i + 1];
    const std::string_view key = keys[i];
    if (line.substr(0, key.size() + 1) != std::string(key) + " ") {
      return manifest_error(number, "expected \"" + std::string(key) + " ...\"");
    }
    const std::string_view value = line.substr(key.size() + 1);
    auto need_uint = [&](std::uint64_t& out, std::string_view what) -> Result<void> {
      if (!parse_uint(what, out))
        return manifest_error(number, "not a number: " + std::string(what));
      return {};
    };
    std::uint64_t number_value = 0;
    if (key == "vcpus" || key == "memory_mib") {
      if (auto ok = need_uint(number_value, value); !ok) return std::move(ok).error();
      if (number_value == 0 || number_value > (1u << 20))
        return manifest_error(number, std::string(key) + " out of range");
      (key == "vcpus" ? m.vcpus : m.memory_mib) = static_cast<unsigned>(number_value);
    } else if (key == "accel") {
      if (value == "tcg") {
        m.accel = Accel::tcg;
      } else if (value == "kvm") {
        m.accel = Accel::kvm;
      } else {
        return manifest_error(number, "unknown accelerator " + std::string(value));
      }
    } else if (key == "network") {
      if (value != "0" && value != "1") return manifest_error(number, "network is 0 or 1");
      m.network = value == "1";
    } else if (key == "kernel" || key == "initrd" || key == "base_disk") {
      if (value.empty() || value[0] != '/')
        return manifest_error(number, std::string(key) + " is not an absolute path");
      (key == "kernel" ? m.kernel : key == "initrd" ? m.initrd : m.base_disk) = fs::path(value);
    } else if (key == "cmdline") {
      m.cmdline = std::string(value);
    } else if (key == "state" || key == "disk") {
      auto words = split_words(value, 3);
      FileDigest& digest = key == "state" ? m.state : m.disk;
      if (words.size() != 2) return manifest_error(number, "expected \"<size> <sha256>\"");
      if (auto ok = need_uint(digest.size, words[0]); !ok) return std::move(ok).error();
      if (!is_sha256_hex(words[1]))
        return manifest_error(number, "not a sha256: " + std::string(words[1]));
      digest.sha256 = std::string(words[1]);
      digest.data_bytes = digest.size;
    } else if (value == "in-state") { // memory, of a full-RAM snapshot
      m.full_ram = true;
    } else { // memory
      auto words = split_words(value, 4);
      if (words.size() != 4)
        return manifest_error(number, "expected \"<size> <data bytes> <sha256> <path>\"");
      if (auto ok = need_uint(m.memory.size, words[0]); !ok) return std::move(ok).error();
      if (auto ok = need_uint(m.memory.data_bytes, words[1]); !ok) return std::move(ok).error();
      if (!is_sha256_hex(words[2]))
        return manifest_error(number, "not a sha256: " + std::string(words[2]));
      m.memory.sha256 = std::string(words[2]);
      if (words[3].empty() || words[3][0] != '/')
        return manifest_error(number, "the memory file is not an absolute path");
      m.memory_file = fs::path(words[3]);
    }
  }
  if (!m.full_ram && m.memory.size != std::uint64_t{m.memory_mib} << 20) {
    return manifest_error(key_count + 1, "the memory file's size does not match memory_mib");
  }
  return m;
}

Result<FileDigest> digest_file(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", path.string());
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return sys_error("stat", path.string());
  FileDigest digest;
  digest.size = digest.data_bytes = static_cast<std::uint64_t>(st.st_size);
  Sha256 sha;
  std::vector<char> buffer(kReadBytes);
  if (!hash_range(fd.get(), 0, digest.size, sha, buffer)) return sys_error("read", path.string());
  digest.sha256 = sha.hex();
  return digest;
}

Result<FileDigest> digest_sparse_file(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", path.string());
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return sys_error("stat", path.string());
  const auto size = static_cast<std::uint64_t>(st.st_size);
  SparseDigest digest;
  std::vector<char> buffer(kReadBytes);
  auto read = for_each_data_chunk(fd.get(), size, path.string(), buffer,
                                  [&](std::uint64_t at, std::span<const char> bytes) {
                                    digest.add(at, bytes);
                                    return Result<void>{};
                                  });
  if (!read) return std::move(read).error();
  return digest.finish(size);
}

Result<void> write_file_atomically(const fs::path& path, std::string_view contents) {
  const fs::path temporary = path.string() + ".tmp";
  UniqueFd fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) return sys_error("create", temporary.string());
  auto fail = [&](const char* what) {
    Error error = sys_error(what, temporary.string());
    ::unlink(temporary.c_str());
    return error;
  };
  std::size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n = ::write(fd.get(), contents.data() + written, contents.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("write");
    written += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail("fsync");
  fd.reset();
  if (::rename(temporary.c_str(), path.c_str()) != 0) return fail("rename");
  UniqueFd dir(::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir) ::fsync(dir.get());
  return {};
}

Result<Snapshot> open(const fs::path& dir) {
  const fs::path manifest_path = dir / kManifestName;
  std::ifstream in(manifest_path, std::ios::binary);
  if (!in) {
    Error error = sys_error("open snapshot manifest", manifest_path.string());
    error.detail = std::string(errno == ENOENT ? "no snapshot here (the manifest is missing)"
                                               : "the manifest cannot be read") +
                   kRebuild;
    return error;
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto manifest = parse_manifest(text);
  if (!manifest)
    return std::move(manifest).error().with_context("reading " + manifest_path.string());
  const Manifest& m = *manifest;

  const fs::path state = dir / kStateName;
  const fs::path disk = dir / kDiskName;
  // Sizes of all three first: a missing or truncated file is named before
  // anything is hashed.
  for (auto [path, role, expected] :
       {std::tuple{&state, "device state", &m.state}, std::tuple{&disk, "disk", &m.disk},
        std::tuple{&m.memory_file, "memory file", &m.memory}}) {
    if (m.full_ram && path == &m.memory_file) continue;
    struct stat st {};
    if (::stat(path->c_str(), &st) != 0 ||
        static_cast<std::uint64_t>(st.st_size) != expected->size) {
      if (auto checked = check_file(*path, role, *expected, false); !checked)
        return checked.error();
    }
  }
  if (auto ok = check_file(state, "device state", m.state, false); !ok) return ok.error();
  if (auto ok = check_file(disk, "disk", m.disk, false); !ok) return ok.error();
  // The RAM image is copied into a sealed memory file (what restored VMs
  // map), and the copy is what gets checked: what was checked is what runs.
  std::shared_ptr<GuestMemory> memory;
  if (!m.full_ram) {
    PipelinedDigest digest;
    auto loaded = GuestMemory::load(m.memory_file, "vesicle-snapshot",
                                    [&](std::uint64_t at, std::span<const char> bytes) {
                                      digest.add(at, bytes);
                                      return Result<void>{};
                                    });
    if (!loaded) {
      Error error = std::move(loaded).error();
      error.detail += kRebuild;
      return error;
    }
    memory = std::move(loaded.value());
    // The checksum of the bytes written into the memfd: what was checked is
    // what runs, read from disk once.
    if (auto ok =
            check_digest(m.memory_file, "memory file", m.memory, digest.finish(memory->bytes()));
        !ok)
      return ok.error();
  }
  // The disk's backing chain lives outside the snapshot: the base image, and
  // for a VM that was itself restored, the template snapshot's disk. A
  // missing link would make QEMU refuse the drive at restore; say so now.
  {
    fs::path image = disk;
    for (int depth = 0; depth < 16; ++depth) {
      auto backing = qcow2_backing_file(image);
      if (!backing) return std::move(backing).error().with_context("reading the disk's header");
      if (backing->empty()) break;
      if (::access(backing->c_str(), R_OK) != 0) {
        Error error = sys_error("check snapshot's disk chain", backing->string());
        error.detail = "the snapshot's disk is backed by " + backing->string() + " (through " +
                       image.string() +
                       "), which is gone: the template snapshot or image it was made from was "
                       "removed; the snapshot cannot be restored";
        return error;
      }
      image = *backing;
    }
  }
  // The disk's backing file and the boot files live outside the snapshot;
  // they must still be there (their content is the image's business).
  for (const auto* file : {&m.kernel, &m.initrd, &m.base_disk}) {
    if (::access(file->c_str(), R_OK) != 0) {
      Error error = sys_error("check snapshot's guest image", file->string());
      error.detail = "the image the snapshot was booted from is gone; rebuild the snapshot "
                     "from the current images";
      return error;
    }
  }

  Snapshot snapshot = described(dir, m);
  snapshot.memory = std::move(memory);
  return snapshot;
}

Snapshot described(const fs::path& dir, const Manifest& m) {
  Snapshot snapshot;
  snapshot.dir = dir;
  snapshot.memory_file = m.memory_file;
  snapshot.disk = dir / kDiskName;
  snapshot.images = GuestImages{m.kernel, m.initrd, m.base_disk};
  snapshot.vcpus = m.vcpus;
  snapshot.memory_mib = m.memory_mib;
  snapshot.kernel_cmdline = m.cmdline;
  snapshot.network = m.network;
  snapshot.accel = m.accel;
  snapshot.full_ram = m.full_ram;
  snapshot.pit = m.pit;
  snapshot.vcpu_sockets = m.vcpu_sockets;
  return snapshot;
}

Result<fs::path> qcow2_backing_file(const fs::path& image) {
  UniqueFd fd(::open(image.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", image.string());
  unsigned char header[20];
  const ssize_t n = ::pread(fd.get(), header, sizeof header, 0);
  if (n < 0) return sys_error("read", image.string());
  if (n < static_cast<ssize_t>(sizeof header) || std::memcmp(header, "QFI\xfb", 4) != 0)
    return fs::path(); // not qcow2 (a raw base image)
  std::uint64_t offset = 0;
  for (int i = 8; i < 16; ++i)
    offset = offset << 8 | header[i];
  std::uint32_t size = 0;
  for (int i = 16; i < 20; ++i)
    size = size << 8 | header[i];
  if (offset == 0 || size == 0) return fs::path();
  if (size > 4096) {
    return make_error("read qcow2 header", "its backing file name is implausibly long",
                      image.string());
  }
  std::string name(size, '\0');
  if (::pread(fd.get(), name.data(), size, static_cast<off_t>(offset)) !=
      static_cast<ssize_t>(size))
    return make_error("read qcow2 header", "the backing file name is cut short", image.string());
  fs::path backing(name);
  if (backing.is_relative()) backing = image.parent_path() / backing;
  return backing;
}

Result<Ranges> hole_ranges(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", path.string());
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return sys_error("stat", path.string());
  Ranges holes;
  off_t offset = 0;
  while (offset < st.st_size) {
    off_t hole = ::lseek(fd.get(), offset, SEEK_HOLE);
    if (hole < 0) return sys_error("seek to a hole in", path.string());
    if (hole >= st.st_size) break;
    off_t data = ::lseek(fd.get(), hole, SEEK_DATA);
    if (data < 0) {
      if (errno != ENXIO) return sys_error("seek to data in", path.string());
      data = st.st_size;
    }
    holes.emplace_back(static_cast<std::uint64_t>(hole), static_cast<std::uint64_t>(data));
    offset = data;
  }
  return holes;
}

Result<void> punch_ranges(const fs::path& path, const Ranges& ranges) {
  if (ranges.empty()) return {};
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return sys_error("open for hole punching", path.string());
  for (const auto& [first, last] : ranges) {
    if (last <= first) continue;
    if (::fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(first),
                    static_cast<off_t>(last - first)) != 0)
      return sys_error("punch a hole in", path.string());
  }
  return {};
}

Result<std::uint64_t> punch_zero_pages(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) return sys_error("open for hole punching", path.string());
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return sys_error("stat", path.string());
  std::vector<char> buffer(kReadBytes);
  static const char zero_page[kPageBytes] = {};
  std::uint64_t freed = 0;
  // Runs of zero pages are punched in one call each.
  std::uint64_t run_start = 0, run_end = 0;
  auto flush = [&]() -> Result<void> {
    if (run_end == run_start) return {};
    if (::fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(run_start), static_cast<off_t>(run_end - run_start)) != 0)
      return sys_error("punch a hole in", path.string());
    freed += run_end - run_start;
    run_start = run_end = 0;
    return {};
  };
  auto scanned = for_each_data_chunk(
      fd.get(), static_cast<std::uint64_t>(st.st_size), path.string(), buffer,
      [&](std::uint64_t at, std::span<const char> bytes) -> Result<void> {
        for (std::size_t page = 0; page + kPageBytes <= bytes.size(); page += kPageBytes) {
          if (std::memcmp(bytes.data() + page, zero_page, kPageBytes) != 0) continue;
          const std::uint64_t page_at = at + page;
          if (run_end != run_start && run_end == page_at) {
            run_end += kPageBytes;
            continue;
          }
          if (auto punched = flush(); !punched) return punched;
          run_start = page_at;
          run_end = page_at + kPageBytes;
        }
        return {};
      });
  if (!scanned) return std::move(scanned).error();
  if (auto punched = flush(); !punched) return std::move(punched).error();
  return freed;
}

Result<void> fsync_path(const fs::path& path, bool directory) {
  UniqueFd fd(::open(path.c_str(), (directory ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC));
  if (!fd) return sys_error("open", path.string());
  if (::fsync(fd.get()) != 0) return sys_error("fsync", path.string());
  return {};
}

Result<void> sync_and_digest(const fs::path& dir, Manifest& manifest) {
  const fs::path state = dir / kStateName;
  const fs::path disk = dir / kDiskName;
  for (const auto& path : {state, disk}) {
    if (auto synced = fsync_path(path, false); !synced) return synced.error();
  }
  auto state_digest = digest_file(state);
  if (!state_digest) return state_digest.error();
  auto disk_digest = digest_file(disk);
  if (!disk_digest) return disk_digest.error();
  manifest.state = *state_digest;
  manifest.disk = *disk_digest;
  return {};
}

Result<Manifest> persist_fork_snapshot(const Snapshot& saved, const fs::path& memory_out,
                                       const fs::path& memory_named) {
  if (!saved.memory)
    return make_error("persist a snapshot", "it has no RAM file", saved.dir.string());
  Manifest manifest;
  manifest.vcpus = saved.vcpus;
  manifest.memory_mib = saved.memory_mib;
  manifest.accel = saved.accel;
  manifest.network = saved.network;
  manifest.kernel = saved.images.kernel;
  manifest.initrd = saved.images.initrd;
  manifest.base_disk = saved.images.base_disk;
  manifest.cmdline = saved.kernel_cmdline;
  manifest.pit = saved.pit;
  manifest.vcpu_sockets = saved.vcpu_sockets;
  manifest.memory_file = memory_named;
  auto hashing = std::async(std::launch::async,
                            [memory = saved.memory] { return digest_sparse_file(memory->path()); });
  auto written = saved.memory->write_to(memory_out);
  auto synced = sync_and_digest(saved.dir, manifest);
  auto memory = hashing.get();
  if (!written) return written.error();
  if (!synced) return synced.error();
  if (!memory) return std::move(memory).error();
  manifest.memory = std::move(memory).value();
  if (auto done = write_file_atomically(saved.manifest(), format_manifest(manifest)); !done)
    return done.error();
  return manifest;
}

} // namespace vesicle::vmm::snapshot

namespace vesicle::vmm {

Result<Snapshot> open_snapshot(const std::filesystem::path& dir) {
  auto snapshot = snapshot::open(std::filesystem::absolute(dir));
  if (!snapshot)
    return std::move(snapshot).error().with_context("opening snapshot " + dir.string());
  return snapshot;
}

} // namespace vesicle::vmm
