// An empty qcow2 overlay over a backing image, written directly instead of
// by running `qemu-img create`. Every restore (pool refill, pool miss, fork
// child, the parent after a fork) makes one, and under TCG spawning
// qemu-img costs tens of milliseconds of a core on that path; writing the
// four clusters below costs microseconds.
//
// The file is what `qemu-img create -f qcow2 -b BACKING -F FORMAT` writes
// (qcow2 version 3, 64 KiB clusters, 16-bit refcounts, no features):
//   cluster 0  header, the backing-format extension, the backing file name
//   cluster 1  refcount table: one entry, the block in cluster 2
//   cluster 2  refcount block: clusters 0-3 used once each
//   cluster 3  L1 table, all zero (nothing allocated: every read falls
//              through to the backing image)
// The format is specified in QEMU's docs/interop/qcow2.txt.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "common/result.hpp"

namespace vesicle::vmm {

// Creates `overlay` (O_EXCL, mode 0600 under hostd's umask) as an empty
// qcow2 image of `size_bytes` over `backing`, an image of `format` ("raw"
// or "qcow2"). size_bytes 0 means the backing image's own virtual size.
// `backing` is written as given (QEMU resolves a relative name against the
// overlay's directory). On failure nothing is left at `overlay`.
// `in_place`: `overlay` exists and keeps its inode (a waiting QEMU holds it
// open, ForkLanding); its bytes are replaced, and a failure leaves it
// half-written.
Result<void> write_qcow2_overlay(const std::filesystem::path& overlay, const std::string& backing,
                                 const std::string& format, std::uint64_t size_bytes,
                                 bool in_place = false);

// The virtual size of an image: a raw file's length, or a qcow2 header's
// size field.
Result<std::uint64_t> image_virtual_size(const std::filesystem::path& image,
                                         const std::string& format);

} // namespace vesicle::vmm
