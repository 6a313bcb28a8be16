// Small helpers of the benchmarks that drive hostd's (or a gateway's) REST
// API: a field of a JSON answer, waiting for a condition, destroying.
#pragma once

#include <chrono>
#include <functional>
#include <regex>
#include <stdexcept>
#include <string>
#include <thread>

#include "tests/hostd/http_client.hpp"

namespace vesicle::bench {

// The value of the first `"name":` in a flat JSON text, quotes dropped.
inline std::string field(const std::string& body, const std::string& name) {
  std::smatch match;
  if (!std::regex_search(body, match, std::regex("\"" + name + "\":\"?([^\",}]*)")))
    throw std::runtime_error("no " + name + " in " + body);
  return match[1].str();
}

// Polls `done` every `every` until it is true; throws after `timeout`.
inline void wait_until(const std::function<bool()>& done, std::chrono::seconds timeout,
                       const std::string& what,
                       std::chrono::milliseconds every = std::chrono::milliseconds(5)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline)
      throw std::runtime_error("timed out waiting for " + what);
    std::this_thread::sleep_for(every);
  }
}

inline void destroy(testing::HttpClient& http, const std::string& id) {
  auto deleted = http.request("DELETE", "/v1/sandboxes/" + id);
  if (deleted.status != 204) throw std::runtime_error("destroy: " + deleted.body);
}

} // namespace vesicle::bench
