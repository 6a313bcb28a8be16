// The actor tests' fixture: the sandbox and registry actors on CAF's
// deterministic test scheduler,
// with a fake VMM driver on an io_context polled by the test: every step
// runs to quiescence (both sides) before the test looks, no sleeps.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <thread>
#include <utility> // before Boost 1.74 asio, which needs std::exchange

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <gtest/gtest.h>

#include "actors/ask.hpp"
#include "actors/sandbox/registry.hpp"
#include "actors/sandbox/vm_host.hpp"
#include "tests/hostd/fake_driver.hpp"

using namespace vesicle;
using vesicle::testing::FakeDriver;
using vesicle::testing::FakeVm;

namespace vesicle::actor_test {

inline caf::actor_system_config& test_config(caf::actor_system_config& config) {
  register_caf_types(config);
  config.set("scheduler.policy", caf::atom("testing"));
  config.set("logger.console", caf::atom("none"));
  config.set("logger.file-verbosity", caf::atom("quiet"));
  return config;
}

// Templates go to a directory of this test process, removed at exit.
inline const std::filesystem::path& test_templates_dir() {
  static const std::filesystem::path dir = [] {
    auto path = std::filesystem::temp_directory_path() /
                ("vesicle-actor-test-" + std::to_string(::getpid()));
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(std::filesystem::temp_directory_path() /
                                      ("vesicle-actor-test-" + std::to_string(::getpid())),
                                  ec);
    });
    return path;
  }();
  return dir;
}

inline VmSettings test_vm_settings() {
  VmSettings settings;
  settings.templates_dir = test_templates_dir() / "templates";
  settings.shm_dir = test_templates_dir() / "shm";
  settings.spaces_dir = test_templates_dir() / "spaces";
  settings.runtime_dir = test_templates_dir() / "run";
  std::filesystem::create_directories(settings.runtime_dir);
  return settings;
}

inline ErrorKind code_of(const caf::error& error) {
  EXPECT_EQ(error.category(), kErrorCategory) << to_string(error);
  return static_cast<ErrorKind>(error.code());
}

class ActorTest : public ::testing::Test {
protected:
  ActorTest()
      : system(test_config(config)),
        scheduler(dynamic_cast<caf::scheduler::test_coordinator&>(system.scheduler())),
        driver(io.get_executor()), vms(io.get_executor(), driver, test_vm_settings()) {
    system.await_actors_before_shutdown(false);
    start_registry(3);
  }
  ~ActorTest() override {
    if (registry) caf::anon_send_exit(registry, caf::exit_reason::user_shutdown);
    // Let every VM's coroutine finish before the driver goes away.
    vms.destroy_all();
    settle();
  }

  void start_registry(std::uint32_t max) {
    RegistrySettings settings;
    settings.max_sandboxes = max;
    registry = spawn_registry(system, vms, settings);
    settle();
  }

  // Runs the asio side and the actors until neither has anything to do.
  void settle() {
    for (int round = 0; round < 10'000; ++round) {
      io.restart();
      auto work = io.poll();
      work += scheduler.run();
      if (work == 0) return;
    }
    ADD_FAILURE() << "the actors and the asio side never went quiet";
  }

  // Settles until `done` holds, for work that leaves both sides for a
  // while (the template check runs on its own thread).
  template <class Predicate> bool settle_until(Predicate done) {
    for (int round = 0; round < 500; ++round) {
      settle();
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  // Asks the registry through the same bridge hostd's handlers use.
  template <class R, class... Ts> caf::expected<R> ask_registry(Ts... args) {
    return ask_actor<R>(registry, args...);
  }
  template <class R, class Handle, class... Ts>
  caf::expected<R> ask_actor(Handle actor, Ts... args) {
    std::optional<caf::expected<R>> answer;
    boost::asio::co_spawn(
        io,
        [&]() -> boost::asio::awaitable<void> {
          answer = co_await ask<R>(system, actor, std::chrono::seconds(5), args...);
        },
        boost::asio::detached);
    // Most answers come within one settle; some wait for work on another
    // thread (a freeze or resume hashes files on VmHost's checker thread).
    if (!settle_until([&] { return answer.has_value(); })) {
      ADD_FAILURE() << "no answer: the request hangs";
      return caf::make_error(caf::sec::request_timeout);
    }
    return std::move(*answer);
  }

  caf::expected<SandboxInfo> create(const std::string& owner = "alice") {
    SandboxSpec spec;
    spec.memory_mib = 512;
    return ask_registry<SandboxInfo>(create_atom::value, owner, spec);
  }
  // Starts a create without waiting for its answer (for held boots).
  std::shared_ptr<std::optional<caf::expected<SandboxInfo>>> create_async(std::string owner) {
    auto answer = std::make_shared<std::optional<caf::expected<SandboxInfo>>>();
    boost::asio::co_spawn(
        io,
        [this, answer, owner]() -> boost::asio::awaitable<void> {
          // A named spec, not SandboxSpec{}: g++ 12 destroys a braced
          // temporary passed by value to a coroutine twice.
          SandboxSpec spec;
          *answer = co_await ask<SandboxInfo>(system, registry, std::chrono::seconds(60),
                                              create_atom::value, owner, spec);
        },
        boost::asio::detached);
    settle();
    return answer;
  }
  SandboxInfoList list(const std::string& owner = "alice") {
    auto result = ask_registry<SandboxInfoList>(list_atom::value, owner);
    EXPECT_TRUE(result) << to_string(result.error());
    return result ? *result : SandboxInfoList{};
  }
  CapacityInfo capacity() {
    auto result = ask_registry<CapacityInfo>(capacity_atom::value);
    EXPECT_TRUE(result);
    return result ? *result : CapacityInfo{};
  }

  caf::actor_system_config config;
  caf::actor_system system;
  caf::scheduler::test_coordinator& scheduler;
  boost::asio::io_context io;
  FakeDriver driver;
  VmHost vms;
  registry_actor registry;
};

// The reaper as the registry runs it, on a clock the test moves, and the
// per-key concurrency cap (issue 6).
class ReaperRegistryTest : public ActorTest {
protected:
  ReaperRegistryTest() {
    caf::anon_send_exit(registry, caf::exit_reason::user_shutdown);
    settle();
    RegistrySettings settings;
    settings.max_sandboxes = 8;
    settings.reaper_settings.clock = [this] { return now_ms; };
    settings.reaper_settings.timers = false;
    // The gates time operations on the same clock.
    vms.op_gates()->set_clock([this] { return now_ms; });
    registry = spawn_registry(system, vms, settings);
    settle();
  }

  caf::expected<SandboxInfo> create_with(std::uint32_t idle_s, std::uint32_t lifetime_s,
                                         bool persistent = false) {
    SandboxSpec spec;
    spec.memory_mib = 512;
    spec.idle_timeout_s = idle_s;
    spec.max_lifetime_s = lifetime_s;
    spec.persistent = persistent;
    return ask_registry<SandboxInfo>(create_atom::value, std::string("alice"), spec);
  }
  // Moves the clock and lets the reaper look.
  void advance_s(double seconds) {
    now_ms += static_cast<std::int64_t>(seconds * 1000);
    caf::anon_send(registry, reap_atom::value);
    settle();
  }
  SandboxInfo lookup(const std::string& id) {
    auto info = ask_registry<SandboxInfo>(lookup_atom::value, std::string("alice"), id);
    EXPECT_TRUE(info) << to_string(info.error());
    return info ? *info : SandboxInfo{};
  }

  std::int64_t now_ms = unix_now_ms();
};

} // namespace vesicle::actor_test
