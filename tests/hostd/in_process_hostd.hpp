// hostd's Daemon in this process with the fake VMM driver, serving HTTP on
// a loopback port from its own io thread: the fixture the API tests over
// HTTP (api_test, tenant_api_test) build on. A test starts the actors,
// tunes the fake driver if it needs to, makes its configuration and keys,
// then starts the daemon.
#pragma once

#include <utility> // before Boost 1.74 asio, which needs std::exchange

#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "hostd/config.hpp"
#include "hostd/daemon.hpp"
#include "hostd/keys.hpp"
#include "messages/api.pb.h"
#include "messages/caf_types.hpp"
#include "tests/hostd/fake_driver.hpp"
#include "tests/hostd/http_client.hpp"
#include "tests/hostd/retrying_temp_dir.hpp"

namespace vesicle::testing {

// A JSON body as the API message M; a body that does not parse fails the test.
template <class M> M parse(const std::string& json) {
  M message;
  auto status = google::protobuf::util::JsonStringToMessage(json, &message);
  EXPECT_TRUE(status.ok()) << json;
  return message;
}

inline api::ErrorDetail error_of(const HttpResponse& response) {
  return parse<api::ErrorResponse>(response.body).error();
}

class InProcessHostdTest : public ::testing::Test {
protected:
  // `dir_prefix`: the name of the state directory in /tmp.
  explicit InProcessHostdTest(const std::string& dir_prefix) : dir(dir_prefix) {}
  void TearDown() override { stop(); }

  // The actor system and the fake driver.
  void start_actors() {
    // The actor system keeps a reference to its config: it must outlive it.
    actor_config = std::make_unique<caf::actor_system_config>();
    register_caf_types(*actor_config);
    actor_config->set("scheduler.max-threads", 2);
    actor_config->set("logger.console", caf::atom("none"));
    system = std::make_unique<caf::actor_system>(*actor_config);
    driver = std::make_unique<FakeDriver>(io.get_executor());
  }

  // After start_actors: hostd on `config` (its defaults applied) with
  // `keys`, listening on `port`.
  void start_daemon(const config::HostdConfig& config, hostd::KeyStore keys) {
    daemon = std::make_unique<hostd::Daemon>(io, *system, *driver, config, std::move(keys));
    auto started = daemon->start();
    ASSERT_TRUE(started) << started.error().message();
    port = daemon->endpoint().port();
    work.emplace(io.get_executor());
    thread = std::thread([this] { io.run(); });
  }

  // Shuts the daemon down (as hostd does on SIGTERM) and stops the actors.
  void stop() {
    if (!daemon) return;
    boost::asio::post(io, [this] {
      boost::asio::co_spawn(io, daemon->shutdown(), [this](std::exception_ptr) { work.reset(); });
    });
    thread.join();
    daemon.reset();
    driver.reset();
    system.reset();
    actor_config.reset();
  }

  HttpClient client(const std::string& key) { return HttpClient("127.0.0.1", port, key); }

  RetryingTempDir dir;
  boost::asio::io_context io;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work;
  std::unique_ptr<caf::actor_system_config> actor_config;
  std::unique_ptr<caf::actor_system> system;
  std::unique_ptr<FakeDriver> driver;
  std::unique_ptr<hostd::Daemon> daemon;
  std::thread thread;
  unsigned short port = 0;
};

} // namespace vesicle::testing
