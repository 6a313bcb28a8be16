// Embeds the vesicle runtime in a program of its own, on its own CAF actor
// system: creates a sandbox, runs Python and bash in it, forks it once and
// runs code in the child, destroys both. Exits 0 when every step gave what
// it should; otherwise says which step failed and exits 1.
//
// usage: embed_example IMAGES_DIR STATE_DIR [SHM_DIR]
//   IMAGES_DIR holds vmlinuz, initrd.img and rootfs.ext4 (images/build.sh);
//   STATE_DIR is the runtime's own (its VMs' sockets go to STATE_DIR/run);
//   SHM_DIR is where guest memory files go (default /dev/shm).
#include <utility> // before Boost 1.74's asio, which needs std::exchange

#include <cstdio>
#include <exception>
#include <string>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

#include <vesicle/runtime.hpp>

namespace asio = boost::asio;

namespace {

template <class T> T expect(vesicle::Result<T> result, const char* step) {
  if (!result) throw std::runtime_error(std::string(step) + ": " + result.error().message());
  return std::move(result).value();
}

void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
}

// The awaitable side: what a service's request handler would do.
asio::awaitable<void> scenario(vesicle::Runtime& runtime, std::string& parent, std::string& child) {
  vesicle::api::CreateSandboxRequest request;
  request.set_memory_mib(512);
  auto sandbox = expect(co_await runtime.create(request), "create");
  parent = sandbox.id;
  std::printf("created %s (from %s, state %s)\n", sandbox.id.c_str(), sandbox.source.c_str(),
              vesicle::to_string(sandbox.state));

  auto answer = expect(co_await runtime.exec_python(parent, "x = 6*7\nprint(x)"), "exec python");
  std::printf("python printed %s", answer.stdout_text.c_str());
  check(answer.stdout_text == "42\n" && answer.exit_code == 0,
        "print(6*7) printed \"" + answer.stdout_text + "\", not 42");

  vesicle::BashCommand command;
  command.command = "echo \"$GREETING from $(uname -s)\"; exit 3";
  command.env["GREETING"] = "hello";
  auto shell = expect(co_await runtime.exec_bash(parent, command), "exec bash");
  std::printf("bash printed %s(exit %d)\n", shell.stdout_text.c_str(), shell.exit_code);
  check(shell.stdout_text == "hello from Linux\n" && shell.exit_code == 3,
        "bash gave \"" + shell.stdout_text + "\", exit " + std::to_string(shell.exit_code));

  auto children = expect(co_await runtime.fork(parent, 1), "fork");
  check(children.size() == 1, "fork made " + std::to_string(children.size()) + " children");
  child = children.front().id;
  std::printf("forked %s into %s\n", parent.c_str(), child.c_str());
  // The child starts from the parent's state: x is still there.
  auto inherited = expect(co_await runtime.exec_python(child, "print(x + 1)"), "exec in child");
  check(inherited.stdout_text == "43\n",
        "the child printed \"" + inherited.stdout_text + "\", not 43");
  std::printf("the child printed %s", inherited.stdout_text.c_str());
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: %s IMAGES_DIR STATE_DIR [SHM_DIR]\n", argv[0]);
    return 2;
  }
  const std::string state_dir = argv[2];
  vesicle::config::HostdConfig config; // messages/config.proto: hostd's fields
  config.set_images_dir(argv[1]);
  config.set_state_dir(state_dir);
  config.set_runtime_dir(state_dir + "/run");
  if (argc == 4) config.set_shm_dir(argv[3]);
  config.set_disable_pools(true); // every create cold boots: nothing runs in the background

  // The service's own actor system, with vesicle's message types.
  caf::actor_system_config actor_config;
  vesicle::register_caf_types(actor_config);
  caf::actor_system system(actor_config);

  auto started = vesicle::Runtime::start(system, config);
  if (!started) {
    std::fprintf(stderr, "embed_example: starting the runtime: %s\n",
                 started.error().message().c_str());
    return 1;
  }
  auto& runtime = **started;

  std::string parent, child;
  int status = 0;
  asio::io_context io;
  asio::co_spawn(io, scenario(runtime, parent, child), [&](std::exception_ptr failure) {
    if (!failure) return;
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "embed_example: %s\n", e.what());
      status = 1;
    }
  });
  io.run();

  // The blocking side: the same calls from a plain thread.
  for (const auto& id : {child, parent}) {
    if (id.empty()) continue;
    if (auto destroyed = runtime.wait(runtime.destroy(id)); !destroyed) {
      std::fprintf(stderr, "embed_example: destroy %s: %s\n", id.c_str(),
                   destroyed.error().message().c_str());
      status = 1;
    } else {
      std::printf("destroyed %s\n", id.c_str());
    }
  }
  auto left = runtime.wait(runtime.list());
  if (!left || !left->empty()) {
    std::fprintf(stderr, "embed_example: sandboxes left after destroy: %zu\n",
                 left ? left->size() : 0);
    status = 1;
  }
  started->reset(); // stops the runtime before the actor system goes
  std::printf(status == 0 ? "embed_example: ok\n" : "embed_example: FAILED\n");
  return status;
}
