// The REST API end to end over loopback HTTP, in-process, with the fake VMM
// driver: status codes, error bodies, streaming, files, ownership, death.
// The same checks run against the real hostd binary with real VMs in
// hostd_integration_test; this one needs no VM and runs in a second.
#include <future>
#include <thread>
#include <utility> // before Boost 1.74 asio, which needs std::exchange

#include <boost/asio/post.hpp>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "hostd/config.hpp"
#include "hostd/daemon.hpp"
#include "messages/api.pb.h"
#include "tests/hostd/in_process_hostd.hpp"

using namespace vesicle;
using vesicle::testing::error_of;
using vesicle::testing::HttpClient;
using vesicle::testing::HttpResponse;
using vesicle::testing::InProcessHostdTest;
using vesicle::testing::parse;

namespace {

class ApiTest : public InProcessHostdTest {
protected:
  ApiTest() : InProcessHostdTest("hostd-api-test") {}
  void SetUp() override { start(3); }

  void start(std::uint32_t max_sandboxes) {
    start_actors();
    config::HostdConfig config;
    config.set_listen("127.0.0.1:0");
    config.set_state_dir(dir.path().string());
    config.set_max_sandboxes(max_sandboxes);
    config.set_request_timeout_s(2);
    // The pools have their own tests (hostd_actor_test, pool_integration_test).
    config.set_disable_pools(true);
    hostd::apply_defaults(config);
    auto keys = hostd::KeyStore::load(dir.path() / "keys");
    ASSERT_TRUE(keys);
    alice = keys->add()->key;
    bob = keys->add()->key;
    admin = keys->add("", true)->key;
    start_daemon(config, std::move(*keys));
  }

  // Runs `fn` on the io thread (where the fake VMs live) and waits for it.
  template <class F> auto on_io(F fn) {
    std::packaged_task<decltype(fn())()> task(std::move(fn));
    auto result = task.get_future();
    boost::asio::post(io, [&task] { task(); });
    return result.get();
  }

  api::Sandbox create(HttpClient& http, const std::string& body = R"({"memory_mib": 512})") {
    auto response = http.request("POST", "/v1/sandboxes", body);
    EXPECT_EQ(response.status, 201u) << response.body;
    return parse<api::Sandbox>(response.body);
  }

  // The NDJSON lines of an exec.
  std::vector<std::string> exec_lines(HttpClient& http, const std::string& id,
                                      const std::string& code, unsigned* status = nullptr) {
    api::ExecRequest request;
    request.set_code(code);
    std::string body;
    (void)google::protobuf::util::MessageToJsonString(request, &body);
    std::string text;
    auto response = http.stream("POST", "/v1/sandboxes/" + id + "/exec", body,
                                [&](std::string_view data) { text.append(data); });
    if (status) *status = response.status;
    std::vector<std::string> lines;
    std::size_t start = 0;
    while (start < text.size()) {
      auto end = text.find('\n', start);
      lines.push_back(text.substr(start, end - start));
      start = end + 1;
    }
    return lines;
  }

