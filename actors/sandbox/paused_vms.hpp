// Why each sandbox's VM is paused by the host, where the API reads it.
//
// A VM whose disk finds the host's filesystem full is paused until there is
// room (vmm::VmConfig::on_pause); its calls fail with that reason meanwhile.
// Its sandbox stays "ready" to the actors (nothing it holds is lost, and it
// runs on by itself), so the reason is kept here rather than in their state:
// the VM's executor writes it, hostd's I/O thread reads it for a sandbox's
// status, under a mutex.
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace vesicle {

class PausedVms {
public:
  // `why` set: sandbox `id`'s VM is paused for that reason; nullopt: it runs.
  void set(const std::string& id, const std::optional<std::string>& why);
  // Why sandbox `id`'s VM is paused; empty while it runs.
  std::string why(const std::string& id) const;

private:
  mutable std::mutex mutex_;
  std::map<std::string, std::string> paused_;
};

} // namespace vesicle
