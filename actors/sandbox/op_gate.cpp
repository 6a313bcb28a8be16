#include "actors/sandbox/op_gate.hpp"

#include <chrono>

namespace vesicle {

bool OpGate::try_enter() {
  std::lock_guard lock(mutex_);
  if (!open_) return false;
  ++running_;
  last_active_ms_ = clock_();
  return true;
}

void OpGate::leave() {
  std::lock_guard lock(mutex_);
  if (running_ > 0) --running_;
  last_active_ms_ = clock_();
}

void OpGate::open() {
  std::lock_guard lock(mutex_);
  open_ = true;
}

bool OpGate::close_if_idle() {
  std::lock_guard lock(mutex_);
  if (running_ > 0) return false;
  open_ = false;
  return true;
}

void OpGate::close() {
  std::lock_guard lock(mutex_);
  open_ = false;
}

OpActivity OpGate::activity() const {
  std::lock_guard lock(mutex_);
  return {running_, last_active_ms_};
}

OpGates::OpGates() {
  clock_ = [] {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
  };
}

void OpGates::set_clock(std::function<std::int64_t()> clock) {
  std::lock_guard lock(mutex_);
  clock_ = std::move(clock);
}

std::shared_ptr<OpGate> OpGates::add(const std::string& id, const std::string& owner) {
  std::lock_guard lock(mutex_);
  auto gate = std::make_shared<OpGate>(clock_);
  entries_.insert_or_assign(id, Entry{owner, gate});
  return gate;
}

void OpGates::remove(const std::string& id, const std::shared_ptr<OpGate>& gate) {
  std::lock_guard lock(mutex_);
  auto found = entries_.find(id);
  if (found != entries_.end() && found->second.gate == gate) entries_.erase(found);
}

std::shared_ptr<OpGate> OpGates::enter(const std::string& id, const std::string& owner) const {
  std::shared_ptr<OpGate> gate;
  {
    std::lock_guard lock(mutex_);
    auto found = entries_.find(id);
    if (found == entries_.end() || found->second.owner != owner) return nullptr;
    gate = found->second.gate;
  }
  return gate->try_enter() ? gate : nullptr;
}

std::shared_ptr<OpGate> OpGates::find(const std::string& id) const {
  std::lock_guard lock(mutex_);
  auto found = entries_.find(id);
  return found == entries_.end() ? nullptr : found->second.gate;
}

std::optional<OpActivity> OpGates::activity(const std::string& id) const {
  auto gate = find(id);
  if (!gate) return std::nullopt;
  return gate->activity();
}

} // namespace vesicle
