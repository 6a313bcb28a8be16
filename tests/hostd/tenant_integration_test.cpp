// Tenant walls on the real hostd binary with a real VM (issue 14), one small
// VM for the whole suite: another key gets 404 on every call that reaches
// the guest (exec, files, fork, freeze, delete) and the guest is as its
// owner left it; SIGHUP reloads the keys file with the VM running; /metrics
// answers admin keys only. tenant_api_test covers every route with fake VMs.
#include <signal.h>

#include <chrono>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "messages/api.pb.h"
#include "tests/hostd/hostd_process.hpp"
#include "tests/hostd/hostd_test_support.hpp"
#include "tests/hostd/http_client.hpp"

using namespace vesicle;
using vesicle::testing::HostdOptions;
using vesicle::testing::HostdProcess;
using vesicle::testing::HttpClient;
using vesicle::testing::missing_images_reason;
using vesicle::testing::parse;

namespace {

// The NDJSON of an exec, whole.
std::string exec(HttpClient& http, const std::string& id, const std::string& code,
                 unsigned* status = nullptr) {
  api::ExecRequest request;
  request.set_code(code);
  std::string body;
  (void)google::protobuf::util::MessageToJsonString(request, &body);
  std::string text;
  auto response = http.stream("POST", "/v1/sandboxes/" + id + "/exec", body,
                              [&](std::string_view data) { text.append(data); });
  if (status) *status = response.status;
  return text;
}

TEST(TenantWalls, AnotherKeyCannotReachAGuestAndSighupReloadsKeysWithTheVmRunning) {
  if (auto reason = missing_images_reason(); !reason.empty()) GTEST_SKIP() << reason;
  HostdOptions options;
  options.binary = HOSTD_BINARY;
  options.images_dir = vesicle::testing::images_dir();
  options.max_sandboxes = 2;
  HostdProcess hostd(options);
  HttpClient owner("127.0.0.1", hostd.port(), hostd.key());
  HttpClient other("127.0.0.1", hostd.port(), hostd.other_key());

  auto created = owner.request("POST", "/v1/sandboxes", "{}");
  ASSERT_EQ(created.status, 201u) << created.body << hostd.log();
  const auto id = parse<api::Sandbox>(created.body).id();
  const std::string sb = "/v1/sandboxes/" + id;
  ASSERT_EQ(owner.request("PUT", sb + "/files?path=/root/mine", "alice's bytes").status, 200u);
  unsigned status = 0;
  exec(owner, id, "secret = 41", &status);
  ASSERT_EQ(status, 200u);

  struct Call {
    std::string method, target, body;
  };
  for (const auto& call : std::vector<Call>{
           {"POST", sb + "/exec", R"({"code": "secret = 0"})"},
           {"PUT", sb + "/files?path=/root/mine", "bob's bytes"},
           {"GET", sb + "/files?path=/root/mine", ""},
           {"POST", sb + "/fork", R"({"n": 1})"},
           {"POST", sb + "/freeze", ""},
           {"DELETE", sb, ""},
       }) {
    auto response = other.request(call.method, call.target, call.body);
    EXPECT_EQ(response.status, 404u) << call.method << " " << call.target << ": " << response.body;
  }
  // The guest is as its owner left it: the file, the REPL's state.
  EXPECT_EQ(owner.request("GET", sb + "/files?path=/root/mine").body, "alice's bytes");
  auto text = exec(owner, id, "print(secret + 1)", &status);
  EXPECT_EQ(status, 200u);
  EXPECT_NE(text.find("42"), std::string::npos) << text;

  // /metrics: the admin key's only.
  EXPECT_EQ(owner.request("GET", "/metrics").status, 403u);
  HttpClient admin("127.0.0.1", hostd.port(), hostd.admin_key());
  EXPECT_EQ(admin.request("GET", "/metrics").status, 200u);

  // A key made while hostd runs works after SIGHUP, the VM running on.
  std::string made;
  {
    std::string command =
        std::string(HOSTD_BINARY) + " --state-dir " + hostd.state_dir().string() + " --new-key";
    FILE* pipe = ::popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    char buffer[512];
    while (std::fgets(buffer, sizeof buffer, pipe))
      made += buffer;
    ASSERT_EQ(::pclose(pipe), 0) << made;
  }
  const auto key_at = made.find("vsk_");
  ASSERT_NE(key_at, std::string::npos) << made;
  HttpClient carol("127.0.0.1", hostd.port(), made.substr(key_at, 68));
  EXPECT_EQ(carol.request("GET", "/v1/sandboxes").status, 401u);
  ASSERT_EQ(::kill(hostd.pid(), SIGHUP), 0);
  unsigned answered = 0;
  for (int i = 0; i < 50 && answered != 200u; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    answered = carol.request("GET", "/v1/sandboxes").status;
  }
  EXPECT_EQ(answered, 200u) << hostd.log();
  EXPECT_NE(hostd.log().find("API keys reloaded"), std::string::npos);
  text = exec(owner, id, "print(secret + 2)", &status);
  EXPECT_EQ(status, 200u);
  EXPECT_NE(text.find("43"), std::string::npos) << text;
  EXPECT_EQ(owner.request("DELETE", sb).status, 204u);
}

} // namespace
