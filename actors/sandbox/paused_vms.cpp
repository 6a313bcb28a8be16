#include "actors/sandbox/paused_vms.hpp"

namespace vesicle {

void PausedVms::set(const std::string& id, const std::optional<std::string>& why) {
  std::lock_guard lock(mutex_);
  if (why)
    paused_[id] = *why;
  else
    paused_.erase(id);
}

std::string PausedVms::why(const std::string& id) const {
  std::lock_guard lock(mutex_);
  auto found = paused_.find(id);
  return found == paused_.end() ? std::string() : found->second;
}

} // namespace vesicle
