// The E2B table on disk: <state_dir>/e2b-sandboxes.json (0600, written to a
// temporary file, synced and renamed over the old one, so a crash leaves the
// old table or the new, never half). Only paused sandboxes are kept: their
// Spaces outlive hostd, while a running sandbox's VM ends with it. It holds
// the sandboxes' envd and traffic tokens, which E2B's connect hands out
// again, hence 0600 in hostd's own state directory.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "common/result.hpp"
#include "hostd/e2b.hpp"

namespace vesicle::hostd::e2b {

std::string table_path(const std::string& state_dir);

// Writes the paused sandboxes of `sandboxes` to `path`.
Result<void> save_table(const std::string& path,
                        const std::map<std::string, std::shared_ptr<Sandbox>>& sandboxes);

// The sandboxes saved at `path` (paused, as saved); none when the file does
// not exist. An unreadable or malformed file is an Error naming it.
Result<std::map<std::string, std::shared_ptr<Sandbox>>> load_table(const std::string& path);

} // namespace vesicle::hostd::e2b
