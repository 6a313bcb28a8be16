// The root filesystem's size limit (SetDiskLimit in messages/guest.proto).
//
// Why ext4's reserved_clusters: the guest's disk is a qcow2 overlay whose
// size is the base image's, so the device cannot be made smaller than the
// image, and ext4 cannot shrink while mounted. reserved_clusters (writable
// in sysfs, any value below the filesystem's cluster count) holds clusters
// back from every allocation except the filesystem's own metadata
// bookkeeping: unlike the root reserve (s_r_blocks_count), root may not use
// them. So reserving (fs size - limit) makes ENOSPC arrive at the limit for
// every process, takes effect at once, costs one write, and works the same
// in a cold-booted VM and in one restored from a template snapshot.
// Root inside the guest can write the sysfs file back; the host's bound is
// the disk's size, which the guest cannot change (security.md: the host is
// untouched either way).
#pragma once

#include <cstdint>
#include <string>

#include "common/result.hpp"

namespace vesicle::agent {

struct DiskLimitApplied {
  std::uint64_t fs_bytes = 0;          // the filesystem's size
  std::uint64_t reserved_clusters = 0; // what was written
};

// How many clusters to reserve so that at most `max_bytes` of a filesystem
// of `total_clusters` clusters of `cluster_bytes` can be allocated, given
// the kernel's own reservation `base_reserved` (kept on top). Never reaches
// total_clusters (the kernel refuses that).
std::uint64_t clusters_to_reserve(std::uint64_t max_bytes, std::uint64_t total_clusters,
                                  std::uint64_t cluster_bytes, std::uint64_t base_reserved);

// Applies the limit to the filesystem mounted at `mount_point` ("/").
Result<DiskLimitApplied> apply_disk_limit(const std::string& mount_point, std::uint64_t max_bytes);

} // namespace vesicle::agent
