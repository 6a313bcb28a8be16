// The host side of the agent channel: one connection to one guest agent,
// requests multiplexed by id (see messages/guest.proto).
//
// Threading: an AgentClient lives on one asio executor (strand or
// single-threaded io_context); call it only from coroutines running there.
// When the channel breaks (the VM died, the agent exited, a bad frame), every
// pending and later call completes with an Error whose detail says so; no
// call ever hangs on a dead VM.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/any_io_executor.hpp>

#include "common/result.hpp"
#include "messages/guest.pb.h"

namespace vesicle::vmm {

namespace asio = boost::asio;

// Called for each streamed event of an exec (stdout, stderr, result, error),
// in order, as it arrives. It must not block.
using ExecEventSink = std::function<void(const guest::Event&)>;

// Called for each chunk of a download; the next chunk is not delivered until
// the returned awaitable completes, which is how a slow consumer slows the
// transfer instead of growing a buffer.
using ChunkSink = std::function<asio::awaitable<Result<void>>(std::string_view)>;

// A file being streamed into the guest.
class Upload {
public:
  virtual ~Upload() = default;
  // Sends `data` (any size; cut into chunks). Fails early if the agent
  // already refused the file.
  virtual asio::awaitable<Result<void>> write(std::string_view data) = 0;
  // Commits the file (atomic rename in the guest) and returns its size.
  virtual asio::awaitable<Result<guest::Done>> finish() = 0;
  // Abandons the upload; the target path is left as it was.
  virtual asio::awaitable<void> abort() = 0;
};

class AgentClient {
public:
  virtual ~AgentClient() = default;

  virtual asio::awaitable<Result<guest::Pong>> ping(std::chrono::milliseconds timeout) = 0;
  virtual asio::awaitable<Result<guest::Info>> info() = 0;

  // Runs a cell or a command. Streamed events go to `sink`; the result is
  // the terminal Exit. A Failure from the agent becomes an Error.
  virtual asio::awaitable<Result<guest::Exit>> exec_python(guest::ExecPython request,
                                                           ExecEventSink sink) = 0;
  virtual asio::awaitable<Result<guest::Exit>> exec_bash(guest::ExecBash request,
                                                         ExecEventSink sink) = 0;

  virtual asio::awaitable<Result<std::unique_ptr<Upload>>>
  begin_upload(std::string path, std::uint32_t mode, bool make_parents) = 0;

  // Streams the whole file to `sink` in order; returns its size and mode.
  virtual asio::awaitable<Result<guest::Done>> download(std::string path, ChunkSink sink) = 0;

  // Asks the agent to sync and power off; returns once it acknowledged.
  virtual asio::awaitable<Result<void>> shutdown() = 0;

  // False once the channel has broken.
  virtual bool connected() const = 0;
};

} // namespace vesicle::vmm
