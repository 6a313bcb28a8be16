// File transfer: WriteFile streams into a temporary file beside the target
// and renames it on the last chunk; ReadFile streams a regular file out,
// paced by the channel's output queue. Neither ever opens a FIFO, socket or
// device for I/O, so no path the host names can block the agent.
#pragma once

#include <string>

#include "common/unique_fd.hpp"
#include "guest/agent/agent.hpp"

namespace vesicle::agent {

class Upload : public Request {
public:
  Upload(Agent& agent, std::uint64_t id) : Request(agent, id) {}
  ~Upload() override;

  // The first WriteFile of the id: checks the target and opens the
  // temporary file, then takes its data like any other chunk.
  void begin(const guest::WriteFile& first);
  // Every WriteFile of the id, the first included.
  void take(const guest::WriteFile& chunk);
  void cancel() override;

private:
  void fail(guest::Event failure);
  void commit();
  void remove_temporary();

  std::string target_;
  std::string temporary_;
  std::uint32_t mode_ = 0644;
  UniqueFd fd_;
  std::uint64_t size_ = 0;
};

class Download : public Request, public RoomWaiter {
public:
  Download(Agent& agent, std::uint64_t id) : Request(agent, id) {}

  void begin(const guest::ReadFile& request);
  void cancel() override;
  void on_room() override;

private:
  void pump();

  std::string path_;
  UniqueFd fd_;
  std::uint64_t position_ = 0;
  std::uint64_t end_ = 0; // 0: to end of file
  bool bounded_ = false;
  std::uint32_t mode_ = 0;
  bool scheduled_ = false;
};

// Checks a path from the host: absolute, no NUL, not too long, not ending
// in a slash. The message says what is wrong; empty when the path is fine.
std::string check_path(const std::string& path);

} // namespace vesicle::agent
