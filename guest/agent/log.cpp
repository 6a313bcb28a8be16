#include "guest/agent/log.hpp"

#include <unistd.h>

#include <string>

namespace vesicle::agent {

void log_line(std::string_view text) {
  std::string line = "vesicle-agent: ";
  line.append(text);
  line.push_back('\n');
  // Best effort: a full or closed console must never stall or kill the agent.
  std::size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

} // namespace vesicle::agent
