// The embedding API (include/vesicle/runtime.hpp) with real VMs, in-process:
// a Runtime on an actor system of its own (examples/embed covers one on
// the embedder's), freeze and resume keeping the REPL's state, errors that
// name what was wrong, and awaitables resuming on the caller's executor.
#include <utility> // before Boost 1.74's asio, which needs std::exchange

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "vesicle/runtime.hpp"

namespace vesicle {
namespace {

namespace asio = boost::asio;

std::filesystem::path images_dir() {
  if (const char* dir = std::getenv("VESICLE_IMAGES_DIR")) return dir;
  return VESICLE_DEFAULT_IMAGES_DIR;
}

std::filesystem::path make_temp_dir(const std::string& pattern) {
  std::string name = pattern;
  if (!::mkdtemp(name.data())) ADD_FAILURE() << "mkdtemp " << pattern;
  return name;
}

class RuntimeTest : public ::testing::Test {
protected:
  void SetUp() override {
    if (!std::filesystem::exists(images_dir() / "rootfs.ext4"))
      GTEST_SKIP() << "no guest images in " << images_dir()
                   << " (build them with images/build.sh or set VESICLE_IMAGES_DIR)";
    state_ = make_temp_dir("/tmp/vesicle-runtime-test-XXXXXX");
    shm_ = make_temp_dir("/dev/shm/vesicle-runtime-test-XXXXXX");
    config_.set_images_dir(images_dir().string());
    config_.set_state_dir(state_.string());
    config_.set_runtime_dir((state_ / "run").string());
    config_.set_shm_dir(shm_.string());
    config_.set_disable_pools(true);
    config_.set_default_memory_mib(512);
  }

  void TearDown() override {
    runtime_.reset(); // destroys what a failed test left, VMs included
    std::error_code ignored;
    if (!state_.empty()) std::filesystem::remove_all(state_, ignored);
    if (!shm_.empty()) std::filesystem::remove_all(shm_, ignored);
  }

  Runtime& start() {
    auto started = Runtime::start(config_);
    if (!started) throw std::runtime_error(started.error().message());
    runtime_ = std::move(started.value());
    return *runtime_;
  }

  config::HostdConfig config_;
  std::filesystem::path state_, shm_;
  std::unique_ptr<Runtime> runtime_;
};

TEST_F(RuntimeTest, FreezeAndResumeKeepTheReplState) {
  auto& runtime = start();
  auto sandbox = runtime.wait(runtime.create());
  ASSERT_TRUE(sandbox) << sandbox.error().message();
  auto set = runtime.wait(runtime.exec_python(sandbox->id, "kept = 'across a freeze'"));
  ASSERT_TRUE(set) << set.error().message();

  auto space = runtime.wait(runtime.freeze(sandbox->id));
  ASSERT_TRUE(space) << space.error().message();
  auto frozen = runtime.wait(runtime.info(sandbox->id));
  ASSERT_TRUE(frozen) << frozen.error().message();
  EXPECT_EQ(frozen->state, SandboxState::frozen);
  EXPECT_EQ(frozen->space_id, space->space_id);

  auto resumed = runtime.wait(runtime.resume(space->space_id));
  ASSERT_TRUE(resumed) << resumed.error().message();
  EXPECT_EQ(resumed->resumed_from, space->space_id);
  auto read = runtime.wait(runtime.exec_python(resumed->id, "print(kept)"));
  ASSERT_TRUE(read) << read.error().message();
  EXPECT_EQ(read->stdout_text, "across a freeze\n");

  // A cell that raises: the exception comes back, with exit code 1.
  auto raised = runtime.wait(runtime.exec_python(resumed->id, "1/0"));
  ASSERT_TRUE(raised) << raised.error().message();
  EXPECT_EQ(raised->error_name, "ZeroDivisionError");
  EXPECT_EQ(raised->exit_code, 1);

  for (const auto& id : {resumed->id, sandbox->id}) {
    auto destroyed = runtime.wait(runtime.destroy(id));
    EXPECT_TRUE(destroyed) << destroyed.error().message();
  }
  auto left = runtime.wait(runtime.list());
  ASSERT_TRUE(left) << left.error().message();
  EXPECT_TRUE(left->empty());
}

TEST_F(RuntimeTest, ErrorsNameWhatWasWrong) {
  auto& runtime = start();
  auto unknown = runtime.wait(runtime.exec_python("sb-000000000000", "print(1)"));
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().kind, ErrorKind::not_found) << unknown.error().message();
  EXPECT_NE(unknown.error().message().find("sb-000000000000"), std::string::npos)
      << unknown.error().message();

  api::CreateSandboxRequest too_big;
  too_big.set_vcpus(99);
  auto refused = runtime.wait(runtime.create(too_big));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("vcpus"), std::string::npos)
      << refused.error().message();

  auto no_children = runtime.wait(runtime.fork("sb-000000000000", 0));
  ASSERT_FALSE(no_children);
  EXPECT_NE(no_children.error().message().find("n: a fork makes 1 to"), std::string::npos)
      << no_children.error().message();

  auto empty = runtime.wait(runtime.exec_bash("sb-000000000000", BashCommand{}));
  ASSERT_FALSE(empty);
  EXPECT_NE(empty.error().message().find("command: required"), std::string::npos);
}

TEST_F(RuntimeTest, ABadConfigurationIsRefusedBeforeAnythingStarts) {
  config_.set_images_dir("relative/images");
  auto started = Runtime::start(config_);
  ASSERT_FALSE(started);
  EXPECT_NE(started.error().message().find("images_dir"), std::string::npos)
      << started.error().message();

  config_.set_images_dir(state_.string()); // absolute, but no images in it
  started = Runtime::start(config_);
  ASSERT_FALSE(started);
  EXPECT_NE(started.error().message().find("vmlinuz"), std::string::npos)
      << started.error().message();
}

TEST_F(RuntimeTest, AnAwaitedCallResumesOnTheCallersExecutor) {
  auto& runtime = start();
  asio::io_context caller;
  std::optional<bool> resumed_here;
  std::optional<bool> answered;
  asio::co_spawn(
      caller,
      [&]() -> asio::awaitable<void> {
        auto listed = co_await runtime.list();
        resumed_here = caller.get_executor().running_in_this_thread();
        answered = listed.ok();
      },
      [](std::exception_ptr failure) {
        if (failure) std::rethrow_exception(failure);
      });
  caller.run();
  ASSERT_TRUE(resumed_here.has_value());
  EXPECT_TRUE(*resumed_here);
  EXPECT_TRUE(answered.value_or(false));
}

} // namespace
} // namespace vesicle
