// A snapshot's files on disk: the manifest that names them, and the
// checksums that tell a snapshot that restores right from one that would
// restore wrongly (a truncated RAM file resumes a guest with zeroed pages;
// a changed disk under a restored page cache corrupts the filesystem).
//
// The manifest is a small line-based text file, "key value" per line, in
// this order (a path or the command line is the rest of its line):
//
//   vesicle-snapshot 1
//   vcpus 2
//   memory_mib 512
//   accel tcg
//   network 0
//   kernel /abs/vmlinuz
//   initrd /abs/initrd.img
//   base_disk /abs/rootfs.ext4
//   cmdline console=ttyS0 ...
//   state <size> <sha256>                        (dir/state: QEMU's device state)
//   disk <size> <sha256>                         (dir/disk.qcow2)
//   memory <size> <data bytes> <sha256> <path>   (the RAM file, anywhere)
//
// A full-RAM snapshot (Vm::save_full) has every RAM page in its state file
// and no RAM file; its memory line is "memory in-state".
//
// The RAM file is sparse (tmpfs holds only the pages the guest touched), so
// its checksum skips the holes (SEEK_DATA/SEEK_HOLE): reading a 1 GiB file
// that holds 200 MB costs 200 MB of reads. It covers the file's content as
// the guest sees it, with a zero page and a hole alike, because the extent
// map itself changes under restored VMs: a read or copy-on-write fault on a
// hole of a MAP_PRIVATE tmpfs mapping allocates a zero page in the file.
// Every non-zero page is hashed with its offset, so data that moved or went
// missing fails the check as surely as a flipped byte.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::vmm::snapshot {

// Bumped when the manifest or what a snapshot holds changes meaning; a
// snapshot of another version is refused (rebuild it).
constexpr int kFormatVersion = 1;

inline constexpr const char* kManifestName = "manifest";
inline constexpr const char* kStateName = "state";
inline constexpr const char* kDiskName = "disk.qcow2";

struct FileDigest {
  std::uint64_t size = 0;       // apparent size (st_size)
  std::uint64_t data_bytes = 0; // bytes in non-zero pages (sparse), else == size
  std::string sha256;           // lowercase hex
};

struct Manifest {
  int version = kFormatVersion;
  unsigned vcpus = 0;
  unsigned memory_mib = 0;
  Accel accel = Accel::tcg;
  bool network = false;
  std::filesystem::path kernel, initrd, base_disk;
  std::string cmdline;
  FileDigest state, disk, memory;
  std::filesystem::path memory_file;
  bool full_ram = false; // "memory in-state": no memory file, memory is zeroed
  // The machine had the legacy PIT (i8254). Manifests from before the
  // machine went without it have no "pit" line, and mean yes.
  bool pit = false;
  // Each vCPU was a socket of its own (`-smp N,sockets=N`, under TCG).
  // Manifests from before have no "vcpu_sockets" line, and mean no: one
  // socket of N cores.
  bool vcpu_sockets = false;
};

std::string format_manifest(const Manifest& manifest);
// Parses and validates the text (not the files). Errors name the line.
Result<Manifest> parse_manifest(std::string_view text);

// sha256 of a whole file.
Result<FileDigest> digest_file(const std::filesystem::path& path);
// sha256 over a sparse file's non-zero 4 KiB pages, found through its data
// extents (SEEK_DATA / SEEK_HOLE): each page's offset (8 bytes, little
// endian) then its bytes; then the file size. Holes and zero pages hash
// alike.
Result<FileDigest> digest_sparse_file(const std::filesystem::path& path);

// The backing file a qcow2 image names in its header (resolved against the
// image's directory when relative), or an empty path when it has none or
// is not qcow2.
Result<std::filesystem::path> qcow2_backing_file(const std::filesystem::path& image);

// Byte ranges [first, second) of a file.
using Ranges = std::vector<std::pair<std::uint64_t, std::uint64_t>>;

// The holes of a sparse file (SEEK_DATA / SEEK_HOLE), up to its size.
Result<Ranges> hole_ranges(const std::filesystem::path& path);

// Deallocates `ranges` of the file (FALLOC_FL_PUNCH_HOLE). Only for ranges
// known to read as zeros: the content the file shows does not change.
Result<void> punch_ranges(const std::filesystem::path& path, const Ranges& ranges);

// Deallocates every all-zero 4 KiB page among the file's data extents and
// returns how many bytes that freed. The content does not change; nothing
// may write the file meanwhile (a write racing the scan could be lost).
Result<std::uint64_t> punch_zero_pages(const std::filesystem::path& path);

// Writes `contents` to path.tmp, fsyncs, renames over `path`, fsyncs the
// directory: a reader sees the old file or the whole new one.
Result<void> write_file_atomically(const std::filesystem::path& path, std::string_view contents);

// fsync(2) of a file, or of a directory (its entries). Blocking.
Result<void> fsync_path(const std::filesystem::path& path, bool directory);

// Fsyncs the device state and the disk in the snapshot directory `dir` and
// puts their checksums in `manifest`: a step of sealing every kind of
// snapshot. Blocking.
Result<void> sync_and_digest(const std::filesystem::path& dir, Manifest& manifest);

// Puts a fork snapshot (Vm::save_fork_snapshot: its RAM a memfd, nothing
// hashed) on disk to outlive hostd, as templates and Spaces keep theirs:
// the RAM written to `memory_out` (holes kept, fsynced), the checksums of
// state, disk and RAM (the RAM's taken from the memfd on a second thread
// while the file is written: each costs ~100 ms for an idle 1 GiB guest),
// state and disk fsynced, then the manifest in saved.dir, naming the RAM
// file `memory_named` (where it will be once its directory is moved into
// place; memory_out where it is not moved). Blocking.
Result<Manifest> persist_fork_snapshot(const Snapshot& saved,
                                       const std::filesystem::path& memory_out,
                                       const std::filesystem::path& memory_named);

// Checks every file the manifest in `dir` names (sizes first, then
// checksums) and builds the Snapshot. What open_snapshot does.
Result<Snapshot> open(const std::filesystem::path& dir);

// The Snapshot the manifest of the snapshot directory `dir` describes
// (nothing is checked).
Snapshot described(const std::filesystem::path& dir, const Manifest& manifest);

} // namespace vesicle::vmm::snapshot
