// vesicle-vm: boots one VM with the QEMU driver, runs a few operations in it
// and shuts it down. A debugging tool for the driver and the guest agent;
// hostd does the same through its actors.
//
//   vesicle-vm run --images build/images --code 'print(1)' --bash 'uname -a'
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <utility>

#include "vmm/vmm.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/program_options.hpp>

namespace po = boost::program_options;
namespace asio = boost::asio;
using namespace vesicle;
using namespace vesicle::vmm;

namespace {

struct Options {
  std::filesystem::path images;
  std::vector<std::string> code;
  std::vector<std::string> bash;
  std::vector<std::string> uploads;   // LOCAL:REMOTE
  std::vector<std::string> downloads; // REMOTE:LOCAL
  unsigned memory_mib = 1024;
  unsigned vcpus = 2;
  unsigned timeout_s = 0;
  unsigned boot_timeout_s = 90;
  std::string id;
  std::filesystem::path runtime_dir;
  bool keep_console = false;
  bool info = false;
};

void print_event(const guest::Event& event) {
  switch (event.kind_case()) {
  case guest::Event::kStdout:
    std::fwrite(event.stdout().data(), 1, event.stdout().size(), stdout);
    break;
  case guest::Event::kStderr:
    std::fwrite(event.stderr().data(), 1, event.stderr().size(), stderr);
    break;
  case guest::Event::kResult:
    std::printf("%s\n", event.result().c_str());
    break;
  case guest::Event::kError:
    std::fprintf(stderr, "%s", event.error().traceback().c_str());
    break;
  case guest::Event::kDisplay:
    for (const auto& [mime, data] : event.display().data())
      std::printf("[display %s: %zu bytes]\n", mime.c_str(), data.size());
    break;
  default:
    break;
  }
  std::fflush(stdout);
}

void print_exit(const char* what, const guest::Exit& exit) {
  std::fprintf(stderr, "[%s: exit %d%s%s%s%s, %.1f ms]\n", what, exit.exit_code(),
               exit.signal() ? (", signal " + std::to_string(exit.signal())).c_str() : "",
               exit.timed_out() ? ", timed out" : "", exit.truncated() ? ", output truncated" : "",
               exit.repl_restarted() ? ", REPL restarted" : "", exit.duration_us() / 1000.0);
}

std::pair<std::string, std::string> split_pair(const std::string& spec, const char* option) {
  const auto colon = spec.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == spec.size()) {
    throw po::error(std::string("--") + option + " wants A:B, got '" + spec + "'");
  }
  return {spec.substr(0, colon), spec.substr(colon + 1)};
}

asio::awaitable<Result<void>> upload(AgentClient& agent, const std::string& local,
                                     const std::string& remote) {
  std::ifstream in(local, std::ios::binary);
  if (!in) co_return sys_error("open", local);
  auto started = co_await agent.begin_upload(remote, 0644, true);
  if (!started) co_return std::move(started).error();
  std::string buffer(1u << 20, '\0');
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto n = static_cast<std::size_t>(in.gcount());
    if (n == 0) break;
    if (auto written = co_await started.value()->write(std::string_view(buffer.data(), n));
        !written) {
      co_return std::move(written).error();
    }
  }
  auto done = co_await started.value()->finish();
  if (!done) co_return std::move(done).error();
  std::fprintf(stderr, "[uploaded %s -> %s: %llu bytes]\n", local.c_str(), remote.c_str(),
               static_cast<unsigned long long>(done->size()));
  co_return Result<void>{};
}

asio::awaitable<Result<void>> download(AgentClient& agent, const std::string& remote,
                                       const std::string& local) {
  std::ofstream out(local, std::ios::binary | std::ios::trunc);
  if (!out) co_return sys_error("open", local);
  // A named sink: g++ 12 destroys a lambda converted in a co_await
  // expression twice.
  ChunkSink sink = [&out, &local](std::string_view chunk) -> asio::awaitable<Result<void>> {
    out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    if (!out) co_return sys_error("write", local);
    co_return Result<void>{};
  };
  auto done = co_await agent.download(remote, std::move(sink));
  if (!done) co_return std::move(done).error();
  std::fprintf(stderr, "[downloaded %s -> %s: %llu bytes, mode %o]\n", remote.c_str(),
               local.c_str(), static_cast<unsigned long long>(done->size()), done->mode());
  co_return Result<void>{};
}

