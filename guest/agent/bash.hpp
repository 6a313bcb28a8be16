// ExecBash: one `/bin/bash -c` in its own session, output streamed, ended
// when bash exits (not when its pipes close).
#pragma once

#include <memory>

#include "guest/agent/agent.hpp"
#include "guest/agent/output.hpp"

namespace vesicle::agent {

class BashCommand : public Request {
public:
  BashCommand(Agent& agent, std::uint64_t id, guest::ExecBash request);
  ~BashCommand() override;

  // Spawns bash; a request that cannot start finishes with a Failure.
  void begin();
  void cancel() override;

private:
  void deliver(bool is_stderr, std::string_view data);
  bool wants_bytes() const;
  void on_exit(int status);
  void kill_group();
  void finish_exit();

  guest::ExecBash request_;
  OutputBudget budget_;
  Timer timer_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = 0;
  bool timed_out_ = false;
  int pending_drains_ = 0;
  std::uint64_t started_us_ = 0;
  std::uint64_t ended_us_ = 0;
  std::unique_ptr<PipeReader> out_;
  std::unique_ptr<PipeReader> err_;
};

} // namespace vesicle::agent
