// The QEMU microVM driver. A VM is QEMU plus three connections to it: the
// process (a pidfd), the monitor (QMP) and the guest agent (virtio-serial).
// QEMU runs with -no-shutdown, so when the guest powers off, resets or
// panics, QEMU stops instead of exiting, reports SHUTDOWN over QMP, and the
// driver reads the guest console's ring buffer before it lets QEMU go: that
// is how a dead VM's last words reach the caller.
#include "actors/vmm/qemu.hpp"

#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include <algorithm>
#include <fstream>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "actors/vmm/async.hpp"
#include "actors/vmm/process.hpp"
#include "actors/vmm/qmp.hpp"

namespace vesicle::vmm {

namespace qemu {

namespace {

namespace fs = std::filesystem;
using detail::Clock;
using std::chrono::milliseconds;

constexpr std::size_t kConsoleBytes = 64u << 10;
constexpr milliseconds kPingInterval{250};
// How long QEMU may take to put up its monitor socket.
constexpr milliseconds kQmpTimeout{15'000};

} // namespace

VmPaths VmPaths::of(const VmConfig& config) {
  VmPaths paths;
  paths.dir = config.runtime_dir / config.id;
  paths.agent_socket = paths.dir / "agent.sock";
  paths.qmp_socket = paths.dir / "qmp.sock";
  paths.overlay = paths.dir / "overlay.qcow2";
  paths.log = paths.dir / "qemu.log";
  paths.pidfile = paths.dir / "qemu.pid";
  paths.memory_file = config.shm_dir / ("vesicle-" + config.id + ".mem");
  return paths;
}

Result<void> check_id(const std::string& id) {
  const bool valid =
      !id.empty() && id.size() <= 48 && std::all_of(id.begin(), id.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
      });
  if (valid) return {};
  return make_error("check VM id", "an id is 1 to 48 characters of [a-z0-9-]", id);
}

std::string kernel_cmdline(Accel accel, std::optional<unsigned long> tsc_khz) {
  std::string cmdline = "console=ttyS0 root=/dev/vda rw quiet panic=-1";
  if (accel == Accel::tcg && tsc_khz) {
    // tsc=reliable: TCG's vCPUs all read the host's TSC, which the kernel's
    // warp check, slowed down by emulation, mistakes for unsynchronized TSCs
    // and falls back to a 4 ms jiffies clock.
    cmdline += " tsc_early_khz=" + std::to_string(*tsc_khz) + " tsc=reliable";
  }
  return cmdline;
}

std::vector<std::string> command_line(const VmConfig& config, const VmPaths& paths, Accel accel,
                                      std::optional<unsigned long> tsc_khz) {
  const std::string memory = std::to_string(config.memory_mib);
  std::vector<std::string> args = {
      config.qemu_binary,
      "-M",
      "microvm,x-option-roms=off,rtc=on,memory-backend=mem",
      "-nodefaults",
      "-no-user-config",
      "-nographic",
      // A guest reset (panic=-1 turns a panic into one) and a power-off both
      // stop the VM and raise QMP SHUTDOWN; the driver then reads the console
      // and quits QEMU.
      "-no-reboot",
      "-no-shutdown",
  };
  if (accel == Accel::kvm) {
    args.insert(args.end(), {"-accel", "kvm", "-cpu", "host"});
  } else {
    // Without -cpu max the default qemu64 model lacks what the guest kernel
    // needs to calibrate its clock, and it hangs early in boot.
    args.insert(args.end(),
                {"-accel", "tcg,tb-size=" + std::to_string(config.tcg_translation_cache_mib),
                 "-cpu", "max"});
  }
  args.insert(args.end(),
              {
                  "-smp",
                  std::to_string(config.vcpus),
                  "-m",
                  memory,
                  "-object",
                  "memory-backend-file,id=mem,size=" + memory +
                      "M,mem-path=" + paths.memory_file.string() + ",share=on",
                  "-kernel",
                  fs::absolute(config.images.kernel).string(),
                  "-initrd",
                  fs::absolute(config.images.initrd).string(),
                  "-append",
                  kernel_cmdline(accel, tsc_khz),
                  "-drive",
                  "id=root,file=" + paths.overlay.string() + ",format=qcow2,if=none,discard=unmap",
                  "-device",
                  "virtio-blk-device,drive=root",
                  "-device",
                  "virtio-serial-device",
                  "-chardev",
                  "socket,id=agent,path=" + paths.agent_socket.string() + ",server=on,wait=off",
                  "-device",
                  "virtserialport,chardev=agent,name=agent",
                  // A ring buffer: a guest flooding its serial port costs a fixed 64 KiB.
                  "-chardev",
                  "ringbuf,id=console,size=" + std::to_string(kConsoleBytes),
                  "-serial",
                  "chardev:console",
                  "-qmp",
                  "unix:" + paths.qmp_socket.string() + ",server=on,wait=off",
                  "-name",
                  "vesicle-" + config.id + ",process=vesicle-" + config.id,
                  "-pidfile",
                  paths.pidfile.string(),
              });
  if (config.network) {
    // The tap fd becomes fd 3 in QEMU (SpawnOptions::pass_fd).
    args.insert(args.end(), {"-netdev", "tap,id=net0,fd=3", "-device",
                             "virtio-net-device,netdev=net0,mac=" + config.network->mac});
  }
  return args;
}

std::optional<unsigned long> host_tsc_khz() {
#if defined(__x86_64__)
  static const std::optional<unsigned long> measured = []() -> std::optional<unsigned long> {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    bool constant = false, nonstop = false;
    while (std::getline(cpuinfo, line)) {
      if (line.rfind("flags", 0) == 0) {
        constant = line.find(" constant_tsc") != std::string::npos;
        nonstop = line.find(" nonstop_tsc") != std::string::npos;
        break;
      }
    }
    if (!constant || !nonstop) return std::nullopt;
    auto now_ns = [] {
      timespec ts{};
      ::clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
      return static_cast<long double>(ts.tv_sec) * 1e9L + ts.tv_nsec;
    };
    // Three 10 ms samples; the median shrugs off one preempted sample.
    std::vector<long double> khz;
    for (int i = 0; i < 3; ++i) {
      const auto t0 = now_ns();
      const auto c0 = __rdtsc();
      timespec pause{0, 10'000'000};
      ::nanosleep(&pause, nullptr);
      const auto c1 = __rdtsc();
      const auto t1 = now_ns();
      khz.push_back(static_cast<long double>(c1 - c0) / (t1 - t0) * 1e6L);
    }
    std::sort(khz.begin(), khz.end());
    if (khz[1] < 100'000) return std::nullopt; // below 100 MHz: not a usable TSC
    return static_cast<unsigned long>(khz[1] + 0.5L);
  }();
  return measured;
#else
  return std::nullopt;
#endif
}

std::string console_tail(std::string_view console, std::size_t max_bytes) {
  std::string text;
  text.reserve(console.size());
  for (const char c : console) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\r') continue;
    if (u < 0x20 && c != '\n' && c != '\t') continue;
    if (u == 0x7f) continue;
    text += c;
  }
  while (!text.empty() && text.back() == '\n')
    text.pop_back();
  if (text.size() > max_bytes) {
    std::size_t start = text.size() - max_bytes;
    const auto newline = text.find('\n', start);
    if (newline != std::string::npos) start = newline + 1;
    // Do not start in the middle of a UTF-8 sequence.
    while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xc0) == 0x80)
      ++start;
    text.erase(0, start);
  }
  return text;
}

