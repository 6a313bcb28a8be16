// Runs the real vesicle-gateway for the cluster test and benchmark
// (docs/cluster.md).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/hostd/hostd_process.hpp" // run_for_stdout, key_in

namespace vesicle::testing {

// A loopback TCP port nothing listens on right now.
unsigned short free_port();

// vesicle-gateway on `home`/gateway.json, its REST API on a free loopback
// port and its actor port on `actor_port` (a restart keeps it: the nodes
// reconnect there), stderr to `home`/gateway.log. Stopped with SIGTERM when
// the object goes away.
class GatewayProcess {
public:
  GatewayProcess(const std::filesystem::path& binary, const std::filesystem::path& home,
                 unsigned short actor_port);
  ~GatewayProcess();
  GatewayProcess(const GatewayProcess&) = delete;
  GatewayProcess& operator=(const GatewayProcess&) = delete;

  void stop();
  unsigned short port() const { return port_; }

private:
  pid_t pid_ = -1;
  unsigned short port_ = 0;
};

} // namespace vesicle::testing
