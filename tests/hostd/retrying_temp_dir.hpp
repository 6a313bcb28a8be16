// A temporary directory for a test whose Spaces or templates are deleted on
// the blocking pool (the stores' tests, the in-process API tests).
#pragma once

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

namespace vesicle::testing {

class RetryingTempDir {
public:
  // `prefix`: the directory's name in /tmp before its random part.
  explicit RetryingTempDir(const std::string& prefix) {
    std::string name = "/tmp/" + prefix + "-XXXXXX";
    path_ = ::mkdtemp(name.data());
  }
  // remove_all can race the blocking pool's deletes and fail, so it is
  // tried until the directory is gone (2 s at most).
  ~RetryingTempDir() {
    for (int attempt = 0; attempt < 100; ++attempt) {
      std::error_code ignored;
      std::filesystem::remove_all(path_, ignored);
      if (!std::filesystem::exists(path_, ignored)) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  RetryingTempDir(const RetryingTempDir&) = delete;
  RetryingTempDir& operator=(const RetryingTempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

private:
  std::filesystem::path path_;
};

} // namespace vesicle::testing