// Returns the process exit code: the last exec's, 1 on an error.
asio::awaitable<int> run(asio::io_context& io, const Options& options) {
  auto driver = make_qemu_driver(io.get_executor());
  VmConfig config;
  config.id = options.id.empty() ? "cli-" + std::to_string(::getpid()) : options.id;
  config.images = GuestImages::in(options.images);
  config.memory_mib = options.memory_mib;
  config.vcpus = options.vcpus;
  config.boot_timeout = std::chrono::seconds(options.boot_timeout_s);
  config.runtime_dir = options.runtime_dir.empty()
                           ? std::filesystem::temp_directory_path() / "vesicle-vm"
                           : options.runtime_dir;
  std::fprintf(stderr, "[booting %s with %s, %u MiB, %u vCPUs]\n", config.id.c_str(),
               to_string(driver->accel()), config.memory_mib, config.vcpus);
  const auto started = std::chrono::steady_clock::now();
  auto booted = co_await driver->boot(config);
  if (!booted) {
    std::fprintf(stderr, "vesicle-vm: %s\n", booted.error().message().c_str());
    co_return 1;
  }
  auto vm = std::move(booted.value());
  std::fprintf(
      stderr, "[agent ready after %.0f ms, QEMU pid %d]\n",
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count(),
      vm->qemu_pid());
  int exit_code = 0;
  auto fail = [&exit_code](const Error& error) {
    std::fprintf(stderr, "vesicle-vm: %s\n", error.message().c_str());
    exit_code = 1;
  };
  AgentClient& agent = vm->agent();
  if (options.info) {
    auto info = co_await agent.info();
    if (!info) {
      fail(info.error());
    } else {
      std::fprintf(stderr, "[kernel %s, agent %s, hostname %s, %llu MiB available, REPL pid %u]\n",
                   info->kernel().c_str(), info->agent_version().c_str(), info->hostname().c_str(),
                   static_cast<unsigned long long>(info->mem_available_bytes() >> 20),
                   info->repl_pid());
    }
  }
  for (const auto& spec : options.uploads) {
    auto [local, remote] = split_pair(spec, "upload");
    if (auto r = co_await upload(agent, local, remote); !r) fail(r.error());
  }
  for (const auto& code : options.code) {
    guest::ExecPython request;
    request.set_code(code);
    request.set_timeout_ms(options.timeout_s * 1000);
    auto exit = co_await agent.exec_python(std::move(request), print_event);
    if (!exit) {
      fail(exit.error());
      continue;
    }
    print_exit("python", exit.value());
    exit_code = exit->exit_code();
  }
  for (const auto& command : options.bash) {
    guest::ExecBash request;
    request.set_command(command);
    request.set_timeout_ms(options.timeout_s * 1000);
    auto exit = co_await agent.exec_bash(std::move(request), print_event);
    if (!exit) {
      fail(exit.error());
      continue;
    }
    print_exit("bash", exit.value());
    exit_code = exit->exit_code();
  }
  for (const auto& spec : options.downloads) {
    auto [remote, local] = split_pair(spec, "download");
    if (auto r = co_await download(agent, remote, local); !r) fail(r.error());
  }
  if (options.keep_console) {
    std::fprintf(stderr, "[VM left running: QEMU pid %d; press Enter to shut it down]\n",
                 vm->qemu_pid());
    std::getchar();
  }
  co_await vm->shutdown(std::chrono::seconds(10));
  std::fprintf(stderr, "[%s]\n", (co_await vm->wait_exit()).c_str());
  co_return exit_code;
}

} // namespace

int main(int argc, char** argv) {
  Options options;
  po::options_description described("vesicle-vm run: boot a VM, run code in it, shut it down");
  described.add_options()("help,h", "this help")("images", po::value(&options.images)->required(),
                                                 "directory with vmlinuz, initrd.img, rootfs.ext4")(
      "code", po::value(&options.code)->composing(), "Python cell to run (repeatable)")(
      "bash", po::value(&options.bash)->composing(),
      "bash command to run (repeatable)")("upload", po::value(&options.uploads)->composing(),
                                          "LOCAL:REMOTE file to upload first (repeatable)")(
      "download", po::value(&options.downloads)->composing(),
      "REMOTE:LOCAL file to download last (repeatable)")(
      "memory-mib", po::value(&options.memory_mib)->default_value(1024),
      "guest memory")("vcpus", po::value(&options.vcpus)->default_value(2),
                      "guest vCPUs")("timeout", po::value(&options.timeout_s)->default_value(0),
                                     "per-exec timeout in seconds (0: none)")(
      "boot-timeout", po::value(&options.boot_timeout_s)->default_value(90),
      "seconds to wait for the agent")("id", po::value(&options.id), "VM id (default cli-<pid>)")(
      "runtime-dir", po::value(&options.runtime_dir),
      "where the VM's files go (default $TMPDIR/vesicle-vm)")(
      "info", po::bool_switch(&options.info), "print the agent's Info after boot")(
      "keep-console", po::bool_switch(&options.keep_console),
      "keep the VM running after the operations until Enter is pressed");
  po::positional_options_description positional;
  positional.add("command", 1);
  po::options_description hidden;
  std::string command;
  hidden.add_options()("command", po::value(&command));
  po::options_description all;
  all.add(described).add(hidden);
  try {
    po::variables_map vm;
    po::store(po::command_line_parser(argc, argv).options(all).positional(positional).run(), vm);
    if (vm.count("help") || argc < 2) {
      std::cout << "usage: vesicle-vm run --images DIR [options]\n" << described << "\n";
      return vm.count("help") ? 0 : 2;
    }
    po::notify(vm);
    if (command != "run")
      throw po::error("unknown command '" + command + "'; the command is 'run'");
    for (const auto& spec : options.uploads)
      split_pair(spec, "upload");
    for (const auto& spec : options.downloads)
      split_pair(spec, "download");
  } catch (const po::error& e) {
    std::cerr << "vesicle-vm: " << e.what() << "\n";
    return 2;
  }
  asio::io_context io;
  auto result = asio::co_spawn(io, run(io, options), asio::use_future);
  // Not io.run(): a detached coroutine still draining a dead channel must
  // not keep the tool alive once the work is done.
  while (result.wait_for(std::chrono::seconds(0)) != std::future_status::ready)
    io.run_one();
  return result.get();
}
