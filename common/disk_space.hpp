// How much a filesystem can still take, as hostd's unprivileged writers
// (QEMU writing a disk overlay) see it.
#pragma once

#include <cstdint>
#include <filesystem>

#include "common/result.hpp"

namespace vesicle {

// Bytes an unprivileged writer may still write on the filesystem holding
// `path` (statvfs: f_bavail blocks of f_frsize). A path that does not exist
// yet is answered for its nearest existing ancestor, the filesystem it will
// be made on. An Error says why when none can be read.
Result<std::uint64_t> available_bytes(const std::filesystem::path& path);

} // namespace vesicle
