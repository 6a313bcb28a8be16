// The machine's one persistent Python REPL (guest/repl/repl.py) and the
// queue of cells that run in it, one at a time.
//
// A cell ends in one of three ways:
//  - the REPL replies (after flushing its output): the agent reads what the
//    stdout/stderr pipes hold at that moment, then sends result, error and
//    Exit, so no output of the cell arrives after its Exit;
//  - the timeout (or a Cancel) fires: SIGINT, which the REPL turns into a
//    KeyboardInterrupt and a normal reply; if no reply comes within the
//    grace period (the cell ignores SIGINT, is stopped, or is stuck in C),
//    the REPL's process group is killed;
//  - the REPL dies (os._exit, a signal, the OOM killer): the cell ends with
//    repl_restarted and an error saying the state was lost; the next cell
//    gets a fresh REPL.
//
// Display outputs (messages/guest.proto's Display) come on the reply pipe
// while the cell runs. Each is sent after the output the REPL printed
// before it (the agent reads what the stdout/stderr pipes hold first), and
// once it is out and the channel has room the agent answers "shown", which
// the cell waits for: output printed after a display cannot overtake it,
// and a cell that makes images faster than the host takes them is slowed
// down instead of growing the agent's memory. Until then the reply pipe is
// not read either (for displays from other threads, which do not wait).
#pragma once

#include <sys/types.h>

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "guest/agent/agent.hpp"
#include "guest/agent/output.hpp"
#include "guest/agent/repl_protocol.hpp"

namespace vesicle::agent {

class PythonCell : public Request {
public:
  PythonCell(Agent& agent, std::uint64_t id, guest::ExecPython request);
  void cancel() override;

private:
  friend class Repl;
  void deliver(bool is_stderr, std::string_view data);
  bool wants_bytes() const { return !orphaned() && !budget_.exhausted(); }

  guest::ExecPython request_;
  OutputBudget budget_;
  std::uint64_t started_us_ = 0;
  bool running_ = false;
  bool timed_out_ = false;
  bool state_lost_before_ = false;
};

class Repl {
public:
  explicit Repl(Agent& agent);
  ~Repl();

  // Starts the REPL process now so the first cell does not wait for Python
  // to start; a failure is only logged (the first cell retries and reports).
  void start();
  void submit(std::shared_ptr<PythonCell> cell);
  void cancel(PythonCell* cell);
  pid_t pid() const;
  std::size_t queued_cells() const { return queue_.size(); }
  // Has the REPL reseed the global generators of `random` and numpy from
  // `seed` (after an identity refresh). The message goes into the command
  // pipe, which the REPL reads only between cells: an idle REPL reseeds at
  // once, a busy one after its cell and before the next, since every later
  // cell's command is written behind it. No REPL process: nothing to do, a
  // new one seeds itself from the (refreshed) kernel.
  void reseed(std::string seed);
  // Kills the REPL's process group; for agent exit and power-off.
  void terminate();

private:
  struct Process {
    pid_t pid = -1;
    UniqueFd command; // agent -> REPL, non-blocking
    UniqueFd reply;   // REPL -> agent, non-blocking
    Watch command_watch;
    Watch reply_watch;
    std::unique_ptr<PipeReader> out;
    std::unique_ptr<PipeReader> err;
    std::string command_pending;
    std::string reply_buffer;
    std::uint64_t started_us = 0;
    std::string cgroup;                        // "" without cgroups
    unsigned long long oom_kills_at_start = 0; // its cgroup's oom_kill count
    bool exited = false;
    int status = 0;
    bool killed = false;
  };
  struct Outcome {
    std::optional<std::string> result;
    std::optional<guest::PythonError> error;
    bool repl_died = false;
  };
  enum class Phase { kIdle, kRunning, kDraining };
  struct RoomWait : RoomWaiter {
    explicit RoomWait(Repl& owner) : repl(owner) {}
    void on_room() override { repl.resume_replies(); }
    Repl& repl;
  };

  Result<void> launch();
  void run_next();
  void write_command();
  void on_reply_readable();
  void on_reply(const repl_protocol::Fields& fields);
  void on_display(const repl_protocol::Fields& fields);
  // Answers display message `fields` with "shown" (repl_protocol.hpp).
  void send_shown(const repl_protocol::Fields& fields);
  void display_drained();
  void emit_display(PythonCell& cell);
  void resume_replies();
  void on_process_exit(int status);
  void interrupt();
  void kill_process(const std::string& why);
  void drain_then_finish(Outcome outcome);
  // Reads what the stdout and stderr pipes hold now, then calls `then`.
  void drain_pipes(std::function<void()> then);
  void finish_current();
  void retire_process();
  void deliver(bool is_stderr, std::string_view data);
  bool wants_bytes() const;

  Agent& agent_;
  std::unique_ptr<Process> process_;
  std::deque<std::shared_ptr<PythonCell>> queue_;
  std::shared_ptr<PythonCell> current_;
  Phase phase_ = Phase::kIdle;
  Outcome outcome_;
  int pending_drains_ = 0;
  std::uint64_t sequence_ = 0;
  Timer timeout_timer_;
  Timer grace_timer_;
  // The REPL died while no cell ran: the next cell starts in a fresh one and
  // must say that earlier state is gone.
  bool state_lost_ = false;
  std::string python_;
  // The display waiting for the output printed before it; while it waits
  // (and then while the channel is full) the reply pipe is not read.
  std::optional<guest::Display> display_;
  std::string display_number_; // its 'i', answered once it is sent on
  bool replies_paused_ = false;
  RoomWait room_wait_{*this};
};

} // namespace vesicle::agent
