// Runs the real vesicle-agent on the host in its test mode (--channel-fd
// --no-init) over a socketpair, and speaks guest.proto to it: send
// requests, collect the events of one id while events of other ids wait for
// their own collectors.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/unique_fd.hpp"
#include "messages/framing.hpp"
#include "messages/guest.pb.h"

namespace vesicle::test {

using namespace std::chrono_literals;

// A directory removed (with everything in it) when the object goes.
class TempDir {
public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

private:
  std::filesystem::path path_;
};

bool is_terminal(const guest::Event& event);

// What an exec produced, gathered from its events.
struct ExecOutcome {
  std::string out;
  std::string err;
  std::optional<std::string> result;
  std::vector<guest::Display> displays;
  std::optional<guest::PythonError> error;
  std::optional<guest::Exit> exit;
  std::optional<guest::Failure> failure;
  std::vector<guest::Event> events;
  // When each event arrived, relative to the send.
  std::vector<std::chrono::steady_clock::duration> arrivals;
  // Which read of the channel brought each event (events of one read came
  // in one write of the agent's, or writes the host had not read apart).
  std::vector<std::uint64_t> reads;
};

// A connection to an agent: requests out, events in, by id.
class AgentClient {
public:
  AgentClient() = default;
  virtual ~AgentClient() = default;
  AgentClient(const AgentClient&) = delete;
  AgentClient& operator=(const AgentClient&) = delete;

  std::uint64_t next_id() { return ++last_id_; }

  void send(const guest::Request& request);
  void send_raw(std::string_view bytes);
  // Shuts the harness's end of the channel; the agent sees end of file.
  void close_channel();

  // The next event of `id`, or nullopt at the deadline or channel end.
  std::optional<guest::Event> next_event(std::uint64_t id, std::chrono::milliseconds timeout);
  // Every event of `id` up to and including its terminal one.
  std::vector<guest::Event> collect(std::uint64_t id, std::chrono::milliseconds timeout);

  ExecOutcome python(const std::string& code, std::uint32_t timeout_ms = 0,
                     std::uint64_t max_output = 0,
                     std::chrono::milliseconds deadline = std::chrono::milliseconds(60000));
  ExecOutcome bash(const std::string& command, std::map<std::string, std::string> env = {},
                   const std::string& cwd = "", std::uint32_t timeout_ms = 0,
                   std::uint64_t max_output = 0,
                   std::chrono::milliseconds deadline = std::chrono::milliseconds(60000));
  // Gathers the events of an exec already sent.
  ExecOutcome gather(std::uint64_t id, std::chrono::milliseconds deadline);

  // Uploads `data` in chunks of `chunk` bytes; returns the terminal event.
  guest::Event write_file(const std::string& path, const std::string& data, std::uint32_t mode = 0,
                          bool make_parents = false, std::size_t chunk = 256 << 10);
  // Downloads; `data` gets the FileData bytes; returns the terminal event.
  guest::Event read_file(const std::string& path, std::string& data, std::uint64_t offset = 0,
                         std::uint64_t length = 0);

protected:
  // Takes over a connected stream socket; any earlier one is closed and
  // its undelivered events are dropped.
  void attach(UniqueFd channel);

private:
  bool pump(std::chrono::steady_clock::time_point deadline);

  UniqueFd channel_;
  wire::FrameDecoder decoder_;
  struct Received {
    guest::Event event;
    std::uint64_t read = 0; // the count of channel reads when it came
  };
  std::map<std::uint64_t, std::deque<Received>> pending_;
  std::uint64_t reads_ = 0;
  std::uint64_t last_read_ = 0; // of the event next_event returned last
  std::uint64_t last_id_ = 1000;
  bool channel_ended_ = false;
};

// The agent binary run on the host in its test mode.
class Agent : public AgentClient {
public:
  struct Config {
    std::vector<std::string> extra_args;
  };
  Agent() : Agent(Config{}) {}
  explicit Agent(Config config);
  // Closes the channel, waits for the agent to exit (it kills its own
  // descendants), and kills whatever is left.
  ~Agent() override;

  pid_t pid() const { return pid_; }
  const TempDir& home() const { return home_; }

  // Waits for the agent to exit; its wait status, or nullopt at the deadline.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  // The agent's peak resident memory in KiB (VmHWM).
  std::uint64_t peak_rss_kib() const;

private:
  TempDir home_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

// A QEMU microVM booted from the images in `images_dir` (vmlinuz,
// initrd.img, rootfs.ext4), its disk a qcow2 overlay in a temporary folder,
// the agent's port on a Unix socket there.
class VmAgent : public AgentClient {
public:
  explicit VmAgent(const std::string& images_dir);
  // Kills QEMU if it still runs; removes the overlay, socket and log.
  ~VmAgent() override;

  // Connects to the agent's socket (again); false if QEMU is gone.
  bool connect();
  // Pings until the agent answers; false at the deadline.
  bool wait_ready(std::chrono::milliseconds timeout);
  // Waits for QEMU to exit; its wait status, or nullopt at the deadline.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  std::string console_log() const;
  pid_t qemu_pid() const { return pid_; }

private:
  TempDir dir_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

// Kills every descendant of this test process; the test binary makes itself
// a subreaper so that orphans of the agent's commands end up here.
void kill_test_descendants();

// True when /proc/<pid> is a live process (not a zombie).
bool process_alive(pid_t pid);

} // namespace vesicle::test
