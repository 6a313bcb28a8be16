// The operations (exec, upload, download) running on each sandbox's VM,
// counted where hostd's I/O thread and the sandbox actor both reach them.
//
// An operation may begin only while its sandbox is ready, and a fork, merge
// or freeze may hold a sandbox only when none runs. The sandbox actor decides
// both, but asking it costs every exec a round trip through two actors (the
// registry's ownership check, the sandbox's phase) and a temporary requester:
// most of hostd's CPU per exec, measured. So each sandbox has a gate, open
// exactly while its actor is in phase ready: hostd enters and leaves it under
// a mutex, without a message, and the actor closes it only when nothing runs
// (or, leaving ready for good, at once). A caller that finds the gate closed
// asks the actor as before, which waits out a fork or says why not.
//
// The gates are also what the reaper reads as activity: how many operations
// run and when the last one began or ended, on the reaper's clock.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace vesicle {

struct OpActivity {
  std::size_t running = 0;
  std::int64_t last_active_ms = 0; // when an operation last began or ended; 0: never
};

class OpGate {
public:
  explicit OpGate(std::function<std::int64_t()> clock) : clock_(std::move(clock)) {}

  // An operation begins if the gate is open; false if it is not.
  bool try_enter();
  void leave();

  // The sandbox actor's side.
  void open();
  // Closes the gate if no operation runs; false (still open) if one does.
  bool close_if_idle();
  // Closes it whatever runs: the sandbox is leaving ready (dying, deleted);
  // what runs ends on its own.
  void close();

  OpActivity activity() const;

private:
  mutable std::mutex mutex_;
  std::function<std::int64_t()> clock_;
  bool open_ = false;
  std::size_t running_ = 0;
  std::int64_t last_active_ms_ = 0;
};

// Every sandbox's gate by id, with the key that owns it: hostd finds a gate
// only with the owner's key, as the registry would check.
class OpGates {
public:
  OpGates();

  // Unix milliseconds by default; a test sets the clock its reaper uses.
  void set_clock(std::function<std::int64_t()> clock);

  std::shared_ptr<OpGate> add(const std::string& id, const std::string& owner);
  // Drops the entry if it is still `gate` (a sandbox's actor stopping).
  void remove(const std::string& id, const std::shared_ptr<OpGate>& gate);

  // The gate of `id` entered, if `owner` owns it and it is open; null
  // otherwise (then the registry gives the answer).
  std::shared_ptr<OpGate> enter(const std::string& id, const std::string& owner) const;
  // Null if `id` has no gate.
  std::shared_ptr<OpGate> find(const std::string& id) const;
  std::optional<OpActivity> activity(const std::string& id) const;

private:
  struct Entry {
    std::string owner;
    std::shared_ptr<OpGate> gate;
  };
  mutable std::mutex mutex_;
  std::function<std::int64_t()> clock_;
  std::map<std::string, Entry> entries_;
};

} // namespace vesicle