std::string base64_decode(std::string_view text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(text.size() / 4 * 3);
  unsigned bits = 0;
  int count = 0;
  for (const char c : text) {
    const int v = value(c);
    if (v < 0) continue; // padding, whitespace
    bits = (bits << 6) | static_cast<unsigned>(v);
    count += 6;
    if (count >= 8) {
      count -= 8;
      out += static_cast<char>((bits >> count) & 0xff);
    }
  }
  return out;
}

namespace {

using Socket = asio::local::stream_protocol::socket;

// Everything one VM owns. Shared with the coroutines that watch it, so none
// of them outlives what it touches; the Vm handle owns it and destroys it.
struct VmState : std::enable_shared_from_this<VmState> {
  VmState(asio::any_io_executor executor, VmConfig config)
      : executor(executor), config(std::move(config)), paths(VmPaths::of(this->config)),
        exited(executor) {}

  asio::any_io_executor executor;
  VmConfig config;
  VmPaths paths;
  std::unique_ptr<detail::Process> process;
  std::shared_ptr<QmpClient> qmp;
  std::unique_ptr<AgentClient> agent;

  detail::Event exited;
  std::string exit_description;
  bool shutdown_requested = false;
  bool destroy_requested = false;
  bool files_created = false;
  // Set when QMP reported the guest stopped on its own (reset, power-off).
  std::string guest_stop_reason;
  std::string console;

