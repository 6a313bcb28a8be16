#include "tests/guest/agent_harness.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <thread>

#include "guest/agent/spawn.hpp"

#ifndef VESICLE_AGENT_BINARY
#error "VESICLE_AGENT_BINARY must name the vesicle-agent under test"
#endif
#ifndef VESICLE_SOURCE_DIR
#error "VESICLE_SOURCE_DIR must name the source tree (for guest/repl/repl.py)"
#endif

namespace vesicle::test {

namespace {

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

// Before any test: orphans of the agent's commands must reparent to this
// process, so kill_test_descendants() can find them.
const bool subreaper_set = [] {
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  ::signal(SIGPIPE, SIG_IGN);
  return true;
}();

// execv's argument vector over `args` (which must outlive it).
std::vector<char*> exec_argv(std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (auto& arg : args)
    argv.push_back(arg.data());
  argv.push_back(nullptr);
  return argv;
}

} // namespace

TempDir::TempDir() {
  std::string pattern =
      (std::filesystem::temp_directory_path() / "vesicle-guest-test-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) fail("mkdtemp");
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  // Uploads may have left read-only files and folders; make them removable.
  for (auto it = std::filesystem::recursive_directory_iterator(path_, ignored);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ignored)) {
    if (it->is_directory(ignored) && !it->is_symlink(ignored)) {
      std::filesystem::permissions(it->path(), std::filesystem::perms::owner_all,
                                   std::filesystem::perm_options::add, ignored);
    }
  }
  std::filesystem::remove_all(path_, ignored);
}

bool is_terminal(const guest::Event& event) {
  switch (event.kind_case()) {
  case guest::Event::kExit:
  case guest::Event::kDone:
  case guest::Event::kFailure:
  case guest::Event::kPong:
  case guest::Event::kInfo:
    return true;
  default:
    return false;
  }
}

Agent::Agent(Config config) {
  (void)subreaper_set;
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) fail("socketpair");
  UniqueFd ours(fds[0]);
  UniqueFd theirs(fds[1]);

  std::vector<std::string> args = {
      VESICLE_AGENT_BINARY, "--channel-fd=3",
      "--no-init",          std::string("--repl=") + VESICLE_SOURCE_DIR + "/guest/repl/repl.py",
      "--python=python3",   "--home=" + home_.str(),
  };
  for (auto& arg : config.extra_args)
    args.push_back(arg);
  std::vector<char*> argv = exec_argv(args);

  pid_ = ::fork();
  if (pid_ < 0) fail("fork");
  if (pid_ == 0) {
    ::dup2(theirs.get(), 3); // dup2 clears close-on-exec on the copy
    ::execv(argv[0], argv.data());
    std::perror("exec vesicle-agent");
    _exit(127);
  }
  attach(std::move(ours));
}

Agent::~Agent() {
  close_channel();
  if (!wait_exit(10s)) {
    ::kill(pid_, SIGKILL);
    wait_exit(5s);
  }
  kill_test_descendants();
}

void AgentClient::attach(UniqueFd channel) {
  channel_ = std::move(channel);
  decoder_ = wire::FrameDecoder{};
  pending_.clear();
  channel_ended_ = false;
}

void AgentClient::close_channel() {
  channel_.reset();
}

void AgentClient::send_raw(std::string_view bytes) {
  // A peer that stops reading (an agent that never opened its port) must
  // fail the test, not hang it.
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  std::size_t done = 0;
  while (done < bytes.size()) {
    if (std::chrono::steady_clock::now() > deadline) {
      throw std::runtime_error("the agent has not read its channel for 30 s");
    }
    pollfd p{channel_.get(), POLLOUT, 0};
    // Reading while writing: the agent may block on its own output.
    if (::poll(&p, 1, 10) > 0 && (p.revents & POLLOUT)) {
      const ssize_t n = ::send(channel_.get(), bytes.data() + done, bytes.size() - done,
                               MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        done += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno != EAGAIN && errno != EINTR) fail("send to the agent");
    }
    pump(std::chrono::steady_clock::now());
  }
}

