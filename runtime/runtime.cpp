// The embedding API (include/vesicle/runtime.hpp): a RuntimeCore, the same
// assembly hostd serves over HTTP, on an io_context and thread of its own.
// Every call hops onto that thread, does there what hostd's handler does
// (the registry decides, the agent client runs the code), and hops back.
#include "vesicle/runtime.hpp"

#include <future>
#include <limits>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <caf/actor_system_config.hpp>

#include "actors/ask.hpp"
#include "common/log.hpp"
#include "hostd/api.hpp"
#include "hostd/config.hpp"
#include "hostd/runtime_core.hpp"
#include "vmm/agent_client.hpp"
#include "vmm/vmm.hpp"

namespace vesicle {

namespace {

// Every sandbox made through the embedding API belongs to this owner (the
// registry keys ownership by API key id; there are no keys here).
constexpr const char* kOwner = "embedded";
// ... and that owner has no cap of its own (no tiers): the runtime's
// max_sandboxes is the only limit on forks and resumes.
constexpr std::uint32_t kNoOwnerCap = std::numeric_limits<std::uint32_t>::max();

// An actor's answer (a refusal, a timeout) as the Error the caller gets.
Error actor_error(const caf::error& error, std::string operation, std::string subject) {
  // The kind travels as it is; the operation and subject say what the
  // embedder asked for.
  auto failed = to_error(error);
  failed.operation = std::move(operation);
  failed.subject = std::move(subject);
  return failed;
}

void collect(ExecOutput& out, const guest::Event& event) {
  switch (event.kind_case()) {
  case guest::Event::kStdout:
    out.stdout_text += event.stdout();
    break;
  case guest::Event::kStderr:
    out.stderr_text += event.stderr();
    break;
  case guest::Event::kResult:
    out.results.push_back(event.result());
    break;
  case guest::Event::kError:
    out.error_name = event.error().name();
    out.error_value = event.error().value();
    out.error_traceback = event.error().traceback();
    break;
  default:
    break;
  }
}

// An actor system the runtime makes for itself, with its configuration:
// CAF 0.17's actor_system refers to its config for its whole life.
struct OwnedActorSystem {
  static caf::actor_system_config& configured(caf::actor_system_config& config) {
    hostd::configure_actor_system(config);
    return config;
  }
  caf::actor_system_config config;
  caf::actor_system system{configured(config)};
};

} // namespace

class Runtime::Impl {
public:
  Impl(caf::actor_system& system, const config::HostdConfig& config)
      : work_(io_.get_executor()), driver_(vmm::make_qemu_driver(io_.get_executor())),
        core(io_.get_executor(), system, *driver_, config) {}

  ~Impl() {
    if (thread_.joinable()) {
      work_.reset();
      io_.stop();
      thread_.join();
    }
  }

  // Keeps the actor system the runtime made for itself until the end.
  void adopt_system(std::unique_ptr<OwnedActorSystem> system) { own_system_ = std::move(system); }

  asio::io_context& io() { return io_; }

  void run() {
    thread_ = std::thread([this] {
      for (;;) {
        try {
          io_.run();
          return;
        } catch (const std::exception& e) {
          log::error("a runtime task failed", {{"error", e.what()}});
        }
      }
    });
  }

  // Runs `call` on the runtime's thread and resumes the caller on its own
  // executor with the result. (Not co_spawn with use_awaitable: that needs
  // a default-constructible result.)
  template <class T> asio::awaitable<Result<T>> on_runtime(asio::awaitable<Result<T>> call) {
    if (io_.get_executor().running_in_this_thread()) co_return co_await std::move(call);
    auto caller = co_await asio::this_coro::executor;
    auto initiate = [&](auto handler) {
      // One owner for the move-only handler, whichever thread ends up
      // calling it.
      auto shared = std::make_shared<decltype(handler)>(std::move(handler));
      auto run = [call = std::move(call), shared, caller]() mutable -> asio::awaitable<void> {
        std::optional<Result<T>> out;
        try {
          out.emplace(co_await std::move(call));
        } catch (const std::exception& e) {
          out.emplace(make_error("runtime call", std::string("failed: ") + e.what()));
        } catch (...) {
          // Whatever it was, the caller must not wait forever.
          out.emplace(make_error("runtime call", "failed with an exception of unknown type"));
        }
        asio::post(caller, [shared, out = std::move(*out)]() mutable {
          auto resume = std::move(*shared);
          resume(std::move(out));
        });
      };
      asio::co_spawn(io_, std::move(run), asio::detached);
    };
    co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(Result<T>)>(
        initiate, asio::use_awaitable);
  }