  bool running() const { return process && !process->exited(); }

  void remove_files() {
    if (!files_created) return;
    std::error_code ignored;
    fs::remove_all(paths.dir, ignored);
    fs::remove(paths.memory_file, ignored);
    files_created = false;
  }

  // Records how the VM ended (once), closes the monitor, frees the files.
  void finish(const detail::ExitStatus& status) {
    if (exited.is_set()) return;
    std::string how;
    if (destroy_requested) {
      how = "destroyed by the host (QEMU " + status.describe() + ")";
    } else if (shutdown_requested &&
               (guest_stop_reason == "guest-shutdown" || guest_stop_reason.empty())) {
      how = "the guest powered off as asked";
    } else if (!guest_stop_reason.empty()) {
      how = guest_stop_reason == "guest-reset"
                ? "the guest kernel reset the machine (a kernel panic, or PID 1 exited)"
            : guest_stop_reason == "guest-shutdown" ? "the guest powered itself off"
            : guest_stop_reason == "guest-panic"    ? "the guest kernel panicked"
                                                 : "the guest stopped (" + guest_stop_reason + ")";
      if (!console.empty()) how += "; guest console (tail):\n" + console;
    } else {
      how = "QEMU " + status.describe() + " unexpectedly";
      const std::string log = detail::file_tail(paths.log, 2048);
      if (!log.empty()) how += "; QEMU log (tail):\n" + log;
    }
    exit_description = std::move(how);
    if (qmp) qmp->close();
    remove_files();
    exited.set();
  }

  void destroy() {
    if (process && !process->exited()) {
      destroy_requested = true;
      finish(process->kill_and_reap());
    } else if (process) {
      finish(*process->status());
    }
    if (qmp) qmp->close();
    remove_files();
  }

  asio::awaitable<void> watch_process() {
    auto self = shared_from_this();
    const detail::ExitStatus status = co_await process->wait();
    finish(status);
  }

  asio::awaitable<std::string> read_console() {
    if (!qmp || !qmp->connected()) co_return std::string{};
    json::Object arguments;
    arguments["device"] = json::Value(std::string("console"));
    arguments["size"] = json::Value(static_cast<std::int64_t>(kConsoleBytes));
    arguments["format"] = json::Value(std::string("base64"));
    auto read = co_await qmp->execute("ringbuf-read", std::move(arguments), milliseconds(3000));
    if (!read) co_return "(could not read the guest console: " + read.error().message() + ")";
    co_return console_tail(base64_decode(read->as_string()));
  }

  // The guest stopped and QEMU waits (-no-shutdown): keep its console if the
  // stop was not asked for, then let QEMU exit.
  asio::awaitable<void> on_guest_stopped(std::string reason) {
    auto self = shared_from_this();
    guest_stop_reason = reason;
    const bool expected = shutdown_requested && reason == "guest-shutdown";
    if (!expected) console = co_await read_console();
    if (qmp && qmp->connected()) {
      std::string quit = "quit";
      json::Object no_arguments;
      (void)co_await qmp->execute(std::move(quit), std::move(no_arguments), milliseconds(3000));
    }
    // A QEMU that does not quit when told is killed; the watcher reaps it.
    const bool gone = co_await exited.wait(Clock::now() + std::chrono::seconds(3));
    if (!gone && process && !process->exited()) process->kill(SIGKILL);
  }

  void watch_monitor() {
    std::weak_ptr<VmState> weak = shared_from_this();
    qmp->on_event([weak](const std::string& event, const json::Value& message) {
      auto self = weak.lock();
      if (!self || event != "SHUTDOWN") return;
      const auto& data = message["data"];
      // Host-initiated quits (our own "quit", a signal) end QEMU anyway.
      if (!data["guest"].as_bool()) return;
      asio::co_spawn(self->executor, self->on_guest_stopped(data["reason"].as_string()),
                     asio::detached);
    });
  }
};

class QemuVm final : public Vm {
public:
  explicit QemuVm(std::shared_ptr<VmState> state) : state_(std::move(state)) {}
  ~QemuVm() override { state_->destroy(); }

