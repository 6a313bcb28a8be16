// A copy of a template's RAM file, made before the fork that needs it.
//
// Why: forking a VM restored share=off (every pool sandbox, every fork
// child) starts with a copy of the file its RAM was restored from
// (Vm::save_fork_snapshot), and for a template's 120-200 MiB that copy was
// most of the fork (BENCHMARKS.md). A template's file never changes, so
// the copy can be made before anyone asks: one waits per template, and
// taking it starts the next on the blocking pool. It costs one more copy
// of each template's data in memory, not one per sandbox.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "vmm/guest_memory.hpp"

namespace vesicle::vmm {

class SpareCopy : public std::enable_shared_from_this<SpareCopy> {
public:
  // Copies of `source`, named `name` (the memfd's name, seen in
  // /proc/<pid>/fd). Nothing is copied until refill().
  static std::shared_ptr<SpareCopy> of(std::weak_ptr<GuestMemory> source, std::string name);

  // Starts making a copy on the blocking pool unless one is ready or under
  // way, or the source is gone.
  void refill();
  // The ready copy (writable, unsealed: the caller lays its pages over it),
  // or null when none is ready yet; either way the next one is started.
  std::shared_ptr<GuestMemory> take();
  // True while a copy waits (for tests and /metrics).
  bool ready() const;

  SpareCopy(const SpareCopy&) = delete;
  SpareCopy& operator=(const SpareCopy&) = delete;

private:
  SpareCopy(std::weak_ptr<GuestMemory> source, std::string name)
      : source_(std::move(source)), name_(std::move(name)) {}
  void made(std::shared_ptr<GuestMemory> copy);

  const std::weak_ptr<GuestMemory> source_;
  const std::string name_;
  mutable std::mutex mutex_;
  std::shared_ptr<GuestMemory> ready_;
  bool making_ = false;
};

} // namespace vesicle::vmm
