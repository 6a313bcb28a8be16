// The warm pool end to end: the real hostd, real VMs restored from a real
// template snapshot. The tests run in order and share one hostd "home"
// (state, templates, runtime dirs) so that later ones can restart hostd on
// what earlier ones left: a kill -9, a corrupted template.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "messages/api.pb.h"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/hostd_test_support.hpp"
#include "tests/hostd/http_client.hpp"

using namespace vesicle;
using namespace vesicle::testing;
using namespace std::chrono_literals;

namespace {

std::string command_line(pid_t pid) {
  auto text = read_file("/proc/" + std::to_string(pid) + "/cmdline");
  for (auto& c : text)
    if (c == '\0') c = ' ';
  return text;
}

double unix_now() {
  using namespace std::chrono;
  return duration_cast<duration<double>>(system_clock::now().time_since_epoch()).count();
}

class Pool : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    skip_reason = missing_images_reason();
    if (!skip_reason.empty()) return;
    char pattern[] = "/tmp/vesicle-pool-it-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    home = new std::filesystem::path(pattern);
    start();
  }
  static void TearDownTestSuite() {
    delete hostd;
    hostd = nullptr;
    if (home) {
      std::error_code ignored;
      std::filesystem::remove_all(*home, ignored);
      std::filesystem::remove_all(std::filesystem::path("/dev/shm") / home->filename(), ignored);
      delete home;
      home = nullptr;
    }
  }
  static void start() {
    HostdOptions options;
    options.binary = HOSTD_BINARY;
    options.images_dir = images_dir();
    options.max_sandboxes = 4;
    options.memory_mib = 512;
    options.home = *home;
    // numpy makes the template's RAM realistic (the modules a cell needs
    // are already in the shared pages).
    options.extra_config = "\"pools\": [{\"memory_mib\": 512, \"min_ready\": 2, \"max\": 4, "
                           "\"preload_modules\": [\"numpy\"]}]";
    hostd = new HostdProcess(options);
  }
  void SetUp() override {
    if (!skip_reason.empty()) GTEST_SKIP() << skip_reason;
    ASSERT_NE(hostd, nullptr);
  }
  void TearDown() override {
    if (HasFailure() && hostd) std::fprintf(stderr, "hostd's log:\n%s\n", hostd->log().c_str());
  }
  static HttpClient client() { return HttpClient("127.0.0.1", hostd->port(), hostd->key()); }
  // /metrics needs an admin key.
  static HttpClient admin() { return HttpClient("127.0.0.1", hostd->port(), hostd->admin_key()); }

  static api::PoolCapacity pool_state() {
    auto http = client();
    auto capacity = parse<api::Capacity>(http.request("GET", "/v1/capacity").body);
    return capacity.pools_size() == 1 ? capacity.pools(0) : api::PoolCapacity{};
  }
  // Waits until `ready` VMs wait in the pool and none is being restored.
  static bool pool_filled(unsigned ready, std::chrono::seconds timeout = 240s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto state = pool_state();
      if (state.ready() == ready && state.booting() == 0) return true;
      std::this_thread::sleep_for(200ms);
    }
    return false;
  }
  static std::string metric(const std::string& name) {
    return metric_in(admin().request("GET", "/metrics").body, name);
  }
  // The value of series `name` in one scrape's text ("" if it has none).
  static std::string metric_in(const std::string& text, const std::string& name) {
    const auto at = text.find("\n" + name);
    if (at == std::string::npos) return "";
    const auto end = text.find('\n', at + 1);
    const auto line = text.substr(at + 1, end - at - 1);
    return line.substr(line.rfind(' ') + 1);
  }
  static api::Sandbox create() {
    auto created = client().request("POST", "/v1/sandboxes", "{}");
    EXPECT_EQ(created.status, 201u) << created.body;
    return parse<api::Sandbox>(created.body);
  }
  // Runs a cell; returns its stdout (the NDJSON stream's stdout events).
  static std::string python(const std::string& id, const std::string& code) {
    auto http = client();
    api::ExecRequest request;
    request.set_code(code);
    std::string body;
    (void)google::protobuf::util::MessageToJsonString(request, &body);
    auto ran = http.request("POST", "/v1/sandboxes/" + id + "/exec", body);
    EXPECT_EQ(ran.status, 200u) << ran.body;
    std::string out;
    bool exited = false;
    std::istringstream lines(ran.body);
    for (std::string line; std::getline(lines, line);) {
      google::protobuf::util::JsonParseOptions lenient;
      lenient.ignore_unknown_fields = true;
      api::OutputEvent event;
      if (!google::protobuf::util::JsonStringToMessage(line, &event, lenient).ok()) continue;
      if (event.type() == "stdout") out += event.data();
      if (event.type() == "exit") {
        api::ExitEvent exit;
        (void)google::protobuf::util::JsonStringToMessage(line, &exit, lenient);
        EXPECT_EQ(exit.exit_code(), 0) << ran.body;
        exited = true;
      }
    }
    EXPECT_TRUE(exited) << ran.body;
    return out;
  }
  static void destroy(const std::string& id) {
    EXPECT_EQ(client().request("DELETE", "/v1/sandboxes/" + id).status, 204u);
  }
  static std::vector<pid_t> pool_qemus() {
    std::vector<pid_t> pids;
    for (pid_t pid : hostd->qemu_pids())
      if (command_line(pid).find("-name vesicle-pool-") != std::string::npos) pids.push_back(pid);
    return pids;
  }
  static std::filesystem::path template_dir() {
    for (const auto& entry : std::filesystem::directory_iterator(*home / "state" / "templates"))
      if (entry.is_directory()) return entry.path();
    return {};
  }
  // The template's RAM image on disk (state/templates/<key>.mem), which a
  // start loads into the sealed memfd VMs map.
  static std::filesystem::path template_memory() {
    for (const auto& entry : std::filesystem::directory_iterator(*home / "state" / "templates"))
      if (entry.path().extension() == ".mem") return entry.path();
    return {};
  }
  // hostd restarted on the same home; its log tells how the template went.
  static void restart() {
    delete hostd;
    hostd = nullptr;
    start();
  }

  static inline std::filesystem::path* home = nullptr;
  static inline HostdProcess* hostd = nullptr;
  static inline std::string skip_reason;
};

