// vesicle-agent: PID 1 of a vesicle VM, serving messages/guest.proto on the
// virtio-serial port "agent". With --channel-fd and --no-init it serves an
// already-open socket instead and does none of the PID-1 work, which is how
// the tests run the real agent on the host.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "guest/agent/agent.hpp"
#include "guest/agent/cgroup.hpp"
#include "guest/agent/grow_fs.hpp"
#include "guest/agent/log.hpp"
#include "guest/agent/loop.hpp"
#include "guest/agent/netconf.hpp"
#include "guest/agent/pid1.hpp"
#include "guest/agent/spawn.hpp"

namespace {

using vesicle::agent::log_line;
using vesicle::agent::Options;

constexpr const char* kUsage =
    "usage: vesicle-agent [flags]\n"
    "  (no flags)              PID 1 in a vesicle VM: set up the machine, serve the\n"
    "                          virtio-serial port named \"agent\"\n"
    "  --channel-fd=N          serve this open socket instead of the port; exit at its end\n"
    "  --no-init               skip the PID-1 work (mounts, hostname, lo, power-off)\n"
    "  --port=NAME             virtio-serial port name (default agent)\n"
    "  --repl=PATH             the REPL driver (default /usr/lib/vesicle/repl.py)\n"
    "  --python=PROGRAM        python interpreter, a path or a name on PATH (default python3)\n"
    "  --home=DIR              HOME and default cwd of commands and the REPL (default /root)\n"
    "  --max-output-bytes=N    default output cap per exec (default 8388608)\n"
    "  --repl-grace-ms=N       wait after interrupting a cell before killing the REPL\n"
    "                          (default 2000)\n"
    "  --machine-id-path=PATH  where an identity refresh writes the machine-id (default\n"
    "                          /etc/machine-id; with --no-init: not written unless given)\n"
    "  --version, --help\n";

std::optional<std::uint64_t> parse_number(std::string_view text) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  std::uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return value;
}

// Returns an error text for a bad command line, or empty.
std::string parse_flags(int argc, char** argv, Options& options) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const auto eq = arg.find('=');
    const std::string_view name = arg.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? "" : arg.substr(eq + 1);
    const bool has_value = eq != std::string_view::npos;
    if (name == "--help" || name == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (name == "--version") {
      std::puts("vesicle-agent " VESICLE_VERSION);
      std::exit(0);
    } else if (name == "--no-init" && !has_value) {
      options.init = false;
    } else if (name == "--channel-fd" && has_value) {
      auto fd = parse_number(value);
      if (!fd || *fd > 1u << 20) return "--channel-fd needs a file descriptor number";
      options.channel_fd = static_cast<int>(*fd);
    } else if (name == "--port" && has_value && !value.empty()) {
      options.port_name = value;
    } else if (name == "--repl" && has_value && !value.empty()) {
      options.repl_path = value;
    } else if (name == "--python" && has_value && !value.empty()) {
      options.python = value;
    } else if (name == "--home" && has_value && !value.empty() && value.front() == '/') {
      options.home = value;
    } else if (name == "--max-output-bytes" && has_value) {
      auto bytes = parse_number(value);
      if (!bytes || *bytes == 0) return "--max-output-bytes needs a positive number";
      options.default_max_output_bytes = *bytes;
    } else if (name == "--machine-id-path" && has_value && !value.empty() && value.front() == '/') {
      options.machine_id_path = value;
    } else if (name == "--repl-grace-ms" && has_value) {
      auto ms = parse_number(value);
      if (!ms || *ms > 600000) return "--repl-grace-ms needs a number of milliseconds";
      options.repl_grace = std::chrono::milliseconds(*ms);
    } else {
      return "unknown or malformed flag \"" + std::string(arg) + "\"";
    }
  }
  if (options.channel_fd >= 0 && options.init) {
    return "--channel-fd is the host test mode and needs --no-init";
  }
  return {};
}

// Children inherit fds 0-2 for nothing, but the agent's own numbering must
// not put a pipe there: spawn() relies on 0-2 being taken.
void ensure_standard_fds() {
  for (int fd = 0; fd < 3; ++fd) {
    if (::fcntl(fd, F_GETFD) >= 0) continue;
    const int opened =
        ::open(fd == 0 ? "/dev/null" : "/dev/console", fd == 0 ? O_RDONLY : O_WRONLY);
    if (opened >= 0 && opened != fd) {
      ::dup2(opened, fd);
      ::close(opened);
    } else if (opened < 0) {
      ::open("/dev/null", O_RDWR);
    }
  }
}

} // namespace

int main(int argc, char** argv) {
  Options options;
  const std::string problem = parse_flags(argc, argv, options);
  const bool pid1 = ::getpid() == 1;
  if (!problem.empty()) {
    log_line(problem);
    if (!pid1) {
      std::fputs(kUsage, stderr);
      return 2;
    }
    // As PID 1 exiting panics the kernel; serve with the defaults instead.
    options = Options{};
  }
  // On the host (--no-init) the test names a file of its own; the host's
  // /etc/machine-id is never the default there.
  if (options.init && options.machine_id_path.empty()) options.machine_id_path = "/etc/machine-id";
  if (options.init && !pid1) {
    log_line("not running as PID 1; the PID-1 mode would mount over this machine's "
             "filesystems. Pass --no-init (and --channel-fd=N to serve a socket).");
    return 2;
  }

  ensure_standard_fds();
  vesicle::agent::raise_fd_limit();
  // A closed channel or pipe must come back as EPIPE, not kill the agent.
  ::signal(SIGPIPE, SIG_IGN);
  if (options.init) {
    ::signal(SIGTERM, SIG_IGN);
    ::signal(SIGINT, SIG_IGN);
    ::signal(SIGHUP, SIG_IGN);
    vesicle::agent::init_machine();
    // The disk is the sandbox's quota, the image's filesystem only what its
    // files need: fill the disk before anything runs (a no-op in a VM that
    // grew before, e.g. a template's).
    if (auto grown = vesicle::agent::grow_root_fs("/", 0, std::chrono::milliseconds(0)); !grown) {
      log_line(grown.error().message());
    } else if (grown->fs_bytes != grown->fs_bytes_before) {
      log_line("root filesystem grown from " + std::to_string(grown->fs_bytes_before >> 20) +
               " to " + std::to_string(grown->fs_bytes >> 20) + " MiB");
    }
    log_line(vesicle::agent::configure_network());
    if (auto cgroup = vesicle::agent::setup_workload_cgroup(); cgroup) {
      options.workload_cgroup = *cgroup;
    } else {
      log_line(cgroup.error().message());
    }
  } else {
    // Orphans of commands (nohup daemons) become the agent's children, so it
    // can reap them and kill them when it exits.
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  }

  for (int attempt = 1;; ++attempt) {
    auto loop = vesicle::agent::Loop::create();
    if (!loop) {
      log_line(loop.error().message());
      if (!options.init) return 1;
      if (attempt >= 30) {
        vesicle::agent::power_off();
      }
      ::sleep(1);
      continue;
    }
    vesicle::agent::Agent agent(**loop, options);
    agent.start();
    (*loop)->run();
    // run() returns only when stopped; the agent has nothing to stop it, so
    // this is a bug: as PID 1, power off cleanly rather than panic.
    agent.stop_everything();
    if (!options.init) return 0;
    vesicle::agent::power_off();
  }
}
