// hostd end to end: the real binary, real VMs (images from
// VESICLE_IMAGES_DIR), HTTP over loopback. Keeps to a few small VMs: these
// machines have two cores and no KVM.
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "hostd/keys.hpp"
#include "messages/api.pb.h"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/hostd_test_support.hpp"
#include "tests/hostd/http_client.hpp"

using namespace vesicle;
using namespace vesicle::testing;

namespace {

HostdOptions options(unsigned max_sandboxes = 3) {
  HostdOptions result;
  result.binary = HOSTD_BINARY;
  result.images_dir = images_dir();
  result.max_sandboxes = max_sandboxes;
  result.memory_mib = 512;
  result.request_timeout_s = 3;
  return result;
}

api::ErrorDetail error_of(const HttpResponse& response) {
  return parse<api::ErrorResponse>(response.body).error();
}

std::string hex_sha256(const std::string& data) {
  return hostd::to_hex(hostd::sha256(data));
}

class HostdIntegration : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    skip_reason = missing_images_reason();
    if (!skip_reason.empty()) return;
    hostd = new HostdProcess(options());
    HttpClient http("127.0.0.1", hostd->port(), hostd->key());
    auto created = http.request("POST", "/v1/sandboxes", "{}");
    ASSERT_EQ(created.status, 201u) << created.body << hostd->log();
    sandbox = parse<api::Sandbox>(created.body).id();
  }
  static void TearDownTestSuite() {
    delete hostd;
    hostd = nullptr;
  }
  void SetUp() override {
    if (!skip_reason.empty()) GTEST_SKIP() << skip_reason;
    ASSERT_NE(hostd, nullptr);
  }
  void TearDown() override {
    if (HasFailure() && hostd) std::fprintf(stderr, "hostd's log:\n%s\n", hostd->log().c_str());
  }
  HttpClient client() { return HttpClient("127.0.0.1", hostd->port(), hostd->key()); }

  static inline HostdProcess* hostd = nullptr;
  static inline std::string sandbox;
  static inline std::string skip_reason;
};

TEST_F(HostdIntegration, HealthAndCapacity) {
  auto http = client();
  auto health = parse<api::Health>(http.request("GET", "/v1/healthz").body);
  EXPECT_EQ(health.status(), "ok");
  EXPECT_TRUE(health.accel() == "tcg" || health.accel() == "kvm");
  auto capacity = parse<api::Capacity>(http.request("GET", "/v1/capacity").body);
  EXPECT_EQ(capacity.max_sandboxes(), 3u);
  auto sandbox_info = parse<api::Sandbox>(http.request("GET", "/v1/sandboxes/" + sandbox).body);
  EXPECT_EQ(sandbox_info.state(), "ready");
  EXPECT_EQ(sandbox_info.memory_mib(), 512u);
}