void AgentClient::send(const guest::Request& request) {
  send_raw(wire::encode_frame(request));
}

bool AgentClient::pump(std::chrono::steady_clock::time_point deadline) {
  if (channel_ended_ || !channel_) return false;
  const auto now = std::chrono::steady_clock::now();
  const int wait_ms =
      deadline > now
          ? static_cast<int>(
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count()) +
                1
          : 0;
  pollfd p{channel_.get(), POLLIN, 0};
  if (::poll(&p, 1, wait_ms) <= 0) return false;
  char buffer[256 << 10];
  const ssize_t n = ::recv(channel_.get(), buffer, sizeof buffer, MSG_DONTWAIT);
  if (n == 0) {
    channel_ended_ = true;
    return false;
  }
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  ++reads_;
  decoder_.feed(std::string_view(buffer, static_cast<std::size_t>(n)));
  for (;;) {
    auto payload = decoder_.next();
    if (!payload.ok()) throw std::runtime_error(payload.error().message());
    if (!payload.value()) break;
    guest::Event event;
    if (!event.ParseFromString(*payload.value())) {
      throw std::runtime_error("the agent sent an event that does not parse");
    }
    const auto id = event.id();
    pending_[id].push_back({std::move(event), reads_});
  }
  return true;
}

std::optional<guest::Event> AgentClient::next_event(std::uint64_t id,
                                                    std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto& queue = pending_[id];
    if (!queue.empty()) {
      guest::Event event = std::move(queue.front().event);
      last_read_ = queue.front().read;
      queue.pop_front();
      return event;
    }
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    if (!pump(deadline) && channel_ended_) return std::nullopt;
  }
}

std::vector<guest::Event> AgentClient::collect(std::uint64_t id,
                                               std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<guest::Event> events;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    auto event = next_event(id, std::max(left, 0ms));
    if (!event) return events;
    events.push_back(*event);
    if (is_terminal(*event)) return events;
  }
}

ExecOutcome AgentClient::gather(std::uint64_t id, std::chrono::milliseconds timeout) {
  ExecOutcome outcome;
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    auto event = next_event(id, std::max(left, 0ms));
    if (!event) return outcome;
    outcome.arrivals.push_back(std::chrono::steady_clock::now() - start);
    outcome.reads.push_back(last_read_);
    switch (event->kind_case()) {
    case guest::Event::kStdout:
      outcome.out += event->stdout();
      break;
    case guest::Event::kStderr:
      outcome.err += event->stderr();
      break;
    case guest::Event::kResult:
      outcome.result = event->result();
      break;
    case guest::Event::kDisplay:
      outcome.displays.push_back(event->display());
      break;
    case guest::Event::kError:
      outcome.error = event->error();
      break;
    case guest::Event::kExit:
      outcome.exit = event->exit();
      break;
    case guest::Event::kFailure:
      outcome.failure = event->failure();
      break;
    default:
      break;
    }
    // Only a few events are kept whole; a flood would fill memory.
    if (outcome.events.size() < 10000) outcome.events.push_back(*event);
    if (is_terminal(*event)) return outcome;
  }
}

ExecOutcome AgentClient::python(const std::string& code, std::uint32_t timeout_ms,
                                std::uint64_t max_output, std::chrono::milliseconds deadline) {
  guest::Request request;
  request.set_id(next_id());
  request.mutable_exec_python()->set_code(code);
  request.mutable_exec_python()->set_timeout_ms(timeout_ms);
  request.mutable_exec_python()->set_max_output_bytes(max_output);
  send(request);
  return gather(request.id(), deadline);
}