  const std::string& id() const override { return state_->config.id; }
  int qemu_pid() const override { return state_->process->pid(); }
  AgentClient& agent() override { return *state_->agent; }
  bool running() const override { return state_->running(); }

  asio::awaitable<std::string> wait_exit() override {
    auto state = state_;
    co_await state->exited.wait();
    co_return state->exit_description;
  }

  asio::awaitable<void> shutdown(milliseconds grace) override {
    auto state = state_;
    // With the agent channel gone nobody can ask the guest; kill it now.
    if (state->running() && state->agent && state->agent->connected()) {
      state->shutdown_requested = true;
      const auto deadline = Clock::now() + grace;
      // The agent acknowledges, then powers the guest off; QMP reports the
      // stop and the monitor handler lets QEMU exit. A guest that does not
      // get there in time is killed.
      asio::co_spawn(
          state->executor,
          [state]() -> asio::awaitable<void> {
            auto acknowledged = co_await state->agent->shutdown();
            // No acknowledgement (the channel broke): stop waiting for one.
            if (!acknowledged && state->running() && state->guest_stop_reason.empty())
              state->destroy();
          },
          asio::detached);
      co_await state->exited.wait(deadline);
    }
    state->destroy();
  }

  void destroy() override { state_->destroy(); }

private:
  std::shared_ptr<VmState> state_;
};

class QemuDriver final : public Driver {
public:
  explicit QemuDriver(asio::any_io_executor executor)
      : executor_(std::move(executor)), accel_(detect_accel()) {}

  Accel accel() const override { return accel_; }

  asio::awaitable<Result<std::unique_ptr<Vm>>> boot(VmConfig config) override {
    const std::string what = "booting VM " + config.id;
    auto booted = co_await boot_steps(executor_, accel_, std::move(config));
    if (!booted) co_return std::move(booted).error().with_context(what);
    co_return std::move(booted);
  }

private:
  // The boot flow, one step after another. Any failure returns early; the
  // VmState's destroy() (run by the guard) leaves nothing behind.
  static asio::awaitable<Result<std::unique_ptr<Vm>>> boot_steps(asio::any_io_executor executor,
                                                                 Accel accel, VmConfig config) {
    const auto deadline = Clock::now() + config.boot_timeout;
    if (auto valid = check_id(config.id); !valid) co_return std::move(valid).error();
    if (auto images = config.images.check(); !images) {
      co_return std::move(images).error().with_context("checking guest images");
    }
    auto state = std::make_shared<VmState>(executor, config);
    const VmPaths& paths = state->paths;
    if (paths.agent_socket.string().size() >= sizeof(sockaddr_un::sun_path)) {
      co_return make_error("check runtime dir",
                           "socket paths under it exceed the Unix socket limit of " +
                               std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                               " bytes; use a shorter runtime_dir",
                           paths.agent_socket.string());
    }
    struct Guard {
      std::shared_ptr<VmState> state;
      bool armed = true;
      ~Guard() {
        if (armed) state->destroy();
      }
    } guard{state};

    if (auto made = make_vm_dir(config, paths); !made) co_return std::move(made).error();
    state->files_created = true;

    // The base image is never written; every write lands in the overlay.
    detail::SpawnOptions qemu_img;
    qemu_img.argv = {"qemu-img",
                     "create",
                     "-q",
                     "-f",
                     "qcow2",
                     "-b",
                     fs::absolute(config.images.base_disk).string(),
                     "-F",
                     "raw",
                     paths.overlay.string()};
    qemu_img.output = paths.log;
    auto overlay = co_await detail::run_helper(executor, std::move(qemu_img));
    if (!overlay) co_return std::move(overlay).error().with_context("creating the disk overlay");

    detail::SpawnOptions qemu_options;
    qemu_options.argv =
        command_line(config, paths, accel, accel == Accel::tcg ? host_tsc_khz() : std::nullopt);
    qemu_options.output = paths.log;
    if (config.network) qemu_options.pass_fd = config.network->tap_fd;
    qemu_options.working_dir = paths.dir;
    auto process = detail::Process::spawn(executor, qemu_options);
    if (!process) co_return std::move(process).error().with_context("starting QEMU");
    state->process = std::move(process.value());
    asio::co_spawn(executor, state->watch_process(), asio::detached);

    // Named, not built in the call: see kNoStream in agent_client.cpp.
    std::function<bool()> qemu_gone = [state] { return !state->running(); };
    auto qmp = co_await QmpClient::connect(executor, paths.qmp_socket,
                                           std::min(deadline, Clock::now() + kQmpTimeout),
                                           std::move(qemu_gone));
    if (!qmp) co_await settle(state);
    if (!qmp)
      co_return died_or(*state,
                        std::move(qmp).error().with_context("connecting to QEMU's monitor"));
    state->qmp = std::move(qmp.value());
    state->watch_monitor();

    auto socket = co_await connect_agent(executor, paths.agent_socket);
    if (!socket) co_await settle(state);
    if (!socket) co_return died_or(*state, std::move(socket).error());
    state->agent = make_agent_client(std::move(socket.value()));

    const auto remaining = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    auto ready =
        co_await state->agent->wait_ready(std::max(remaining, milliseconds(0)), kPingInterval);
    if (!ready) {
      if (is_channel_closed(ready.error())) {
        // QEMU is going down; wait (briefly) for the watcher's account of it.
        co_await state->exited.wait(Clock::now() + std::chrono::seconds(10));
        co_return died_or(*state, std::move(ready).error());
      }
      const std::string console = co_await state->read_console();
      Error error = std::move(ready).error();
      error.detail += "; the guest did not start its agent within the boot timeout of " +
                      std::to_string(config.boot_timeout.count()) + " ms";
      if (!console.empty()) error.detail += "; guest console (tail):\n" + console;
      co_return error;
    }
    guard.armed = false;
    co_return std::unique_ptr<Vm>(std::make_unique<QemuVm>(std::move(state)));
  }

