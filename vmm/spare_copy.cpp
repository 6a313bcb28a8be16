#include "vmm/spare_copy.hpp"

#include "common/log.hpp"
#include "vmm/blocking.hpp"
#include "vmm/private_memory.hpp"

namespace vesicle::vmm {

std::shared_ptr<SpareCopy> SpareCopy::of(std::weak_ptr<GuestMemory> source, std::string name) {
  return std::shared_ptr<SpareCopy>(new SpareCopy(std::move(source), std::move(name)));
}

void SpareCopy::refill() {
  {
    const std::lock_guard lock(mutex_);
    if (ready_ || making_ || source_.expired()) return;
    making_ = true;
  }
  // The job holds this object, not the source: a template dropped
  // meanwhile ends the chain at the next refill.
  post_blocking([self = shared_from_this()] {
    auto source = self->source_.lock();
    if (!source) {
      self->made(nullptr);
      return;
    }
    auto copy = copy_memory_data(*source, self->name_);
    if (!copy) {
      // A fork then copies on its own path, as without a spare.
      log::warn("a spare copy of a template's RAM failed",
                {{"name", self->name_}, {"error", copy.error().message()}});
      self->made(nullptr);
      return;
    }
    self->made(std::move(copy).value());
  });
}

void SpareCopy::made(std::shared_ptr<GuestMemory> copy) {
  const std::lock_guard lock(mutex_);
  making_ = false;
  // A template dropped while its copy was made: let the copy go too.
  if (!source_.expired()) ready_ = std::move(copy);
}

std::shared_ptr<GuestMemory> SpareCopy::take() {
  std::shared_ptr<GuestMemory> taken;
  {
    const std::lock_guard lock(mutex_);
    taken = std::move(ready_);
    ready_.reset();
  }
  refill();
  return taken;
}

bool SpareCopy::ready() const {
  const std::lock_guard lock(mutex_);
  return ready_ != nullptr;
}

} // namespace vesicle::vmm