  asio::awaitable<Result<SandboxInfo>> create(api::CreateSandboxRequest request) {
    auto spec = hostd::sandbox_spec(request, core.config());
    if (!spec) co_return std::move(spec).error().with_context("create sandbox");
    if (auto fits = hostd::check_disk_fits_image(spec->disk_mib, core.vms().root_disk_mib()); !fits)
      co_return std::move(fits).error().with_context("create sandbox");
    co_return co_await ask_registry<SandboxInfo>("create sandbox", "", core.create_timeout(),
                                                 create_atom::value, std::string(kOwner), *spec);
  }

  asio::awaitable<Result<SandboxInfo>> info(std::string id) {
    co_return co_await ask_registry<SandboxInfo>("look up sandbox", id, core.actor_timeout(),
                                                 lookup_atom::value, std::string(kOwner), id);
  }

  asio::awaitable<Result<SandboxInfoList>> list() {
    co_return co_await ask_registry<SandboxInfoList>("list sandboxes", "", core.actor_timeout(),
                                                     list_atom::value, std::string(kOwner));
  }

  // The exec flow of hostd's POST .../exec without the stream: lease the
  // VM, run the code, collect its events; a VM found dead is recorded so.
  asio::awaitable<Result<ExecOutput>> exec(std::string id, bool python,
                                           guest::ExecPython python_request,
                                           guest::ExecBash bash_request) {
    auto lease = co_await core.lease(kOwner, id);
    if (!lease) co_return actor_error(lease.error(), "exec", id);
    if (!lease->usable()) co_return co_await died(*lease);
    auto out = std::make_shared<ExecOutput>();
    vmm::ExecEventSink sink = [out](const guest::Event& event) { collect(*out, event); };
    auto& agent = lease->vm().agent();
    // No `?:` around co_await: g++ 12 miscompiles it (double free).
    Result<guest::Exit> exit = make_error("exec", "not started");
    if (python)
      exit = co_await agent.exec_python(std::move(python_request), sink);
    else
      exit = co_await agent.exec_bash(std::move(bash_request), sink);
    if (!exit) {
      if (vmm::is_channel_closed(exit.error()) || !lease->usable()) co_return co_await died(*lease);
      co_return std::move(exit).error().with_context("running the code in sandbox " + id);
    }
    out->exit_code = exit->exit_code();
    out->signal = exit->signal();
    out->timed_out = exit->timed_out();
    out->truncated = exit->truncated();
    out->duration = std::chrono::microseconds(exit->duration_us());
    co_return std::move(*out);
  }

  asio::awaitable<Result<SandboxInfoList>> fork(std::string id, std::uint32_t n) {
    if (n < 1 || n > kMaxForkChildren)
      co_return make_error("fork",
                           "n: a fork makes 1 to " + std::to_string(kMaxForkChildren) +
                               " children, got " + std::to_string(n),
                           id);
    co_return co_await ask_registry<SandboxInfoList>("fork", id, core.create_timeout(),
                                                     fork_atom::value, std::string(kOwner), id, n,
                                                     kNoOwnerCap);
  }

  asio::awaitable<Result<SpaceInfo>> freeze(std::string id) {
    co_return co_await ask_registry<SpaceInfo>("freeze", id, core.create_timeout(),
                                               freeze_atom::value, std::string(kOwner), id);
  }

  asio::awaitable<Result<SandboxInfo>> resume(std::string space_id, bool persistent) {
    co_return co_await ask_registry<SandboxInfo>("resume", space_id, core.create_timeout(),
                                                 resume_atom::value, std::string(kOwner), space_id,
                                                 persistent, kNoOwnerCap, SecretValues{});
  }

  asio::awaitable<Result<void>> destroy(std::string id) {
    auto done = co_await ask_registry<done_atom>("destroy", id, core.create_timeout(),
                                                 destroy_atom::value, std::string(kOwner), id);
    if (!done) co_return std::move(done).error();
    co_return Result<void>{};
  }

  caf::actor_system& system() { return core.system(); }

private:
  // Asks the registry; a refusal (or no answer) becomes the caller's Error
  // about `operation` on `subject`.
  template <class R, class... Ts>
  asio::awaitable<Result<R>> ask_registry(std::string operation, std::string subject,
                                          caf::timespan timeout, Ts... args) {
    auto reply = co_await ask<R>(system(), core.registry(), timeout, std::move(args)...);
    if (!reply) co_return actor_error(reply.error(), std::move(operation), std::move(subject));
    co_return std::move(*reply);
  }

  asio::awaitable<Error> died(const hostd::VmLease& lease) {
    auto reason = co_await core.record_death(lease.owner(), lease.id(), lease.vm_pointer());
    co_return make_error(
        "exec", "sandbox_died: the sandbox died: " + reason + "; destroy it and create a new one",
        lease.id());
  }