  // A connection to QEMU broke: if QEMU is exiting, give the watcher a
  // moment to reap it, so the error can say how it went.
  static asio::awaitable<void> settle(std::shared_ptr<VmState> state) {
    if (state->process) (void)co_await state->exited.wait(Clock::now() + std::chrono::seconds(2));
  }

  // When QEMU is gone, how it went says more than the error that noticed.
  static Error died_or(VmState& state, Error error) {
    if (!state.exited.is_set()) return error;
    return make_error("boot VM",
                      "the VM stopped before its agent answered: " + state.exit_description);
  }

  static Result<void> make_vm_dir(const VmConfig& config, const VmPaths& paths) {
    std::error_code ec;
    fs::create_directories(config.runtime_dir, ec);
    if (ec) return Error{ec.value(), "create directory", config.runtime_dir.string(), {}, {}};
    if (::mkdir(paths.dir.c_str(), 0700) != 0) {
      Error error = sys_error("create directory", paths.dir.string());
      if (errno == EEXIST) {
        error.detail = "a VM with this id is running, or a crashed one left it behind; remove it "
                       "or choose another id";
      }
      return error;
    }
    return {};
  }

  // QEMU created the socket before it served QMP; a few retries cover a
  // slow start anyway.
  static asio::awaitable<Result<Socket>> connect_agent(asio::any_io_executor executor,
                                                       fs::path path) {
    boost::system::error_code ec;
    for (int attempt = 0; attempt < 50; ++attempt) {
      Socket socket(executor);
      co_await socket.async_connect(asio::local::stream_protocol::endpoint(path.string()),
                                    asio::redirect_error(asio::use_awaitable, ec));
      if (!ec) co_return std::move(socket);
      asio::steady_timer pause(executor, milliseconds(20));
      co_await pause.async_wait(asio::use_awaitable);
    }
    co_return Error{ec.value(), "connect", path.string(), "the agent channel's socket", {}};
  }

  asio::any_io_executor executor_;
  Accel accel_;
};

} // namespace

} // namespace qemu

std::unique_ptr<Driver> make_qemu_driver(asio::any_io_executor executor) {
  return std::make_unique<qemu::QemuDriver>(std::move(executor));
}

} // namespace vesicle::vmm