TEST_F(HostdIntegration, BadInputIsRefusedClearlyAndHostdCarriesOn) {
  auto http = client();
  struct Case {
    std::string method, target, body;
    unsigned status;
    std::string names;
  } cases[] = {
      {"POST", "/v1/sandboxes", "{\"vcpus\": 2,", 400, "invalid create request"},
      {"POST", "/v1/sandboxes", R"({"memory_mib": "lots"})", 400, "memory_mib"},
      {"POST", "/v1/sandboxes", R"({"vcpus": 1, "gpu": true})", 400, "gpu"},
      {"GET", "/v1/sandboxes/sb-000000000000", "", 404, "sb-000000000000"},
      {"POST", "/v1/sandboxes/" + sandbox + "/exec", "{}", 400, "code"},
      {"POST", "/v1/sandboxes/" + sandbox + "/exec", R"({"code": "1", "language": "cobol"})", 400,
       "language"},
      {"POST", "/v1/sandboxes/" + sandbox + "/exec", R"({"code": ["x"]})", 400, "code"},
      {"GET", "/v1/sandboxes/" + sandbox + "/files?path=relative", "", 400, "absolute"},
      {"POST", "/v1/sandboxes", std::string(2 << 20, ' '), 413, "larger than"},
  };
  for (const auto& c : cases) {
    auto response = http.request(c.method, c.target, c.body);
    EXPECT_EQ(response.status, c.status) << c.method << " " << c.target << " -> " << response.body;
    EXPECT_NE(error_of(response).message().find(c.names), std::string::npos)
        << c.method << " " << c.target << " -> " << response.body;
    EXPECT_EQ(http.request("GET", "/v1/healthz").status, 200u) << "hostd stopped serving";
  }
  // Another key's sandbox is as unknown as a missing one.
  HttpClient other("127.0.0.1", hostd->port(), hostd->other_key());
  auto foreign = other.request("GET", "/v1/sandboxes/" + sandbox);
  EXPECT_EQ(foreign.status, 404u);
  auto foreign_exec =
      other.request("POST", "/v1/sandboxes/" + sandbox + "/exec", R"j({"code": "print(1)"})j");
  EXPECT_EQ(foreign_exec.status, 404u);
  EXPECT_EQ(
      HttpClient("127.0.0.1", hostd->port(), "vsk_nope").request("GET", "/v1/sandboxes").status,
      401u);
}

