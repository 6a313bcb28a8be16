// vesicle's embedding API: the sandbox runtime inside your own program,
// without hostd's HTTP. The runtime is the one hostd serves (the same VMs,
// pools, network, registry and configuration); a sandbox made here is a
// microVM with a guest agent, a persistent Python REPL and bash.
//
//   vesicle::config::HostdConfig config;             // messages/config.proto
//   config.set_images_dir("/var/lib/my-service/images");
//   config.set_state_dir("/var/lib/my-service/vesicle");
//   auto started = vesicle::Runtime::start(config);  // or start(system, config)
//   if (!started) ... started.error().message() ...
//   vesicle::Runtime& runtime = **started;
//   auto sandbox = co_await runtime.create();         // Result<SandboxInfo>
//   auto out = co_await runtime.exec_python(sandbox->id, "print(6*7)");
//   auto same = runtime.wait(runtime.create());       // blocking, from a plain thread
//
// Threads: the runtime runs its VMs on a thread of its own. The calls
// return asio awaitables; co_await them from a coroutine on any executor
// (it resumes there), or block on one with wait() from any thread but the
// runtime's. Errors come back as vesicle::Error (common/result.hpp). All
// sandboxes of a Runtime belong to one owner ("embedded"); there are no
// API keys or tiers, max_sandboxes is the limit.
//
// CMake: find_package(vesicle REQUIRED) and link vesicle::runtime.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <caf/actor_system.hpp>

#include "common/result.hpp"
#include "messages/api.pb.h"
#include "messages/caf_types.hpp"
#include "messages/config.pb.h"

namespace vesicle {

// What one exec printed and how it ended.
struct ExecOutput {
  std::string stdout_text;
  std::string stderr_text;
  // Python: repr() of each cell's trailing expression (none for print()).
  std::vector<std::string> results;
  // Python: the exception the cell raised (empty name: none).
  std::string error_name;
  std::string error_value;
  std::string error_traceback;
  // bash: the exit status; Python: 0, or 1 when the cell raised.
  std::int32_t exit_code = 0;
  std::int32_t signal = 0; // bash: the signal that ended it
  bool timed_out = false;
  bool truncated = false; // output past the agent's limit was dropped
  std::chrono::microseconds duration{0};
};

struct BashCommand {
  std::string command;
  std::map<std::string, std::string> env;
  std::string cwd; // empty: the sandbox's home
};

class Runtime {
public:
  // Starts the runtime on the embedder's actor system, whose configuration
  // must have had register_caf_types() (messages/caf_types.hpp) applied.
  // The system must outlive the Runtime. `config` is hostd's configuration
  // (messages/config.proto); unset fields get hostd's defaults, and
  // `listen`, keys and tiers are ignored (there is no HTTP). Prepares the
  // host as hostd does (directories, images check, leftovers of a killed
  // run with the same runtime_dir reclaimed) and starts the pools.
  static Result<std::unique_ptr<Runtime>> start(caf::actor_system& system,
                                                config::HostdConfig config);
  // The same on an actor system of its own, set up as hostd sets up its.
  static Result<std::unique_ptr<Runtime>> start(config::HostdConfig config);

  // Destroys every sandbox (freezing persistent ones into Spaces when
  // Spaces are on, as hostd does on shutdown) and stops the runtime's
  // thread and actors. Not from the runtime's own thread.
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // The configuration in force (with the defaults filled in).
  const config::HostdConfig& config() const;

  // A new sandbox, once its VM answers. `request` has the fields of POST
  // /v1/sandboxes (messages/api.proto), checked and defaulted the same way
  // (default_vcpus, default_memory_mib, egress as the network section
  // says). A request matching a pool (template, vcpus, memory_mib) takes a
  // warm VM; any other cold boots.
  boost::asio::awaitable<Result<SandboxInfo>> create(api::CreateSandboxRequest request = {});

  boost::asio::awaitable<Result<SandboxInfo>> info(std::string id);
  boost::asio::awaitable<Result<SandboxInfoList>> list();

  // Runs a Python cell in the sandbox's REPL (its state persists between
  // cells), or a bash command. `timeout` zero: the agent's default.
  boost::asio::awaitable<Result<ExecOutput>> exec_python(std::string id, std::string code,
                                                         std::chrono::seconds timeout = {});
  boost::asio::awaitable<Result<ExecOutput>> exec_bash(std::string id, BashCommand command,
                                                       std::chrono::seconds timeout = {});

  // `n` children, each starting from the sandbox's state at this moment;
  // the parent runs on. All or nothing.
  boost::asio::awaitable<Result<SandboxInfoList>> fork(std::string id, std::uint32_t n = 1);

  // Saves the sandbox's VM into a Space (it stays listed, frozen), and a new
  // sandbox from a Space. Needs spaces_dir (on by default).
  boost::asio::awaitable<Result<SpaceInfo>> freeze(std::string id);
  boost::asio::awaitable<Result<SandboxInfo>> resume(std::string space_id, bool persistent = false);

  // Returns once the VM and its files are gone (a frozen sandbox's record
  // goes; its Space stays).
  boost::asio::awaitable<Result<void>> destroy(std::string id);

  // Blocks until `call` (one of the calls above) finishes. From any thread
  // but the runtime's own (there it answers an Error instead of hanging).
  template <class T> Result<T> wait(boost::asio::awaitable<Result<T>> call) {
    std::optional<Result<T>> out;
    auto failed = block_on(store(std::move(call), out));
    if (!failed) return std::move(failed).error();
    return std::move(*out);
  }

private:
  class Impl;
  explicit Runtime(std::unique_ptr<Impl> impl);
  template <class T>
  static boost::asio::awaitable<void> store(boost::asio::awaitable<Result<T>> call,
                                            std::optional<Result<T>>& out) {
    out.emplace(co_await std::move(call));
  }
  Result<void> block_on(boost::asio::awaitable<void> call);

  std::unique_ptr<Impl> impl_;
};

} // namespace vesicle
