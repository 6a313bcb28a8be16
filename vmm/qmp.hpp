// A QMP (QEMU Machine Protocol) client over QEMU's monitor Unix socket.
// One reader coroutine takes every line QEMU sends: command replies go to
// the caller that sent the matching "id", events to the event handler.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include <utility> // before Boost 1.74's awaitable.hpp, which uses std::exchange without it

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "common/result.hpp"
#include "vmm/json.hpp"

namespace vesicle::vmm {

namespace asio = boost::asio;

class QmpClient {
public:
  // Called for each asynchronous event: its name ("SHUTDOWN") and the whole
  // message (with "data" and "timestamp").
  using EventHandler = std::function<void(const std::string& event, const json::Value& message)>;

  // Connects, reads the greeting and negotiates capabilities. Retries while
  // the socket does not exist yet or refuses connections, until `deadline`
  // or until `abandon` returns true (QEMU exited).
  static asio::awaitable<Result<std::shared_ptr<QmpClient>>>
  connect(asio::any_io_executor executor, std::filesystem::path socket_path,
          std::chrono::steady_clock::time_point deadline, std::function<bool()> abandon = {});

  virtual ~QmpClient() = default;

  // Runs `command`; the "return" member of the reply, or an Error carrying
  // QEMU's error class and description. Fails after `timeout` so a wedged
  // QEMU cannot hang the caller. No default arguments: pass named objects
  // (g++ 12 destroys braced temporaries in a co_await expression twice).
  virtual asio::awaitable<Result<json::Value>> execute(std::string command, json::Object arguments,
                                                       std::chrono::milliseconds timeout) = 0;

  // execute, with `fd` attached to the command's bytes (SCM_RIGHTS): how
  // QEMU's getfd receives a file. The kernel gives QEMU its own copy as the
  // bytes are sent; the caller still owns `fd` and may close it once this
  // returns, whatever the reply.
  virtual asio::awaitable<Result<json::Value>>
  execute_with_fd(std::string command, json::Object arguments, int fd,
                  std::chrono::milliseconds timeout) = 0;

  virtual void on_event(EventHandler handler) = 0;
  virtual bool connected() const = 0;
  virtual void close() = 0;
};

} // namespace vesicle::vmm
