// What the integration tests against a real hostd share: where the guest
// images are, why a test must skip without them, reading the API's JSON,
// files and processes. For test targets that define
// VESICLE_DEFAULT_IMAGES_DIR.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

namespace vesicle::testing {

// $VESICLE_IMAGES_DIR, else the build tree's images.
inline std::filesystem::path images_dir() {
  if (const char* dir = std::getenv("VESICLE_IMAGES_DIR")) return dir;
  return VESICLE_DEFAULT_IMAGES_DIR;
}

// Why the VM tests cannot run here ("" when the images are there).
inline std::string missing_images_reason() {
  if (std::filesystem::exists(images_dir() / "rootfs.ext4")) return {};
  return "no guest images in " + images_dir().string() +
         " (build them with images/build.sh or set VESICLE_IMAGES_DIR)";
}

// A JSON body as the API message M; a body that does not parse fails the test.
template <class M> M parse(const std::string& json) {
  M message;
  auto status = google::protobuf::util::JsonStringToMessage(json, &message);
  EXPECT_TRUE(status.ok()) << json;
  return message;
}

// A whole file's bytes; "" when it cannot be read.
inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Whether `pid` stays up (not gone, not a zombie) for 5 s: false as soon as
// it is gone, so a test that expects a process to die waits no longer than
// it takes. (A QEMU killed with its hostd may wait a moment for init to
// reap it.)
inline bool stays_running(pid_t pid) {
  for (int i = 0; i < 100; ++i) {
    const auto stat = read_file("/proc/" + std::to_string(pid) + "/stat");
    const auto paren = stat.rfind(')');
    if (paren == std::string::npos || paren + 2 >= stat.size()) return false;
    if (stat[paren + 2] == 'Z' || stat[paren + 2] == 'X') return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

} // namespace vesicle::testing
