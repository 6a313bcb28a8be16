// Runs the real hostd binary for integration tests and the benchmark: a
// temporary state, runtime and shm directory, a free loopback port, the
// first API key read from its stdout. Stopped with SIGTERM (SIGKILL if it
// does not stop) and its directories removed when the object goes away.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace vesicle::testing {

// Runs `args` (args[0] a path) and returns its stdout; throws unless it
// exits 0.
std::string run_for_stdout(const std::vector<std::string>& args);
// The first "vsk_..." API key in `text` (hostd's or vesicle-gateway's
// --new-key output); throws when there is none.
std::string key_in(const std::string& text);

// A server start_listening started: its pid, and the port of its
// "listening on http://127.0.0.1:PORT" line on stdout (0 when it did not
// say so within 20 s; it may still run then). `said`: its stdout so far.
struct Listening {
  pid_t pid = -1;
  unsigned short port = 0;
  std::string said;
};
// Starts `args` (args[0] a path) with stderr to `log` (appended to, or
// truncated first) and waits for its "listening on" line.
Listening start_listening(const std::vector<std::string>& args, const std::filesystem::path& log,
                          bool append);

struct HostdOptions {
  std::filesystem::path binary;
  std::filesystem::path images_dir;
  unsigned max_sandboxes = 3;
  unsigned memory_mib = 512;
  unsigned request_timeout_s = 30;
  // Extra fields for the JSON config, e.g. the warm pools. By default the
  // pools are off: most tests want a quiet host and cold boots.
  std::string extra_config = "\"disable_pools\": true";
  // When set, hostd's runtime, state and templates live under this directory
  // (and its memory files in /dev/shm/<its name>), which the test owns and
  // which outlives this process: a second HostdProcess with the same home
  // is hostd restarted.
  std::filesystem::path home;
  // If set, the configuration's "network" section, as a JSON object.
  std::string network_json;
  // More fields of the "confinement" section, e.g. a uid range of its own
  // ("\"uid_first\": ..., \"uid_count\": ...") when several hostds run.
  std::string confinement_extra;
  // hostd's prestarted_vmms; -1: its default (1). 0 here: these tests count
  // a host's QEMUs, and pre-started ones would be more (the SDK suite's
  // test_prestarted.py and test_fork.py run with them).
  int prestarted_vmms = 0;
};

class HostdProcess {
public:
  explicit HostdProcess(HostdOptions options);
  ~HostdProcess();
  HostdProcess(const HostdProcess&) = delete;
  HostdProcess& operator=(const HostdProcess&) = delete;

  pid_t pid() const { return pid_; }
  unsigned short port() const { return port_; }
  const std::string& key() const { return key_; }
  // Another key (made with --new-key before the start).
  const std::string& other_key() const { return other_key_; }
  // An admin key (--new-key --admin): /metrics and /v1/admin need one.
  const std::string& admin_key() const { return admin_key_; }
  // Where hostd keeps its keys file (hostd --state-dir).
  std::filesystem::path state_dir() const { return dir_ / "state"; }
  const std::filesystem::path& runtime_dir() const { return runtime_dir_; }
  const std::filesystem::path& shm_dir() const { return shm_dir_; }
  std::string log() const; // hostd's stderr so far

  // SIGTERM, then waits; returns the exit status (-1 on timeout, then killed).
  int stop(std::chrono::seconds grace = std::chrono::seconds(30));
  // SIGKILL, as a crash would; waits until it is reaped.
  void kill_hard();

  // Processes whose command line mentions this hostd's runtime dir (its
  // QEMUs), and what is left in its runtime and shm dirs.
  std::vector<pid_t> qemu_pids() const;
  std::vector<std::string> leftover_files() const;
  std::size_t open_fds() const;

private:
  void start(const HostdOptions& options);

  std::filesystem::path dir_;
  std::filesystem::path runtime_dir_;
  std::filesystem::path shm_dir_;
  bool owns_dirs_ = true;
  pid_t pid_ = -1;
  unsigned short port_ = 0;
  std::string key_;
  std::string other_key_;
  std::string admin_key_;
};

} // namespace vesicle::testing
