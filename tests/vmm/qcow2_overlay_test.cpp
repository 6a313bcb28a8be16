// The overlay vesicle writes itself must be the image qemu-img would have
// made: QEMU's own tools (qemu-img check and info, qemu-io) judge it, side
// by side with one qemu-img made.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "vmm/json.hpp"
#include "vmm/qcow2_overlay.hpp"

namespace vesicle::vmm {
namespace {

namespace fs = std::filesystem;

struct Run {
  int status;
  std::string output;
};

Run run(const std::string& command) {
  Run result{-1, {}};
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return result;
  char buffer[4096];
  while (std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe))
    result.output.append(buffer, n);
  result.status = ::pclose(pipe);
  return result;
}

class Qcow2Overlay : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qcow2-overlay-test-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // A raw base with a recognisable first MiB, and an odd size.
    std::ofstream base(dir_ / "base.raw", std::ios::binary);
    base << std::string(1 << 20, 'Z') << std::string(3 * (1 << 20) + 4096, '\0');
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // qemu-img info's JSON for an image.
  json::Value info(const std::string& image) {
    auto ran = run("qemu-img info --output=json " + image);
    EXPECT_EQ(ran.status, 0) << ran.output;
    auto parsed = json::parse(ran.output);
    EXPECT_TRUE(parsed) << ran.output;
    return parsed ? *parsed : json::Value{};
  }

  // Our overlay and qemu-img's agree on everything qemu-img reports.
  void expect_same_as_qemu_img(const std::string& backing, const std::string& format,
                               std::uint64_t bytes) {
    const auto ours = path("ours.qcow2"), theirs = path("theirs.qcow2");
    fs::remove(ours);
    fs::remove(theirs);
    auto written = write_qcow2_overlay(ours, backing, format, bytes);
    ASSERT_TRUE(written) << written.error().message();
    std::string command = "qemu-img create -q -f qcow2 -b " + backing + " -F " + format + " " +
                          theirs + (bytes ? " " + std::to_string(bytes) : "");
    auto made = run(command);
    ASSERT_EQ(made.status, 0) << made.output;
    auto checked = run("qemu-img check " + ours);
    EXPECT_EQ(checked.status, 0) << checked.output;
    auto a = info(ours), b = info(theirs);
    for (const char* field :
         {"virtual-size", "cluster-size", "backing-filename", "backing-filename-format", "format"})
      EXPECT_EQ(a[field].dump(), b[field].dump()) << field;
    EXPECT_EQ(a["format-specific"]["data"].dump(), b["format-specific"]["data"].dump());
    EXPECT_EQ(fs::status(ours).permissions() & fs::perms::all,
              fs::perms::owner_read | fs::perms::owner_write);
  }

  fs::path dir_;
};

TEST_F(Qcow2Overlay, OverARawBaseItIsWhatQemuImgMakes) {
  expect_same_as_qemu_img(path("base.raw"), "raw", 0);
  expect_same_as_qemu_img(path("base.raw"), "raw", std::uint64_t{2048} << 20);
  // Past one L1 entry's reach (512 MiB) and not a whole cluster.
  expect_same_as_qemu_img(path("base.raw"), "raw", (std::uint64_t{5} << 30) + 512);
}

TEST_F(Qcow2Overlay, OverAQcow2BaseItIsWhatQemuImgMakes) {
  auto base = write_qcow2_overlay(path("middle.qcow2"), path("base.raw"), "raw", 64 << 20);
  ASSERT_TRUE(base) << base.error().message();
  auto size = image_virtual_size(path("middle.qcow2"), "qcow2");
  ASSERT_TRUE(size) << size.error().message();
  EXPECT_EQ(*size, std::uint64_t{64} << 20);
  expect_same_as_qemu_img(path("middle.qcow2"), "qcow2", 0);
}

TEST_F(Qcow2Overlay, ReadsFallThroughAndWritesStayInTheOverlay) {
  const auto overlay = path("vm.qcow2");
  auto written = write_qcow2_overlay(overlay, path("base.raw"), "raw", std::uint64_t{1} << 30);
  ASSERT_TRUE(written) << written.error().message();
  auto read_base = run("qemu-io -f qcow2 -c 'read -P 0x5a 0 1M' " + overlay);
  EXPECT_EQ(read_base.status, 0) << read_base.output;
  EXPECT_EQ(read_base.output.find("Pattern verification failed"), std::string::npos);
  // Past the base's end, inside the quota: zeros, then writable.
  auto wrote =
      run("qemu-io -f qcow2 -c 'write -P 0xab 900M 128k' -c 'write -P 0xcd 0 4k' " + overlay);
  ASSERT_EQ(wrote.status, 0) << wrote.output;
  auto again = run("qemu-io -f qcow2 -c 'read -P 0xab 900M 128k' -c 'read -P 0xcd 0 4k' "
                   "-c 'read -P 0x5a 4k 4k' " +
                   overlay);
  EXPECT_EQ(again.status, 0) << again.output;
  EXPECT_EQ(again.output.find("Pattern verification failed"), std::string::npos) << again.output;
  auto checked = run("qemu-img check " + overlay);
  EXPECT_EQ(checked.status, 0) << checked.output;
  // The base is untouched.
  auto base = run("qemu-io -f raw -r -c 'read -P 0x5a 0 1M' " + path("base.raw"));
  EXPECT_EQ(base.output.find("Pattern verification failed"), std::string::npos) << base.output;
}

TEST_F(Qcow2Overlay, BadRequestsSayWhatWasWrongAndLeaveNothing) {
  const auto overlay = path("bad.qcow2");
  auto unknown = write_qcow2_overlay(overlay, path("base.raw"), "vmdk", 0);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message().find("raw or qcow2"), std::string::npos);
  auto missing = write_qcow2_overlay(overlay, path("nope.raw"), "raw", 0);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("nope.raw"), std::string::npos);
  auto long_name = write_qcow2_overlay(overlay, std::string(1024, 'a'), "raw", 1 << 20);
  ASSERT_FALSE(long_name);
  EXPECT_FALSE(fs::exists(overlay));
  auto not_qcow2 = image_virtual_size(path("base.raw"), "qcow2");
  ASSERT_FALSE(not_qcow2);
  EXPECT_NE(not_qcow2.error().message().find("not a qcow2 image"), std::string::npos);

  // An existing file is never overwritten.
  { std::ofstream(overlay) << "keep me"; }
  auto exists = write_qcow2_overlay(overlay, path("base.raw"), "raw", 0);
  ASSERT_FALSE(exists);
  std::ifstream kept(overlay);
  std::string text;
  std::getline(kept, text);
  EXPECT_EQ(text, "keep me");
}

} // namespace
} // namespace vesicle::vmm
