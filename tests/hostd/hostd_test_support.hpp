// What the integration tests against a real hostd share: where the guest
// images are, why a test must skip without them, and reading the API's
// JSON. For test targets that define VESICLE_DEFAULT_IMAGES_DIR.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

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

} // namespace vesicle::testing
