// The pure parts of ports inside a sandbox and of the E2B table on disk:
// port numbers, the host-name form <port>-<id>.<sandbox_domain>, the
// routers' path matcher, and e2b-sandboxes.json written and read back.
// The relay itself runs against real VMs in tests/e2b and tests/sdk.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "hostd/e2b_store.hpp"
#include "hostd/port_proxy.hpp"
#include "hostd/query.hpp"

namespace vesicle::hostd {
namespace {

TEST(Ports, ParsePort) {
  for (const unsigned good : {1u, 8000u, 65535u}) {
    auto parsed = parse_port(std::to_string(good));
    ASSERT_TRUE(parsed) << good;
    EXPECT_EQ(*parsed, good);
  }
  for (const char* bad : {"", "0", "65536", "99999", "123456", "80a", "-1", " 80", "+80"}) {
    auto parsed = parse_port(bad);
    ASSERT_FALSE(parsed) << bad;
    EXPECT_EQ(parsed.error().kind, ErrorKind::invalid_argument);
    EXPECT_NE(parsed.error().message().find("from 1 to 65535"), std::string::npos);
  }
}

TEST(Ports, ParsePortHost) {
  auto host = parse_port_host("8000-0a1b2c.sbx.test", "sbx.test");
  ASSERT_TRUE(host);
  EXPECT_EQ(host->port, 8000);
  EXPECT_EQ(host->sandbox_id, "0a1b2c");
  // hostd's own port after the name; any case.
  host = parse_port_host("3000-0A1B2C.SBX.Test:8080", "sbx.test");
  ASSERT_TRUE(host);
  EXPECT_EQ(host->port, 3000);
  EXPECT_EQ(host->sandbox_id, "0a1b2c");

  EXPECT_FALSE(parse_port_host("8000-0a1b2c.sbx.test", ""));           // no domain configured
  EXPECT_FALSE(parse_port_host("8000-0a1b2c.other.test", "sbx.test")); // another domain
  EXPECT_FALSE(parse_port_host("8000-0a1b2c.x.sbx.test", "sbx.test")); // a level too deep
  EXPECT_FALSE(parse_port_host("sbx.test", "sbx.test"));               // the domain itself
  EXPECT_FALSE(parse_port_host("127.0.0.1:8080", "sbx.test"));         // hostd's own address
  EXPECT_FALSE(parse_port_host("0-0a1b2c.sbx.test", "sbx.test"));      // not a port
  EXPECT_FALSE(parse_port_host("http-0a1b2c.sbx.test", "sbx.test"));   // not a port
  EXPECT_FALSE(parse_port_host("8000-.sbx.test", "sbx.test"));         // no sandbox id
  EXPECT_FALSE(parse_port_host("a.b-c.sbx.test", "sbx.test"));         // dash after the dot
}

TEST(Ports, PathIs) {
  const std::vector<std::string> path{"v1", "sandboxes", "abc", "ports"};
  EXPECT_TRUE(path_is(path, {"v1", "sandboxes", "*", "ports"}));
  EXPECT_TRUE(path_is(path, {"*", "*", "*", "*"}));
  EXPECT_FALSE(path_is(path, {"v1", "sandboxes", "*"}));
  EXPECT_FALSE(path_is(path, {"v1", "sandboxes", "*", "ports", "*"}));
  EXPECT_FALSE(path_is(path, {"v1", "spaces", "*", "ports"}));
  EXPECT_TRUE(path_is({}, {}));
}

class E2bTable : public ::testing::Test {
protected:
  void SetUp() override {
    char pattern[] = "/tmp/vesicle-e2b-table-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
    path_ = e2b::table_path(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static std::shared_ptr<e2b::Sandbox> paused(const std::string& id) {
    auto sandbox = std::make_shared<e2b::Sandbox>();
    sandbox->id = id;
    sandbox->owner = "key-1";
    sandbox->frozen_vid = "vid-" + id;
    sandbox->space_id = "space-" + id;
    sandbox->token = "token-" + id;
    sandbox->traffic_token = "traffic-" + id;
    sandbox->public_traffic = true;
    sandbox->template_id = "base";
    sandbox->metadata = {{"keep", "me"}};
    sandbox->env_vars = {{"A", "1"}};
    sandbox->started_ms = 1000;
    sandbox->end_ms = 2000;
    sandbox->vcpus = 2;
    sandbox->memory_mib = 512;
    sandbox->disk_mib = 2048;
    return sandbox;
  }

  void write(const std::string& text) { std::ofstream(path_) << text; }

  std::string dir_;
  std::string path_;
};

TEST_F(E2bTable, NoFileIsAnEmptyTable) {
  auto loaded = e2b::load_table(path_);
  ASSERT_TRUE(loaded) << loaded.error().message();
  EXPECT_TRUE(loaded->empty());
}

TEST_F(E2bTable, PausedSandboxesRoundTripRunningOnesAreNotSaved) {
  std::map<std::string, std::shared_ptr<e2b::Sandbox>> table;
  table["aa"] = paused("aa");
  auto running = paused("bb");
  running->vid = "vid-running";
  running->space_id.clear();
  table["bb"] = running;
  ASSERT_TRUE(e2b::save_table(path_, table));

  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(std::filesystem::exists(path_ + ".tmp"));

  auto loaded = e2b::load_table(path_);
  ASSERT_TRUE(loaded) << loaded.error().message();
  ASSERT_EQ(loaded->size(), 1u);
  const auto& back = *loaded->at("aa");
  const auto& saved = *table["aa"];
  EXPECT_EQ(back.owner, saved.owner);
  EXPECT_EQ(back.vid, "");
  EXPECT_EQ(back.frozen_vid, saved.frozen_vid);
  EXPECT_EQ(back.space_id, saved.space_id);
  EXPECT_EQ(back.token, saved.token);
  EXPECT_EQ(back.traffic_token, saved.traffic_token);
  EXPECT_TRUE(back.public_traffic);
  EXPECT_EQ(back.template_id, "base");
  EXPECT_EQ(back.metadata, saved.metadata);
  EXPECT_EQ(back.env_vars, saved.env_vars);
  EXPECT_EQ(back.started_ms, 1000);
  EXPECT_EQ(back.end_ms, 2000);
  EXPECT_EQ(back.vcpus, 2u);
  EXPECT_EQ(back.memory_mib, 512u);
  EXPECT_EQ(back.disk_mib, 2048u);

  // Saving again replaces the table: a sandbox resumed since is gone.
  table.erase("aa");
  ASSERT_TRUE(e2b::save_table(path_, table));
  loaded = e2b::load_table(path_);
  ASSERT_TRUE(loaded);
  EXPECT_TRUE(loaded->empty());
}

TEST_F(E2bTable, MalformedOrForeignTablesAreErrorsNamingTheFile) {
  write("{not json");
  auto loaded = e2b::load_table(path_);
  ASSERT_FALSE(loaded);
  EXPECT_NE(loaded.error().message().find(path_), std::string::npos) << loaded.error().message();
  EXPECT_NE(loaded.error().message().find("move it away"), std::string::npos);

  write(R"({"version": 99})");
  loaded = e2b::load_table(path_);
  ASSERT_FALSE(loaded);
  EXPECT_NE(loaded.error().message().find("version 99"), std::string::npos)
      << loaded.error().message();
}

} // namespace
} // namespace vesicle::hostd
