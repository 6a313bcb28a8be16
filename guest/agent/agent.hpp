// The agent: reads requests from the host channel, runs each as a Request
// multiplexed by id, and answers with its events. Single-threaded; every
// request lives on the one event loop.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "guest/agent/channel.hpp"
#include "guest/agent/loop.hpp"
#include "messages/guest.pb.h"

namespace vesicle::agent {

struct Options {
  // PID-1 duties (mounts, hostname, loopback, power-off). Off with --no-init.
  bool init = true;
  // >= 0: serve this already-open socket (host test mode) instead of the
  // virtio port; end of file ends the agent.
  int channel_fd = -1;
  std::string port_name = "agent";
  std::string repl_path = "/usr/lib/vesicle/repl.py";
  std::string python = "python3";
  // HOME of children and the default working directory.
  std::string home = "/root";
  std::uint64_t default_max_output_bytes = 8u << 20;
  // How long an interrupted cell has to come back before its REPL is killed.
  std::chrono::milliseconds repl_grace{2000};
  // The cgroup folder user processes are moved into (PID-1 mode sets it up,
  // see cgroup.hpp); empty: they stay in the agent's cgroup.
  std::string workload_cgroup;
  // Where RefreshIdentity writes the machine-id. main() makes it
  // /etc/machine-id in PID-1 mode; empty (the test mode's default): checked,
  // not written. The kernel steps of the refresh follow `init`.
  std::string machine_id_path;
};

class Agent;
class OutputBudget;
class Repl;

// One request in flight. It ends with exactly one terminal event (finish);
// after that the Agent forgets its id, and the object is destroyed once the
// current loop iteration is over, so a request may finish from inside its
// own callbacks.
class Request {
public:
  Request(Agent& agent, std::uint64_t id) : agent_(agent), id_(id) {}
  virtual ~Request() = default;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  std::uint64_t id() const { return id_; }
  bool orphaned() const { return orphaned_; }
  bool finished() const { return finished_; }

  // The host asked to cancel: an exec is treated as timed out, a transfer is
  // abandoned. The request still ends with its own terminal event.
  virtual void cancel() = 0;
  // The host that sent the request is gone: stop it and stay silent.
  void orphan() {
    orphaned_ = true;
    cancel();
  }

protected:
  void emit(guest::Event event);
  void finish(guest::Event event);
  // Emits what `budget` admits of a command's output as a stdout or stderr
  // event (nothing once the budget is spent).
  void emit_output(OutputBudget& budget, bool is_stderr, std::string_view data);

  Agent& agent_;

private:
  std::uint64_t id_;
  bool orphaned_ = false;
  bool finished_ = false;
};

class Agent {
public:
  Agent(Loop& loop, Options options);
  ~Agent();

  // Opens the channel and starts the REPL.
  void start();

  Loop& loop() { return loop_; }
  Channel& channel() { return *channel_; }
  Repl& repl() { return *repl_; }
  const Options& options() const { return options_; }
  std::uint64_t started_us() const { return started_us_; }

  void send(std::uint64_t id, guest::Event event);
  void finished(Request* request);

  // Kills every child and removes temporary files; for exit and power-off.
  void stop_everything();

private:
  void on_frame(std::string_view payload);
  void dispatch(guest::Request& request);
  void handle_write_file(guest::Request& request);
  void handle_cancel(std::uint64_t id, std::uint64_t target);
  void handle_shutdown(std::uint64_t id);
  void handle_refresh_identity(std::uint64_t id, const guest::RefreshIdentity& identity);
  void on_disconnected();
  void on_closed(int status);
  void adopt(std::shared_ptr<Request> request);
  void remember_dropped_upload(std::uint64_t id);

  Loop& loop_;
  Options options_;
  std::uint64_t started_us_;
  std::unique_ptr<Channel> channel_;
  std::unique_ptr<Repl> repl_;
  std::unordered_map<std::uint64_t, Request*> by_id_;
  std::unordered_map<Request*, std::shared_ptr<Request>> live_;
  // Uploads that failed before their last chunk: the chunks the host had
  // already sent are dropped quietly instead of each getting a reply.
  std::deque<std::uint64_t> dropped_order_;
  std::unordered_set<std::uint64_t> dropped_uploads_;
  bool shutting_down_ = false;
  friend class Request;
};

} // namespace vesicle::agent