ExecOutcome AgentClient::bash(const std::string& command, std::map<std::string, std::string> env,
                              const std::string& cwd, std::uint32_t timeout_ms,
                              std::uint64_t max_output, std::chrono::milliseconds deadline) {
  guest::Request request;
  request.set_id(next_id());
  auto* exec = request.mutable_exec_bash();
  exec->set_command(command);
  for (auto& [name, value] : env)
    (*exec->mutable_env())[name] = value;
  exec->set_cwd(cwd);
  exec->set_timeout_ms(timeout_ms);
  exec->set_max_output_bytes(max_output);
  send(request);
  return gather(request.id(), deadline);
}

guest::Event AgentClient::write_file(const std::string& path, const std::string& data,
                                     std::uint32_t mode, bool make_parents, std::size_t chunk) {
  const std::uint64_t id = next_id();
  std::size_t at = 0;
  do {
    guest::Request request;
    request.set_id(id);
    auto* write = request.mutable_write_file();
    if (at == 0) {
      write->set_path(path);
      write->set_mode(mode);
      write->set_make_parents(make_parents);
    }
    const std::size_t n = std::min(chunk, data.size() - at);
    write->set_data(data.substr(at, n));
    at += n;
    write->set_last(at == data.size());
    send(request);
  } while (at < data.size());
  auto events = collect(id, 60s);
  if (events.empty()) throw std::runtime_error("no reply to write_file " + path);
  return events.back();
}

guest::Event AgentClient::read_file(const std::string& path, std::string& data,
                                    std::uint64_t offset, std::uint64_t length) {
  guest::Request request;
  request.set_id(next_id());
  request.mutable_read_file()->set_path(path);
  request.mutable_read_file()->set_offset(offset);
  request.mutable_read_file()->set_length(length);
  send(request);
  for (;;) {
    auto event = next_event(request.id(), 60s);
    if (!event) throw std::runtime_error("no reply to read_file " + path);
    if (event->has_file_data()) {
      data += event->file_data();
      continue;
    }
    return *event;
  }
}

namespace {

std::optional<int> wait_child(pid_t pid, bool& reaped, int& status,
                              std::chrono::milliseconds timeout) {
  if (reaped) return status;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const pid_t got = ::waitpid(pid, &status, WNOHANG);
    if (got == pid) {
      reaped = true;
      return status;
    }
    if (got < 0) return std::nullopt;
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(10ms);
  }
}

} // namespace

std::optional<int> Agent::wait_exit(std::chrono::milliseconds timeout) {
  return wait_child(pid_, reaped_, status_, timeout);
}

std::uint64_t Agent::peak_rss_kib() const {
  std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  return 0;
}

namespace {

// Under TCG on a busy host the guest kernel's TSC calibration against the
// PIT fails, and the kernel then hangs in its delay-loop calibration (seen
// here at load 8 on 2 cores: stuck after "tsc: Marking TSC unstable due to
// could not calculate TSC khz"). Telling it the frequency skips both. The
// guest's TSC under TCG runs at the host's rate.
std::string tsc_hint() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("cpu MHz", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) break;
    const double mhz = std::strtod(line.c_str() + colon + 1, nullptr);
    if (mhz > 100) return " tsc_early_khz=" + std::to_string(static_cast<long>(mhz * 1000));
    break;
  }
  return {};
}

} // namespace