TEST_F(HostdIntegration, ExecStreamsTheFirstLineBeforeTheCellEnds) {
  auto http = client();
  std::vector<std::pair<std::chrono::steady_clock::time_point, std::string>> pieces;
  auto started = std::chrono::steady_clock::now();
  auto response = http.stream(
      "POST", "/v1/sandboxes/" + sandbox + "/exec",
      R"({"code": "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')\n6*7"})",
      [&](std::string_view data) {
        pieces.emplace_back(std::chrono::steady_clock::now(), std::string(data));
      });
  auto ended = std::chrono::steady_clock::now();
  ASSERT_EQ(response.status, 200u);
  ASSERT_FALSE(pieces.empty());
  EXPECT_NE(pieces.front().second.find("first"), std::string::npos) << pieces.front().second;
  EXPECT_GE(ended - pieces.front().first, std::chrono::milliseconds(1500))
      << "the first line came only " << (ended - started).count() << " ns after the start";
  std::string text;
  for (auto& piece : pieces)
    text += piece.second;
  EXPECT_NE(text.find(R"({"type":"result","data":"42")"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("type":"exit","exit_code":0)"), std::string::npos) << text;

  auto bash = http.request(
      "POST", "/v1/sandboxes/" + sandbox + "/exec",
      R"({"code": "echo $GREETING; exit 3", "language": "bash", "env": {"GREETING": "hello"}})");
  ASSERT_EQ(bash.status, 200u);
  EXPECT_NE(bash.body.find(R"("data":"hello\n")"), std::string::npos) << bash.body;
  EXPECT_NE(bash.body.find(R"("exit_code":3)"), std::string::npos) << bash.body;
}

TEST_F(HostdIntegration, UploadAndDownloadAFewMiB) {
  auto http = client();
  std::string data;
  data.reserve(4 << 20);
  std::uint64_t state = 88172645463325252ull;
  while (data.size() < (4u << 20)) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    data.append(reinterpret_cast<const char*>(&state), sizeof state);
  }
  auto put = http.request("PUT", "/v1/sandboxes/" + sandbox + "/files?path=/data/deep/blob.bin",
                          data, {{"Content-Type", "application/octet-stream"}});
  ASSERT_EQ(put.status, 200u) << put.body;
  EXPECT_NE(put.body.find("\"size\":4194304"), std::string::npos) << put.body;
  auto get = http.request("GET", "/v1/sandboxes/" + sandbox + "/files?path=/data/deep/blob.bin");
  ASSERT_EQ(get.status, 200u);
  EXPECT_EQ(hex_sha256(get.body), hex_sha256(data));
  auto inside = http.request("POST", "/v1/sandboxes/" + sandbox + "/exec",
                             R"({"code": "sha256sum /data/deep/blob.bin", "language": "bash"})");
  EXPECT_NE(inside.body.find(hex_sha256(data)), std::string::npos) << inside.body;

  EXPECT_EQ(http.request("GET", "/v1/sandboxes/" + sandbox + "/files?path=/no/such").status, 404u);
  auto directory = http.request("GET", "/v1/sandboxes/" + sandbox + "/files?path=/etc");
  EXPECT_EQ(directory.status, 400u) << directory.body;
}

TEST_F(HostdIntegration, KilledQemuGives410AndADeadRecord) {
  auto http = client();
  auto created = http.request("POST", "/v1/sandboxes", "{}");
  ASSERT_EQ(created.status, 201u) << created.body;
  auto id = parse<api::Sandbox>(created.body).id();
  pid_t qemu = -1;
  for (auto pid : hostd->qemu_pids()) {
    std::ifstream cmdline("/proc/" + std::to_string(pid) + "/cmdline");
    std::string text((std::istreambuf_iterator<char>(cmdline)), {});
    if (text.find(id) != std::string::npos) qemu = pid;
  }
  ASSERT_GT(qemu, 0) << "no QEMU process for " << id;
  ASSERT_EQ(::kill(qemu, SIGKILL), 0);

  auto exec = http.request("POST", "/v1/sandboxes/" + id + "/exec", R"j({"code": "print(1)"})j");
  EXPECT_EQ(exec.status, 410u) << exec.body;
  EXPECT_EQ(error_of(exec).code(), "sandbox_died");
  EXPECT_NE(error_of(exec).message().find("died"), std::string::npos);
  auto got = parse<api::Sandbox>(http.request("GET", "/v1/sandboxes/" + id).body);
  EXPECT_EQ(got.state(), "dead");
  EXPECT_FALSE(got.dead_reason().empty());
  // Reclaimed: the VM's files are gone while the record stays.
  for (const auto& file : hostd->leftover_files())
    EXPECT_EQ(file.find(id), std::string::npos) << file << " was left behind";
  EXPECT_EQ(http.request("DELETE", "/v1/sandboxes/" + id).status, 204u);
  EXPECT_EQ(http.request("GET", "/v1/sandboxes/" + id).status, 404u);
}

TEST_F(HostdIntegration, ConcurrentCreatesAndDeletesLeaveNothingBehind) {
  auto http = client();
  http.request("GET", "/v1/capacity");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto fds_before = hostd->open_fds();
  auto qemus_before = hostd->qemu_pids().size(); // the suite's own sandbox

  std::atomic<int> created{0}, refused{0}, wrong{0};
  std::vector<std::string> problems;
  std::mutex problems_mutex;
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      auto mine = client();
      for (int i = 0; i < 5; ++i) {
        auto response = mine.request("POST", "/v1/sandboxes", "{}");
        if (response.status == 503) {
          ++refused;
          continue;
        }
        if (response.status != 201) {
          ++wrong;
          std::lock_guard lock(problems_mutex);
          problems.push_back(std::to_string(response.status) + " " + response.body);
          continue;
        }
        ++created;
        auto id = parse<api::Sandbox>(response.body).id();
        auto deleted = mine.request("DELETE", "/v1/sandboxes/" + id);
        if (deleted.status != 204) {
          ++wrong;
          std::lock_guard lock(problems_mutex);
          problems.push_back("DELETE " + std::to_string(deleted.status) + " " + deleted.body);
        }
      }
    });
  }
  for (auto& thread : clients)
    thread.join();
  EXPECT_EQ(wrong.load(), 0) << (problems.empty() ? "" : problems.front());
  EXPECT_EQ(created + refused + wrong, 20);
  EXPECT_GT(created.load(), 0);
  std::printf("20 creates by 4 clients, max_sandboxes 3 (one taken): %d created, %d got 503\n",
              created.load(), refused.load());

  EXPECT_EQ(hostd->qemu_pids().size(), qemus_before);
  auto listed = parse<api::ListSandboxesResponse>(http.request("GET", "/v1/sandboxes").body);
  EXPECT_EQ(listed.sandboxes_size(), 1);
  // Only the suite's sandbox has files.
  for (const auto& file : hostd->leftover_files())
    EXPECT_NE(file.find(sandbox), std::string::npos) << file << " was left behind";
  // hostd's fds are back where they were (connections closing may lag).
  std::size_t fds_after = 0;
  for (int attempt = 0; attempt < 20; ++attempt) {
    http.close();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    fds_after = hostd->open_fds();
    if (fds_after <= fds_before) break;
  }
  EXPECT_LE(fds_after, fds_before);
}

