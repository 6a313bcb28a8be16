// disk_mib, enforced by the host: a VM's root disk is a qcow2 overlay over
// the read-only base image whose virtual size is the sandbox's disk_mib.
// However much root in the guest writes, the overlay cannot hold more than
// that (plus qcow2's own metadata, a few MiB), so the host's disk pays at
// most the quota per sandbox. The guest's ext4 fills the disk: the agent
// grows it online (GrowRootFs in messages/guest.proto) at boot and when
// told after the disk grew.
//
// Sizes: the base image is as small as its files allow (images/build.sh),
// so it is the smallest disk_mib there is. A booted VM gets its quota from
// the start (VmConfig::disk_mib; vmm/qcow2_overlay.hpp writes the
// overlay). A VM restored from a template (the pool), a fork snapshot or a
// Space has the size its snapshot's disk had; templates are booted at the
// base image's size, so a pool VM's disk is never larger than any
// sandbox's quota and is grown at hand-out (fit_root_disk: QMP
// block_resize, and the agent grows the filesystem).
#pragma once

#include <utility> // before Boost 1.74's awaitable.hpp, which uses std::exchange without it

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "common/result.hpp"
#include "vmm/json.hpp"
#include "vmm/vmm.hpp"

namespace vesicle {

// The base image images_dir/rootfs.ext4's size in MiB (rounded up); 0 if
// unreadable. The smallest disk a sandbox can have.
std::uint32_t root_disk_mib(const std::filesystem::path& images_dir);

namespace vmm {

// The virtual size of block device `device` in a QMP query-block reply.
Result<std::uint64_t> disk_bytes_in(const json::Value& query_block, const std::string& device);

} // namespace vmm

// Gives the VM's root disk the sandbox's size as it is handed out: sends
// the agent GrowRootFs (the write awaited, not the answer), then grows the
// disk (Vm::grow_disk: QMP query-block, block_resize) in a detached
// coroutine, so the create does not wait for qcow2's flushes; the agent
// waits for the kernel to see the new size and grows the filesystem before
// it reads the next request. A disk that has the size already (a cold boot,
// a fork child, a Space) makes both no-ops. If either then fails, or the
// disk is larger than disk_mib (it is never shrunk), `vm` is destroyed and
// the reason logged: the sandbox would not have the disk its response
// shows. An Error, meant to fail the create, if the request could not even
// be sent.
boost::asio::awaitable<Result<void>> fit_root_disk(std::shared_ptr<vmm::Vm> vm,
                                                   const std::string& id, std::uint32_t disk_mib);

} // namespace vesicle