  // Declared in the order they must be built; torn down in reverse, so the
  // actor system (when the runtime made it) goes last.
  std::unique_ptr<OwnedActorSystem> own_system_;
  asio::io_context io_{1};
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::unique_ptr<vmm::Driver> driver_;
  std::thread thread_;

public:
  hostd::RuntimeCore core;
};

Runtime::Runtime(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<Runtime>> Runtime::start(caf::actor_system& system,
                                                config::HostdConfig config) {
  hostd::apply_defaults(config);
  if (auto valid = hostd::validate(config); !valid)
    return std::move(valid).error().with_context("checking the runtime's configuration");
  if (auto prepared = hostd::prepare_host(config); !prepared) return prepared.error();
  auto impl = std::make_unique<Impl>(system, config);
  if (auto started = impl->core.start(); !started) return started.error();
  impl->run();
  return std::unique_ptr<Runtime>(new Runtime(std::move(impl)));
}

Result<std::unique_ptr<Runtime>> Runtime::start(config::HostdConfig config) {
  auto system = std::make_unique<OwnedActorSystem>();
  auto runtime = start(system->system, std::move(config));
  if (!runtime) return runtime;
  // The system is kept by the Impl so it is torn down after everything that
  // uses it.
  (*runtime)->impl_->adopt_system(std::move(system));
  return runtime;
}

Runtime::~Runtime() {
  if (!impl_) return;
  auto stopped = block_on(impl_->core.shutdown());
  if (!stopped) log::warn("runtime shutdown failed", {{"error", stopped.error().message()}});
  impl_->core.stop_actors_and_wait();
}

const config::HostdConfig& Runtime::config() const {
  return impl_->core.config();
}

asio::awaitable<Result<SandboxInfo>> Runtime::create(api::CreateSandboxRequest request) {
  co_return co_await impl_->on_runtime(impl_->create(std::move(request)));
}

asio::awaitable<Result<SandboxInfo>> Runtime::info(std::string id) {
  co_return co_await impl_->on_runtime(impl_->info(std::move(id)));
}

asio::awaitable<Result<SandboxInfoList>> Runtime::list() {
  co_return co_await impl_->on_runtime(impl_->list());
}

asio::awaitable<Result<ExecOutput>> Runtime::exec_python(std::string id, std::string code,
                                                         std::chrono::seconds timeout) {
  if (code.empty()) co_return make_error("exec", "code: required; give the Python cell to run", id);
  guest::ExecPython request;
  request.set_code(std::move(code));
  request.set_timeout_ms(static_cast<std::uint32_t>(timeout.count() * 1000));
  co_return co_await impl_->on_runtime(
      impl_->exec(std::move(id), true, std::move(request), guest::ExecBash{}));
}

asio::awaitable<Result<ExecOutput>> Runtime::exec_bash(std::string id, BashCommand command,
                                                       std::chrono::seconds timeout) {
  if (command.command.empty())
    co_return make_error("exec", "command: required; give the bash command to run", id);
  guest::ExecBash request;
  request.set_command(std::move(command.command));
  request.mutable_env()->insert(command.env.begin(), command.env.end());
  request.set_cwd(std::move(command.cwd));
  request.set_timeout_ms(static_cast<std::uint32_t>(timeout.count() * 1000));
  co_return co_await impl_->on_runtime(
      impl_->exec(std::move(id), false, guest::ExecPython{}, std::move(request)));
}

asio::awaitable<Result<SandboxInfoList>> Runtime::fork(std::string id, std::uint32_t n) {
  co_return co_await impl_->on_runtime(impl_->fork(std::move(id), n));
}

asio::awaitable<Result<SpaceInfo>> Runtime::freeze(std::string id) {
  co_return co_await impl_->on_runtime(impl_->freeze(std::move(id)));
}

asio::awaitable<Result<SandboxInfo>> Runtime::resume(std::string space_id, bool persistent) {
  co_return co_await impl_->on_runtime(impl_->resume(std::move(space_id), persistent));
}

asio::awaitable<Result<void>> Runtime::destroy(std::string id) {
  co_return co_await impl_->on_runtime(impl_->destroy(std::move(id)));
}

Result<void> Runtime::block_on(asio::awaitable<void> call) {
  if (impl_->io().get_executor().running_in_this_thread())
    return make_error("wait", "called on the runtime's own thread, where it would wait forever; "
                              "co_await the call there instead");
  std::promise<void> done;
  auto finished = done.get_future();
  asio::co_spawn(impl_->io(), std::move(call), [&done](std::exception_ptr failure) {
    if (failure)
      done.set_exception(failure);
    else
      done.set_value();
  });
  try {
    finished.get();
  } catch (const std::exception& e) {
    return make_error("wait", std::string("the call failed: ") + e.what());
  }
  return {};
}

} // namespace vesicle
