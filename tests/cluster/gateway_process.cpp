#include "tests/cluster/gateway_process.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <thread>

namespace vesicle::testing {

unsigned short free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  socklen_t size = sizeof address;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size);
  ::close(fd);
  return ntohs(address.sin_port);
}

GatewayProcess::GatewayProcess(const std::filesystem::path& binary,
                               const std::filesystem::path& home, unsigned short actor_port) {
  const auto log = home / "gateway.log";
  auto started =
      start_listening({binary.string(), "--config", (home / "gateway.json").string(), "--listen",
                       "127.0.0.1:0", "--actor-listen", "127.0.0.1:" + std::to_string(actor_port)},
                      log, true);
  pid_ = started.pid;
  if (started.port == 0) {
    stop();
    std::ifstream in(log);
    throw std::runtime_error("vesicle-gateway did not start: " + started.said +
                             std::string(std::istreambuf_iterator<char>(in), {}));
  }
  port_ = started.port;
}

GatewayProcess::~GatewayProcess() {
  stop();
}

void GatewayProcess::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  int status = 0;
  // A gateway that hangs on its way out is killed after 10 s.
  for (int i = 0; i < 100 && ::waitpid(pid_, &status, WNOHANG) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (::waitpid(pid_, &status, WNOHANG) == 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
  }
  pid_ = -1;
}

} // namespace vesicle::testing
