// Diagnostics of the agent itself. As PID 1 its stderr is /dev/console (the
// VM's serial log); in host test mode it is the test's stderr. Written with
// one write(2) per line so lines from the agent never interleave mid-line.
#pragma once

#include <string_view>

namespace vesicle::agent {

void log_line(std::string_view text);

} // namespace vesicle::agent