TEST_F(Pool, CreatesAreServedFromThePoolWhichRefills) {
  ASSERT_TRUE(pool_filled(2)) << "template: " << pool_state().template_state();
  EXPECT_NE(hostd->log().find("built in"), std::string::npos) << "the first start builds it";
  auto sandbox = create();
  EXPECT_EQ(sandbox.source(), "pool");
  EXPECT_EQ(python(sandbox.id(), "import numpy; print(numpy.arange(4).sum())"), "6\n");
  ASSERT_TRUE(pool_filled(2)) << "the pool refills after a take";
  EXPECT_EQ(pool_state().in_use(), 1u);
  EXPECT_EQ(metric("vesicle_pool_hits_total"), "1");
  EXPECT_EQ(metric("vesicle_pool_misses_total"), "0");
  EXPECT_NE(
      admin().request("GET", "/metrics").body.find("vesicle_create_seconds_bucket{source=\"pool\""),
      std::string::npos);
  // Its QEMU's memory, from smaps_rollup: PSS (its share of the template's
  // pages plus its own) is more than its USS (its own alone), both > 0.
  // One scrape: the figures move between two.
  const auto scrape = admin().request("GET", "/metrics").body;
  const auto pss = metric_in(scrape, "vesicle_sandbox_pss_bytes{sandbox=\"" + sandbox.id() + "\"}");
  const auto uss = metric_in(scrape, "vesicle_sandbox_uss_bytes{sandbox=\"" + sandbox.id() + "\"}");
  ASSERT_FALSE(pss.empty()) << scrape;
  ASSERT_FALSE(uss.empty()) << scrape;
  EXPECT_GT(std::stoull(pss), std::stoull(uss));
  EXPECT_GT(std::stoull(uss), 0u);
  EXPECT_EQ(metric_in(scrape, "vesicle_sandboxes_pss_bytes"), pss) << "one sandbox: its own";
  destroy(sandbox.id());
  EXPECT_EQ(metric("vesicle_sandboxes_pss_bytes"), "0");
}

