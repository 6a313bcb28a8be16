// InfoRequest: what the machine looks like from inside.
#pragma once

#include <sys/types.h>

#include "messages/guest.pb.h"

namespace vesicle::agent {

// Fields that cannot be read (no /proc yet, say) are left 0 or empty.
guest::Info collect_info(pid_t repl_pid);

} // namespace vesicle::agent