  std::string alice, bob, admin;
};

TEST_F(ApiTest, HealthNeedsNoKeyEverythingElseDoes) {
  HttpClient anonymous("127.0.0.1", port);
  auto health = anonymous.request("GET", "/v1/healthz");
  EXPECT_EQ(health.status, 200u);
  auto parsed = parse<api::Health>(health.body);
  EXPECT_EQ(parsed.status(), "ok");
  EXPECT_EQ(parsed.accel(), "tcg");
  EXPECT_EQ(parsed.default_egress(), "off") << "no network section: off";

  auto no_key = anonymous.request("GET", "/v1/sandboxes");
  EXPECT_EQ(no_key.status, 401u);
  EXPECT_EQ(error_of(no_key).code(), "unauthenticated");
  auto bad_key = client("vsk_wrong").request("GET", "/v1/capacity");
  EXPECT_EQ(bad_key.status, 401u);
  EXPECT_EQ(bad_key.body.find("vsk_wrong"), std::string::npos) << "never echo a key";

  auto http = client(alice);
  auto capacity = http.request("GET", "/v1/capacity");
  ASSERT_EQ(capacity.status, 200u);
  auto room = parse<api::Capacity>(capacity.body);
  EXPECT_EQ(room.max_sandboxes(), 3u);
  EXPECT_EQ(room.available(), 3u);
  EXPECT_NE(capacity.body.find("\"running\":0"), std::string::npos) << capacity.body;
}

TEST_F(ApiTest, BadInputGetsA400NamingTheProblemAndTheServerCarriesOn) {
  auto http = client(alice);
  struct Case {
    std::string body;
    std::string names;
  } cases[] = {
      {"{not json", "invalid create request"},
      {R"({"vcpus": "two"})", "vcpus"},
      {R"({"memory_mib": 512, "colour": "blue"})", "colour"},
      {R"({"vcpus": 0})", "vcpus"}, // 99 would be clamped to the tier's cap
      {R"({"memory_mib": 16})", "memory_mib"},
      {R"({"template": "Windows 11"})", "template"},
      {R"([1, 2])", "invalid create request"},
  };
  for (const auto& c : cases) {
    auto response = http.request("POST", "/v1/sandboxes", c.body);
    EXPECT_EQ(response.status, 400u) << c.body << " -> " << response.body;
    auto error = error_of(response);
    EXPECT_EQ(error.code(), "invalid_argument");
    EXPECT_NE(error.message().find(c.names), std::string::npos)
        << c.body << " -> " << error.message();
  }
  // A well-formed name no key has saved (POST /v1/templates) is unknown.
  auto unknown = http.request("POST", "/v1/sandboxes", R"({"template": "windows"})");
  EXPECT_EQ(unknown.status, 404u) << unknown.body;
  EXPECT_NE(error_of(unknown).message().find("GET /v1/templates"), std::string::npos);
  EXPECT_EQ(driver->boots_started, 0);
  EXPECT_EQ(http.request("GET", "/v1/sandboxes").status, 200u);
}

TEST_F(ApiTest, OversizedBodiesAre413) {
  auto http = client(alice);
  std::string huge = R"({"template": ")" + std::string(2 << 20, 'x') + R"("})";
  auto response = http.request("POST", "/v1/sandboxes", huge);
  EXPECT_EQ(response.status, 413u);
  EXPECT_EQ(error_of(response).code(), "too_large");
  // And chunked, where the size is not announced up front.
  auto chunked =
      client(alice).raw("POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + alice +
                            "\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n" +
                            std::string(0x200000, ' ') + "\r\n0\r\n\r\n",
                        std::chrono::seconds(5));
  EXPECT_EQ(chunked.rfind("HTTP/1.1 413", 0), 0u) << chunked.substr(0, 200);
  EXPECT_EQ(http.request("GET", "/v1/healthz").status, 200u);
}

TEST_F(ApiTest, MalformedHttpAndSlowClients) {
  auto garbage = client(alice).raw("HELLO THERE\r\n\r\n", std::chrono::seconds(3));
  EXPECT_EQ(garbage.rfind("HTTP/1.1 400", 0), 0u) << garbage;
  // Headers never finished: dropped after request_timeout_s (2 s here).
  auto started = std::chrono::steady_clock::now();
  auto slow =
      client(alice).raw("GET /v1/healthz HTTP/1.1\r\nHost: x\r\n", std::chrono::seconds(10));
  auto waited = std::chrono::steady_clock::now() - started;
  EXPECT_TRUE(slow.empty()) << slow;
  EXPECT_LT(waited, std::chrono::seconds(6));
  EXPECT_GE(waited, std::chrono::milliseconds(1500));
  EXPECT_EQ(client(alice).request("GET", "/v1/healthz").status, 200u);
}

TEST_F(ApiTest, RoutesAndMethods) {
  auto http = client(alice);
  auto missing = http.request("GET", "/v2/things");
  EXPECT_EQ(missing.status, 404u);
  EXPECT_EQ(error_of(missing).code(), "not_found");
  auto wrong = http.request("PATCH", "/v1/sandboxes");
  EXPECT_EQ(wrong.status, 405u);
  EXPECT_EQ(error_of(wrong).code(), "method_not_allowed");
}

TEST_F(ApiTest, AnAdminKeySeesEveryKeysSandboxesAndActsOnThem) {
  auto http = client(alice);
  auto sandbox = create(http);
  auto operator_ = client(admin);
  auto listed = operator_.request("GET", "/v1/admin/sandboxes");
  ASSERT_EQ(listed.status, 200u) << listed.body;
  auto all = parse<api::AdminSandboxList>(listed.body);
  ASSERT_EQ(all.sandboxes_size(), 1);
  EXPECT_EQ(all.sandboxes(0).sandbox().id(), sandbox.id());
  EXPECT_NE(all.sandboxes(0).owner_key_id(), all.admin_key_id());
  EXPECT_EQ(all.sandboxes(0).owner_key_id().rfind("key-", 0), 0u);

  // Ordinary keys are refused everywhere under /v1/admin, saying why.
  for (auto [method, target] :
       {std::pair{"GET", std::string("/v1/admin/sandboxes")},
        std::pair{"DELETE", "/v1/admin/sandboxes/" + sandbox.id()},
        std::pair{"POST", "/v1/admin/sandboxes/" + sandbox.id() + "/exec"}}) {
    auto refused = http.request(method, target, R"({"code": "out hi"})");
    EXPECT_EQ(refused.status, 401u) << method << " " << target;
    EXPECT_NE(error_of(refused).message().find("not an admin key"), std::string::npos);
  }
  EXPECT_EQ(operator_.request("PUT", "/v1/admin/sandboxes").status, 405u);
  EXPECT_EQ(operator_.request("DELETE", "/v1/admin/sandboxes/sb-0123456789ab").status, 404u);

  std::string text;
  auto ran =
      operator_.stream("POST", "/v1/admin/sandboxes/" + sandbox.id() + "/exec",
                       R"({"code": "out hi"})", [&](std::string_view data) { text.append(data); });
  EXPECT_EQ(ran.status, 200u);
  EXPECT_NE(text.find(R"("data":"hi")"), std::string::npos) << text;
  EXPECT_EQ(operator_.request("DELETE", "/v1/admin/sandboxes/" + sandbox.id()).status, 204u);
  EXPECT_EQ(http.request("GET", "/v1/sandboxes/" + sandbox.id()).status, 404u);
  EXPECT_EQ(on_io([this] { return driver->live.size(); }), 0u);
}

TEST_F(ApiTest, TheOperatorsPageIsServedWithoutAKeyAndOnlyItsOwnFiles) {
  HttpClient anyone("127.0.0.1", port, "");
  auto page = anyone.request("GET", "/ui");
  ASSERT_EQ(page.status, 200u);
  EXPECT_EQ(page.header("content-type"), "text/html; charset=utf-8");
  EXPECT_NE(page.header("content-security-policy").find("frame-ancestors 'none'"),
            std::string::npos);
  EXPECT_NE(page.body.find("/ui/app.js"), std::string::npos);
  EXPECT_EQ(anyone.request("GET", "/ui/").body, page.body);
  EXPECT_EQ(anyone.request("GET", "/ui/style.css").header("content-type"),
            "text/css; charset=utf-8");
  for (auto target : {"/ui/missing.js", "/ui/app.js/x", "/ui/..%2Fkeys"})
    EXPECT_EQ(anyone.request("GET", target).status, 404u) << target;
  EXPECT_EQ(anyone.request("DELETE", "/ui").status, 405u);
  // Its data is not public.
  EXPECT_EQ(anyone.request("GET", "/v1/admin/sandboxes").status, 401u);
}

TEST_F(ApiTest, SandboxLifecycleAndOwnership) {
  auto http = client(alice);
  auto sandbox = create(http, R"({"memory_mib": 512, "vcpus": 1})");
  EXPECT_EQ(sandbox.state(), "ready");
  EXPECT_EQ(sandbox.memory_mib(), 512u);
  EXPECT_EQ(sandbox.vcpus(), 1u);
  EXPECT_EQ(sandbox.template_(), "default");
  EXPECT_EQ(sandbox.accel(), "tcg");
  EXPECT_EQ(sandbox.created_at().size(), 24u) << sandbox.created_at();

  auto got = http.request("GET", "/v1/sandboxes/" + sandbox.id());
  ASSERT_EQ(got.status, 200u);
  EXPECT_EQ(parse<api::Sandbox>(got.body).id(), sandbox.id());
  auto listed = parse<api::ListSandboxesResponse>(http.request("GET", "/v1/sandboxes").body);
  ASSERT_EQ(listed.sandboxes_size(), 1);

  auto other = client(bob);
  for (auto [method, target] : {std::pair{"GET", "/v1/sandboxes/" + sandbox.id()},
                                std::pair{"DELETE", "/v1/sandboxes/" + sandbox.id()},
                                std::pair{"GET", std::string("/v1/sandboxes/sb-0123456789ab")}}) {
    auto response = other.request(method, target);
    EXPECT_EQ(response.status, 404u) << method << " " << target;
    EXPECT_EQ(error_of(response).code(), "not_found");
  }
  auto foreign_exec =
      other.request("POST", "/v1/sandboxes/" + sandbox.id() + "/exec", R"({"code": "out hi"})");
  EXPECT_EQ(foreign_exec.status, 404u);
  EXPECT_EQ(parse<api::ListSandboxesResponse>(other.request("GET", "/v1/sandboxes").body)
                .sandboxes_size(),
            0);

  EXPECT_EQ(http.request("DELETE", "/v1/sandboxes/" + sandbox.id()).status, 204u);
  EXPECT_EQ(http.request("GET", "/v1/sandboxes/" + sandbox.id()).status, 404u);
  EXPECT_EQ(on_io([this] { return driver->live.size(); }), 0u);
}

TEST_F(ApiTest, CapacityIs503PastTheMaximum) {
  auto http = client(alice);
  for (int i = 0; i < 3; ++i)
    create(http);
  auto full = http.request("POST", "/v1/sandboxes", "{}");
  EXPECT_EQ(full.status, 503u);
  EXPECT_EQ(error_of(full).code(), "no_capacity");
  EXPECT_NE(error_of(full).message().find("retry later"), std::string::npos);
  auto room = parse<api::Capacity>(http.request("GET", "/v1/capacity").body);
  EXPECT_EQ(room.running(), 3u);
  EXPECT_EQ(room.available(), 0u);
}

TEST_F(ApiTest, ExecValidation) {
  auto http = client(alice);
  auto id = create(http).id();
  struct Case {
    std::string body;
    std::string names;
  } cases[] = {
      {R"({})", "code"},
      {R"({"code": ""})", "code"},
      {R"({"code": "x", "language": "ruby"})", "language"},
      {R"({"code": "x", "timeout_s": 100000})", "timeout_s"},
      {R"({"code": "x", "timeout_s": -1})", "timeout_s"},
      {R"({"code": "x", "env": {"A": "1"}})", "env"},
      {R"({"code": 5})", "code"},
      {R"({"code": "x", "shell": "zsh"})", "shell"},
  };
  for (const auto& c : cases) {
    auto response = http.request("POST", "/v1/sandboxes/" + id + "/exec", c.body);
    EXPECT_EQ(response.status, 400u) << c.body << " -> " << response.body;
    EXPECT_NE(error_of(response).message().find(c.names), std::string::npos)
        << c.body << " -> " << response.body;
  }
}

TEST_F(ApiTest, ExecStreamsEventsAsTheyHappen) {
  auto http = client(alice);
  auto id = create(http).id();
  api::ExecRequest request;
  // "second €" arrives cut inside the "€" (e2 82 | ac).
  request.set_code("out first\\n\nsleep 700\nhex 7365636f6e6420e282\nhex ac\nhex ff00\nresult 42");
  std::string body;
  (void)google::protobuf::util::MessageToJsonString(request, &body);
  std::vector<std::pair<std::chrono::steady_clock::time_point, std::string>> pieces;
  auto response =
      http.stream("POST", "/v1/sandboxes/" + id + "/exec", body, [&](std::string_view data) {
        pieces.emplace_back(std::chrono::steady_clock::now(), std::string(data));
      });
  EXPECT_EQ(response.status, 200u);
  EXPECT_EQ(response.header("content-type"), "application/x-ndjson");
  ASSERT_GE(pieces.size(), 2u);
  EXPECT_GE(pieces.back().first - pieces.front().first, std::chrono::milliseconds(500))
      << "the first line must arrive before the cell ends";
  std::string text;
  for (auto& piece : pieces)
    text += piece.second;
  std::vector<std::string> lines;
  for (std::size_t start = 0; start < text.size();) {
    auto end = text.find('\n', start);
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  ASSERT_EQ(lines.size(), 6u) << text;
  EXPECT_EQ(parse<api::OutputEvent>(lines[0]).data(), "first\n");
  EXPECT_EQ(parse<api::OutputEvent>(lines[1]).data(), "second ");
  EXPECT_EQ(parse<api::OutputEvent>(lines[2]).data(), "\xe2\x82\xac");
  EXPECT_NE(lines[3].find("\"data_b64\":\"/wA=\""), std::string::npos) << lines[3];
  EXPECT_EQ(parse<api::ResultEvent>(lines[4]).data(), "42");
  auto exit = parse<api::ExitEvent>(lines[5]);
  EXPECT_EQ(exit.type(), "exit");
  EXPECT_EQ(exit.seq(), 6u);
  EXPECT_FALSE(exit.has_failure());
  // The connection stays usable.
  EXPECT_EQ(http.request("GET", "/v1/sandboxes/" + id).status, 200u);
}

TEST_F(ApiTest, PythonErrorsComeAsErrorEvents) {
  auto http = client(alice);
  auto id = create(http).id();
  auto lines = exec_lines(http, id, "raise ZeroDivisionError division by zero");
  ASSERT_EQ(lines.size(), 2u);
  auto error = parse<api::ErrorEvent>(lines[0]);
  EXPECT_EQ(error.name(), "ZeroDivisionError");
  EXPECT_EQ(error.value(), "division by zero");
  EXPECT_EQ(parse<api::ExitEvent>(lines[1]).exit_code(), 1);
}

TEST_F(ApiTest, AKilledVmIs410OnExecAndDeadOnGet) {
  auto http = client(alice);
  auto id = create(http).id();
  on_io([&] { driver->vm(id)->kill("killed by signal 9 (SIGKILL)"); });
  auto exec = http.request("POST", "/v1/sandboxes/" + id + "/exec", R"({"code": "out x"})");
  EXPECT_EQ(exec.status, 410u) << exec.body;
  EXPECT_EQ(error_of(exec).code(), "sandbox_died");
  EXPECT_NE(error_of(exec).message().find("SIGKILL"), std::string::npos) << exec.body;
  auto got = parse<api::Sandbox>(http.request("GET", "/v1/sandboxes/" + id).body);
  EXPECT_EQ(got.state(), "dead");
  EXPECT_NE(got.dead_reason().find("SIGKILL"), std::string::npos);
  EXPECT_EQ(on_io([this] { return driver->live.size(); }), 0u) << "its VM was not reclaimed";
  EXPECT_EQ(http.request("GET", "/v1/sandboxes/" + id + "/files?path=/x").status, 410u);
  EXPECT_EQ(http.request("DELETE", "/v1/sandboxes/" + id).status, 204u);
}

TEST_F(ApiTest, AGuestThatBrokeTheProtocolIs410WithItsOwnCodeAndDeadWithTheKind) {
  auto http = client(alice);
  auto id = create(http).id();
  on_io([&] {
    driver->vm(id)->fake_agent().violation =
        make_error("agent protocol violation", "file data beyond the range that was asked for")
            .with_kind(ErrorKind::guest_protocol_violation);
  });
  auto exec = http.request("POST", "/v1/sandboxes/" + id + "/exec", R"({"code": "out x"})");
  EXPECT_EQ(exec.status, 410u) << exec.body;
  EXPECT_EQ(error_of(exec).code(), "guest_protocol_violation") << exec.body;
  EXPECT_NE(error_of(exec).message().find("beyond the range"), std::string::npos) << exec.body;
  auto got = parse<api::Sandbox>(http.request("GET", "/v1/sandboxes/" + id).body);
  EXPECT_EQ(got.state(), "dead");
  EXPECT_EQ(got.dead_reason().rfind("guest_protocol_violation: ", 0), 0u) << got.dead_reason();
  // Its VM, still running when the guest was disconnected, is reclaimed.
  for (int i = 0; i < 100 && on_io([this] { return driver->live.size(); }) != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(on_io([this] { return driver->live.size(); }), 0u) << "its VM was not reclaimed";
}

TEST_F(ApiTest, AVmDyingMidCellEndsTheStreamWithAFailure) {
  auto http = client(alice);
  auto id = create(http).id();
  unsigned status = 0;
  auto lines = exec_lines(http, id, "out before\ndie", &status);
  EXPECT_EQ(status, 200u);
  ASSERT_EQ(lines.size(), 2u);
  auto exit = parse<api::ExitEvent>(lines[1]);
  EXPECT_EQ(exit.failure().code(), "sandbox_died");
  EXPECT_EQ(parse<api::Sandbox>(http.request("GET", "/v1/sandboxes/" + id).body).state(), "dead");
}

TEST_F(ApiTest, FilesRoundTrip) {
  auto http = client(alice);
  auto id = create(http).id();
  std::string data;
  for (std::uint64_t i = 0; i < 3 * 1024 * 1024; ++i)
    data += static_cast<char>((i * 7919) % 251);
  auto put = http.request("PUT", "/v1/sandboxes/" + id + "/files?path=%2Fdata%2Fblob.bin", data,
                          {{"Content-Type", "application/octet-stream"}});
  ASSERT_EQ(put.status, 200u) << put.body;
  auto written = parse<api::FileWritten>(put.body);
  EXPECT_EQ(written.path(), "/data/blob.bin");
  EXPECT_EQ(written.size(), static_cast<double>(data.size()));
  EXPECT_NE(put.body.find("\"size\":3145728"), std::string::npos) << put.body;

  auto got = http.request("GET", "/v1/sandboxes/" + id + "/files?path=/data/blob.bin");
  ASSERT_EQ(got.status, 200u);
  EXPECT_EQ(got.header("transfer-encoding"), "chunked");
  EXPECT_TRUE(got.body == data) << "downloaded " << got.body.size() << " bytes";

  auto missing = http.request("GET", "/v1/sandboxes/" + id + "/files?path=/nope");
  EXPECT_EQ(missing.status, 404u) << missing.body;
  auto device = http.request("GET", "/v1/sandboxes/" + id + "/files?path=/dev/zero");
  EXPECT_EQ(device.status, 400u) << device.body;
  auto relative = http.request("GET", "/v1/sandboxes/" + id + "/files?path=etc/passwd");
  EXPECT_EQ(relative.status, 400u);
  EXPECT_NE(error_of(relative).message().find("absolute"), std::string::npos);
  auto no_path = http.request("PUT", "/v1/sandboxes/" + id + "/files", "x");
  EXPECT_EQ(no_path.status, 400u);
  auto refused = http.request("PUT", "/v1/sandboxes/" + id + "/files?path=/proc/x", "x");
  EXPECT_EQ(refused.status, 400u) << refused.body;
  auto bad_mode = http.request("PUT", "/v1/sandboxes/" + id + "/files?path=/x&mode=999", "x");
  EXPECT_EQ(bad_mode.status, 400u);
  auto empty = http.request("PUT", "/v1/sandboxes/" + id + "/files?path=/empty", "");
  ASSERT_EQ(empty.status, 200u) << empty.body;
  auto empty_back = http.request("GET", "/v1/sandboxes/" + id + "/files?path=/empty");
  EXPECT_EQ(empty_back.status, 200u);
  EXPECT_EQ(empty_back.body, "");
}

TEST_F(ApiTest, ShutdownDestroysEverySandbox) {
  auto http = client(alice);
  create(http);
  create(http);
  EXPECT_EQ(on_io([this] { return driver->live.size(); }), 2u);
  stop();
  EXPECT_FALSE(daemon);
}

} // namespace