TEST_F(Pool, ClonesOfOneTemplateGetTheirOwnIdentityAndTheRightClock) {
  ASSERT_TRUE(pool_filled(2));
  const auto template_saved = std::filesystem::last_write_time(template_dir() / "manifest");
  auto first = create();
  auto second = create();
  ASSERT_EQ(first.source(), "pool");
  ASSERT_EQ(second.source(), "pool");
  const std::string probe = "import os, uuid, socket, time, random\n"
                            "print(os.urandom(16).hex(), uuid.uuid4(), socket.gethostname(), "
                            "open('/etc/machine-id').read().strip(), random.random(), time.time())";
  const double before = unix_now();
  auto a = python(first.id(), probe);
  auto b = python(second.id(), probe);
  const double after = unix_now();
  std::istringstream first_words(a), second_words(b);
  std::string a_random, a_uuid, a_host, a_machine, a_pyrandom, b_random, b_uuid, b_host, b_machine,
      b_pyrandom;
  double a_time = 0, b_time = 0;
  first_words >> a_random >> a_uuid >> a_host >> a_machine >> a_pyrandom >> a_time;
  second_words >> b_random >> b_uuid >> b_host >> b_machine >> b_pyrandom >> b_time;
  EXPECT_NE(a_random, b_random);
  EXPECT_NE(a_uuid, b_uuid);
  EXPECT_NE(a_machine, b_machine);
  EXPECT_NE(a_pyrandom, b_pyrandom);
  EXPECT_EQ(a_host, first.id());
  EXPECT_EQ(b_host, second.id());
  // The clock is the host's, not the template's frozen one.
  EXPECT_GT(a_time, before - 1.0);
  EXPECT_LT(a_time, after + 1.0);
  EXPECT_GT(b_time, before - 1.0);
  EXPECT_LT(b_time, after + 1.0);
  const auto age = std::chrono::duration_cast<std::chrono::seconds>(
      std::filesystem::file_time_type::clock::now() - template_saved);
  std::printf("template saved %lld s before these sandboxes were created\n",
              static_cast<long long>(age.count()));
  destroy(first.id());
  destroy(second.id());
}