TEST(HostdShutdown, SigtermDestroysEveryVmAndItsFiles) {
  if (auto why = missing_images_reason(); !why.empty()) GTEST_SKIP() << why;
  HostdProcess hostd(options(2));
  HttpClient http("127.0.0.1", hostd.port(), hostd.key());
  auto created = http.request("POST", "/v1/sandboxes", "{}");
  ASSERT_EQ(created.status, 201u) << created.body << hostd.log();
  ASSERT_EQ(hostd.qemu_pids().size(), 1u);
  ASSERT_FALSE(hostd.leftover_files().empty());
  EXPECT_EQ(hostd.stop(), 0) << hostd.log();
  EXPECT_TRUE(hostd.qemu_pids().empty());
  EXPECT_TRUE(hostd.leftover_files().empty());
}

// Issue 14: hostd runs as a service whose stdout and stderr are its log, so
// the first key goes to a 0600 file, never to the output.
TEST(HostdKeys, TheFirstStartWritesAKeyToA0600FileNeverToTheLog) {
  char pattern[] = "/tmp/hostd-keys-it-XXXXXX";
  std::filesystem::path dir = ::mkdtemp(pattern);
  std::string command = std::string(HOSTD_BINARY) + " --state-dir " + dir.string() +
                        " --images-dir /nonexistent --listen 127.0.0.1:0 2>&1";
  auto run = [&] {
    std::string out;
    FILE* pipe = ::popen(command.c_str(), "r");
    char buffer[512];
    while (std::fgets(buffer, sizeof buffer, pipe))
      out += buffer;
    ::pclose(pipe);
    return out;
  };
  // No images: hostd stops after the key step, saying what is missing.
  auto first = run();
  const auto key_file = dir / "first-key";
  struct stat info {};
  const bool written = ::stat(key_file.c_str(), &info) == 0;
  std::ifstream key_in(key_file);
  std::string key_text((std::istreambuf_iterator<char>(key_in)), {});
  auto second = run();
  std::ifstream in(dir / "keys");
  std::string stored((std::istreambuf_iterator<char>(in)), {});
  std::ifstream key_again_in(key_file);
  std::string key_again((std::istreambuf_iterator<char>(key_again_in)), {});
  std::filesystem::remove_all(dir);
  EXPECT_EQ(first.find("vsk_"), std::string::npos) << "a key in hostd's output: " << first;
  EXPECT_NE(first.find(key_file.string()), std::string::npos) << first;
  EXPECT_NE(first.find("images"), std::string::npos) << first;
  ASSERT_TRUE(written);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  auto key_at = key_text.find("vsk_");
  ASSERT_NE(key_at, std::string::npos) << key_text;
  auto key = key_text.substr(key_at, 68);
  EXPECT_EQ(second.find("vsk_"), std::string::npos) << second;
  EXPECT_EQ(key_again, key_text) << "a second start made another first key";
  EXPECT_EQ(stored.find(key), std::string::npos);
  EXPECT_NE(stored.find(hostd::to_hex(hostd::sha256(key))), std::string::npos);
}

} // namespace
