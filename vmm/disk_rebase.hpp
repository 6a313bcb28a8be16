// Making a qcow2 disk stand on the base image alone. A sandbox's disk is an
// overlay on a template's or a fork snapshot's disk, which may go (a
// template rebuilt, a family closed) or stack too deep (every fork adds a
// layer). What outlives them (a Space, a saved template) or must stay
// shallow (a deep fork snapshot) is rebased: qemu-img copies into it what
// the layers between hold, and the guest sees the same bytes.
#pragma once

#include <filesystem>
#include <utility> // before Boost 1.74's awaitable.hpp, which uses std::exchange without it

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "common/result.hpp"

namespace vesicle::vmm {

// Rebases the qcow2 image `disk` onto the raw image `base` (`qemu-img
// rebase`, run from `executor`), unless it already stands on `base` or on
// nothing. True when it rebased. qemu-img's output goes to rebase.log beside
// the disk, removed after a success; the Error carries its tail.
boost::asio::awaitable<Result<bool>> rebase_onto(boost::asio::any_io_executor executor,
                                                 const std::filesystem::path& disk,
                                                 const std::filesystem::path& base);

} // namespace vesicle::vmm
