// disk_mib, enforced: the root disk every VM gets is the base image's size
// (a qcow2 overlay over it, in a cold boot and in a template restore alike),
// so a sandbox gets min(disk_mib, that size), and below that size its
// agent limits the filesystem (SetDiskLimit, guest/agent/disk_limit.hpp).
// Growing a disk past the base image would need the overlay resized and
// the filesystem grown online; not built (README, "Limits").
#pragma once

#include <utility> // before Boost 1.74's awaitable.hpp, which uses std::exchange without it

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include <boost/asio/awaitable.hpp>

#include "common/result.hpp"
#include "vmm/vmm.hpp"

namespace vesicle {

// The base image images_dir/rootfs.ext4's size in MiB; 0 if unreadable.
std::uint32_t root_disk_mib(const std::filesystem::path& images_dir);

// Has the VM's agent limit its root filesystem to `disk_mib` when that is
// below `root_mib` (the disk's size); nothing to do otherwise. Returns once
// the request is written (the agent applies it before the next request);
// if the agent then fails to apply it, `vm` is destroyed, since a sandbox
// must not run without the limit its response shows. An Error if it could
// not even be sent: fail the create with it.
boost::asio::awaitable<Result<void>> limit_root_disk(std::shared_ptr<vmm::Vm> vm,
                                                     const std::string& id, std::uint32_t disk_mib,
                                                     std::uint32_t root_mib);

} // namespace vesicle