TEST_F(Pool, AWaitingVmKilledWithSigkillIsReplaced) {
  ASSERT_TRUE(pool_filled(2));
  auto waiting = pool_qemus();
  ASSERT_EQ(waiting.size(), 2u);
  ASSERT_EQ(::kill(waiting[0], SIGKILL), 0);
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (metric("vesicle_pool_replaced_total") != "1" &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(100ms);
  EXPECT_EQ(metric("vesicle_pool_replaced_total"), "1");
  ASSERT_TRUE(pool_filled(2));
  auto now = pool_qemus();
  EXPECT_EQ(std::count(now.begin(), now.end(), waiting[0]), 0);
}

TEST_F(Pool, AfterHostdIsKilledHardNothingOfItsRunIsLeftAndThePoolFillsAgain) {
  ASSERT_TRUE(pool_filled(2));
  auto sandbox = create();
  ASSERT_TRUE(pool_filled(2)); // the refill after the take has finished
  const auto old_qemus = hostd->qemu_pids();
  ASSERT_EQ(old_qemus.size(), 3u);
  std::set<std::string> old_dirs;
  for (const auto& entry : std::filesystem::directory_iterator(*home / "run"))
    old_dirs.insert(entry.path().filename().string());
  hostd->kill_hard();
  restart();
  for (pid_t pid : old_qemus)
    EXPECT_FALSE(stays_running(pid)) << "QEMU " << pid << " of the killed hostd still runs";
  for (const auto& entry : std::filesystem::directory_iterator(*home / "run"))
    EXPECT_EQ(old_dirs.count(entry.path().filename().string()), 0u)
        << entry.path() << " of the killed hostd is still there";
  for (const auto& file : hostd->leftover_files())
    for (const auto& old : old_dirs)
      EXPECT_EQ(file.find(old), std::string::npos) << file << " is left from the killed hostd";
  ASSERT_TRUE(pool_filled(2));
  EXPECT_NE(hostd->log().find("checked"), std::string::npos)
      << "an intact template is reused, not rebuilt";
  EXPECT_EQ(client().request("GET", "/v1/sandboxes/" + sandbox.id()).status, 404u);
}

TEST_F(Pool, ACorruptedTemplateIsRebuiltNeverRestored) {
  ASSERT_TRUE(pool_filled(2));
  // A flipped byte in the device state.
  {
    delete hostd;
    hostd = nullptr;
    const auto state = template_dir() / "state";
    ASSERT_TRUE(std::filesystem::exists(state)) << state;
    std::fstream file(state, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(100);
    char byte = 0;
    file.read(&byte, 1);
    byte = static_cast<char>(byte ^ 0x5a);
    file.seekp(100);
    file.write(&byte, 1);
  }
  start();
  ASSERT_TRUE(pool_filled(2));
  auto log = hostd->log();
  EXPECT_NE(log.find("not usable and is rebuilt"), std::string::npos) << log;
  EXPECT_NE(log.find("built in"), std::string::npos) << log;
  // A truncated RAM image.
  delete hostd;
  hostd = nullptr;
  const auto memory = template_memory();
  ASSERT_FALSE(memory.empty());
  std::filesystem::resize_file(memory, std::filesystem::file_size(memory) / 2);
  start();
  ASSERT_TRUE(pool_filled(2));
  log = hostd->log();
  EXPECT_NE(log.find("not usable and is rebuilt"), std::string::npos) << log;
  auto sandbox = create();
  EXPECT_EQ(sandbox.source(), "pool");
  EXPECT_EQ(python(sandbox.id(), "print(40 + 2)"), "42\n");
  destroy(sandbox.id());
}

// A template saved by a hostd that booted its guests with other kernel
// parameters (before init_on_free=1, say) or on another machine (with the
// legacy PIT) restores, but is rebuilt, so the pool's VMs boot as this
// hostd's do.
TEST_F(Pool, ATemplateBootedWithOtherKernelParametersIsRebuilt) {
  ASSERT_TRUE(pool_filled(2));
  const auto manifest = template_dir() / "manifest";
  // What this hostd writes last: each vCPU a socket of its own under TCG,
  // cores of one socket under KVM (vmm::vcpu_sockets_for).
  const std::string topology =
      read_file(manifest).ends_with("\nvcpu_sockets 1\n") ? "vcpu_sockets 1\n" : "vcpu_sockets 0\n";
  // Stops hostd, has `edit` change the template's manifest, starts it again
  // and waits for its pool.
  auto restart_after = [&](const std::function<void(std::string&)>& edit) {
    delete hostd;
    hostd = nullptr;
    std::string text = read_file(manifest);
    edit(text);
    {
      std::ofstream out(manifest, std::ios::binary | std::ios::trunc);
      out << text;
    }
    start();
    return pool_filled(2);
  };
  ASSERT_TRUE(restart_after([](std::string& text) {
    const auto at = text.find(" init_on_free=1");
    ASSERT_NE(at, std::string::npos) << text;
    text.erase(at, std::string(" init_on_free=1").size());
  }));
  const auto log = hostd->log();
  EXPECT_NE(log.find("or with other kernel parameters and is rebuilt"), std::string::npos) << log;
  EXPECT_NE(log.find("built in"), std::string::npos) << log;
  auto sandbox = create();
  EXPECT_EQ(sandbox.source(), "pool");
  EXPECT_EQ(python(sandbox.id(), "print(open('/proc/cmdline').read().count('init_on_free=1'))"),
            "1\n");
  destroy(sandbox.id());

  // A template of a machine with the legacy PIT (an older hostd's manifest
  // has neither a "pit" nor a "vcpu_sockets" line) is rebuilt too, and the
  // new one's machine has none.
  ASSERT_TRUE(restart_after([&](std::string& text) {
    ASSERT_TRUE(text.ends_with("\npit 0\n" + topology)) << text;
    text.erase(text.size() - ("pit 0\n" + topology).size());
  }));
  const auto relog = hostd->log();
  EXPECT_NE(relog.find("(with the legacy PIT)"), std::string::npos) << relog;
  EXPECT_TRUE(read_file(manifest).ends_with("\npit 0\n" + topology)) << read_file(manifest);
  auto rebuilt = create();
  EXPECT_EQ(rebuilt.source(), "pool");
  EXPECT_EQ(python(rebuilt.id(), "print(6 * 7)"), "42\n");
  destroy(rebuilt.id());

  // A template whose vCPUs were cores of one socket (the manifest of the
  // hostd before vcpu_sockets: a "pit" line, no "vcpu_sockets") is rebuilt
  // under TCG, and the new template's guest sees one socket per vCPU.
  if (topology != "vcpu_sockets 1\n") return; // KVM: cores, as before
  ASSERT_TRUE(restart_after([&](std::string& text) {
    ASSERT_TRUE(text.ends_with("\n" + topology)) << text;
    text.erase(text.size() - topology.size());
  }));
  const auto socket_log = hostd->log();
  EXPECT_NE(socket_log.find("other kernel parameters and is rebuilt"), std::string::npos)
      << socket_log;
  EXPECT_TRUE(read_file(manifest).ends_with("\nvcpu_sockets 1\n")) << read_file(manifest);
  auto sockets = create();
  EXPECT_EQ(sockets.source(), "pool");
  EXPECT_EQ(python(sockets.id(), "print(len({l for l in open('/proc/cpuinfo') "
                                 "if l.startswith('physical id')}), __import__('os').cpu_count())"),
            "2 2\n");
  destroy(sockets.id());
}

} // namespace