VmAgent::VmAgent(const std::string& images_dir) {
  (void)subreaper_set;
  for (const char* name : {"vmlinuz", "initrd.img", "rootfs.ext4"}) {
    if (!std::filesystem::exists(images_dir + "/" + name)) {
      throw std::runtime_error(images_dir + "/" + name +
                               " is missing; build the images first: images/build.sh "
                               "--build-dir <build> --out <dir>, and set VESICLE_IMAGES=<dir>");
    }
  }
  const std::string base = std::filesystem::canonical(images_dir + "/rootfs.ext4").string();
  const std::string overlay = dir_.str() + "/overlay.qcow2";
  const std::string create =
      "qemu-img create -q -f qcow2 -b '" + base + "' -F raw '" + overlay + "'";
  if (std::system(create.c_str()) != 0) throw std::runtime_error("failed: " + create);

  std::vector<std::string> args = {
      "qemu-system-x86_64",
      "-M",
      "microvm,x-option-roms=off,rtc=on",
      "-nodefaults",
      "-no-user-config",
      "-nographic",
      "-no-reboot",
      "-accel",
      "tcg",
      "-m",
      "512",
      "-kernel",
      images_dir + "/vmlinuz",
      "-initrd",
      images_dir + "/initrd.img",
      "-append",
      "console=ttyS0 root=/dev/vda rw quiet panic=-1 reboot=t" + tsc_hint(),
      "-drive",
      "id=root,file=" + overlay + ",format=qcow2,if=none",
      "-device",
      "virtio-blk-device,drive=root",
      "-device",
      "virtio-serial-device",
      "-chardev",
      "socket,id=ag,path=" + dir_.str() + "/agent.sock,server=on,wait=off",
      "-device",
      "virtserialport,chardev=ag,name=agent",
      "-serial",
      "file:" + dir_.str() + "/console.log",
  };
  std::vector<char*> argv = exec_argv(args);
  pid_ = ::fork();
  if (pid_ < 0) fail("fork");
  if (pid_ == 0) {
    const int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    // QEMU dies with the test process, whatever happens to it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::execvp(argv[0], argv.data());
    std::perror("exec qemu-system-x86_64");
    _exit(127);
  }
  // The socket exists once QEMU has parsed its command line.
  for (int i = 0; i < 500 && !std::filesystem::exists(dir_.str() + "/agent.sock"); ++i) {
    std::this_thread::sleep_for(10ms);
  }
}

VmAgent::~VmAgent() {
  close_channel();
  if (!wait_exit(0ms)) {
    ::kill(pid_, SIGKILL);
    wait_exit(10s);
  }
}

bool VmAgent::connect() {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string path = dir_.str() + "/agent.sock";
  std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
  // QEMU binds the socket's file before it listens: on a loaded machine a
  // connect in between is refused (CI saw it), so retry while QEMU lives.
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (!wait_exit(0ms)) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) fail("socket");
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
      attach(std::move(fd));
      return true;
    }
    if ((errno != ECONNREFUSED && errno != ENOENT) || std::chrono::steady_clock::now() > deadline)
      return false;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

bool VmAgent::wait_ready(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  // QEMU holds what is sent before the guest opens its port, so one ping
  // answers as soon as the agent is up; another now and then covers a ping
  // lost to a reconnect inside the guest.
  while (std::chrono::steady_clock::now() < deadline) {
    if (wait_exit(0ms)) return false;
    guest::Request ping;
    ping.set_id(next_id());
    ping.mutable_ping();
    send(ping);
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    auto events = collect(ping.id(), std::clamp(left, 0ms, 10000ms));
    if (!events.empty() && events.back().has_pong()) return true;
  }
  return false;
}

std::optional<int> VmAgent::wait_exit(std::chrono::milliseconds timeout) {
  return wait_child(pid_, reaped_, status_, timeout);
}

std::string VmAgent::console_log() const {
  std::ifstream in(dir_.str() + "/console.log");
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void kill_test_descendants() {
  agent::kill_descendants(); // the agent's own sweep, for its orphans here
}

bool process_alive(pid_t pid) {
  // Read with plain read(2): the process can be reaped between open and read,
  // which makes the read fail with ESRCH, and that simply means "gone".
  const std::string path = "/proc/" + std::to_string(pid) + "/stat";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buffer[512];
  const ssize_t got = ::read(fd, buffer, sizeof buffer);
  ::close(fd);
  if (got <= 0) return false;
  const std::string_view text(buffer, static_cast<size_t>(got));
  const auto paren = text.rfind(')');
  if (paren == std::string_view::npos || paren + 2 >= text.size()) return false;
  return text[paren + 2] != 'Z' && text[paren + 2] != 'X';
}

} // namespace vesicle::test
