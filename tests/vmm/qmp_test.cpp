// The QMP client against a scripted monitor on a Unix socket: what it
// accepts before the greeting. No QEMU.
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include <optional>
#include <utility> // before Boost 1.74's awaitable.hpp, which uses std::exchange

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "vmm/qmp.hpp"

namespace vesicle::vmm {
namespace {

namespace fs = std::filesystem;

// Serves one connection: writes `before`, then answers the first line read
// (qmp_capabilities, id 1 or more) with an empty return carrying its id.
class ScriptedMonitor {
public:
  ScriptedMonitor(fs::path path, std::string before) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof address.sun_path, "%s", path_.c_str());
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    EXPECT_EQ(::listen(fd_, 1), 0);
    thread_ = std::thread([this, before = std::move(before)] {
      int client = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) return;
      // A client that refused the greeting sends nothing: do not wait for it.
      timeval two_seconds{2, 0};
      ::setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &two_seconds, sizeof two_seconds);
      // send, not write: a client that refused the greeting may be gone,
      // and a write to it would raise SIGPIPE.
      (void)!::send(client, before.data(), before.size(), MSG_NOSIGNAL);
      std::string line;
      char c = 0;
      while (::read(client, &c, 1) == 1 && c != '\n')
        line += c;
      auto at = line.find("\"id\":");
      std::string id = at == std::string::npos
                           ? "0"
                           : line.substr(at + 5, line.find_first_of(",}", at) - at - 5);
      std::string reply = "{\"return\": {}, \"id\": " + id + "}\n";
      (void)!::send(client, reply.data(), reply.size(), MSG_NOSIGNAL);
      ::sleep(1); // the client reads the reply before the close
      ::close(client);
    });
  }
  ~ScriptedMonitor() {
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
    fs::remove(path_);
  }

private:
  fs::path path_;
  int fd_ = -1;
  std::thread thread_;
};

constexpr const char* kGreeting =
    R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}})"
    "\n";
constexpr const char* kResumeEvent =
    R"({"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}})"
    "\n";

Result<std::shared_ptr<QmpClient>> connect_to(const std::string& before) {
  const fs::path path =
      fs::temp_directory_path() / ("vesicle-qmp-test-" + std::to_string(::getpid()));
  fs::remove(path);
  ScriptedMonitor monitor(path, before);
  boost::asio::io_context io;
  std::optional<Result<std::shared_ptr<QmpClient>>> out;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        // Named locals, not temporaries in the co_await (g++ 12).
        auto executor = io.get_executor();
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        auto connected = co_await QmpClient::connect(executor, path, deadline);
        out.emplace(std::move(connected));
      },
      boost::asio::detached);
  io.run();
  return std::move(*out);
}

TEST(Qmp, AGreetingIsNegotiated) {
  auto client = connect_to(kGreeting);
  EXPECT_TRUE(client) << client.error().message();
}

// QEMU 7.2 can write an event on a connection it has just accepted, before
// its greeting (seen in CI: a RESUME as the VM started).
TEST(Qmp, EventsBeforeTheGreetingAreSkipped) {
  auto client = connect_to(std::string(kResumeEvent) + kGreeting);
  EXPECT_TRUE(client) << client.error().message();
}

// What is neither an event nor a greeting, or more events before the
// greeting than QEMU writes, is not QEMU's monitor: refused, saying what came.
TEST(Qmp, AMonitorThatDoesNotGreetIsRefused) {
  auto reply = connect_to(std::string(R"({"return": {}})") + "\n" + kGreeting);
  ASSERT_FALSE(reply);
  const auto said = reply.error().message();
  EXPECT_NE(said.find("expected a greeting, got"), std::string::npos) << said;
  EXPECT_NE(said.find("return"), std::string::npos) << said;

  std::string events;
  for (int i = 0; i < 9; ++i)
    events += kResumeEvent;
  auto flood = connect_to(events + kGreeting);
  ASSERT_FALSE(flood);
  const auto flood_said = flood.error().message();
  EXPECT_NE(flood_said.find("expected a greeting, got"), std::string::npos) << flood_said;
  EXPECT_NE(flood_said.find("RESUME"), std::string::npos) << flood_said;
}

} // namespace
} // namespace vesicle::vmm
