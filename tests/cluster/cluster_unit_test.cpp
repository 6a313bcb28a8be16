// The cluster's pure parts (docs/cluster.md): node tags in ids, the
// cluster secret's file, and the gateway's placement of creates.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "common/ids.hpp"
#include "hostd/cluster_identity.hpp"
#include "hostd/gateway_members.hpp"

using namespace vesicle;
using namespace vesicle::hostd;

namespace {

NodeReport node(const std::string& name, const std::string& region, std::uint32_t available,
                std::uint32_t pool_ready = 0) {
  NodeReport report;
  report.name = name;
  report.region = region;
  report.url = "http://127.0.0.1:7" + std::to_string(name.size()) + "00";
  report.tag = node_tag(name);
  report.max_sandboxes = 4;
  report.available = available;
  report.pool_ready = pool_ready;
  return report;
}

TEST(ClusterIdentity, IdsCarryTheNodeTag) {
  const auto tag = node_tag("n1");
  EXPECT_EQ(tag.size(), kNodeTagDigits);
  EXPECT_NE(tag, node_tag("n2"));
  set_node_id_tag(tag);
  const auto id = node_scoped_id("sb-");
  set_node_id_tag("");
  EXPECT_EQ(id.size(), 3u + kIdDigits);
  EXPECT_EQ(tag_of_id(id), tag);
  EXPECT_EQ(tag_of_id("sp-" + id.substr(3)), tag);
  EXPECT_EQ(tag_of_id("sb-xyz"), std::nullopt);
  EXPECT_EQ(tag_of_id("tpl-" + id.substr(3)), std::nullopt);
}

TEST(ClusterIdentity, TheSecretFileMustBePrivateAndLongEnough) {
  char pattern[] = "/tmp/cluster-unit-XXXXXX";
  ASSERT_NE(::mkdtemp(pattern), nullptr);
  const std::filesystem::path dir = pattern;
  const auto file = dir / "secret";
  {
    std::ofstream out(file);
    out << "0123456789abcdef-long-enough\n";
  }
  ::chmod(file.c_str(), 0644);
  auto open_to_all = read_cluster_secret(file);
  EXPECT_FALSE(open_to_all);
  ::chmod(file.c_str(), 0600);
  auto secret = read_cluster_secret(file);
  ASSERT_TRUE(secret) << secret.error().message();
  EXPECT_EQ(*secret, "0123456789abcdef-long-enough");
  EXPECT_TRUE(secret_matches(*secret, "0123456789abcdef-long-enough"));
  EXPECT_FALSE(secret_matches(*secret, "0123456789abcdef-long-enougH"));
  EXPECT_FALSE(secret_matches(*secret, ""));
  {
    std::ofstream out(file);
    out << "short\n";
  }
  EXPECT_FALSE(read_cluster_secret(file));
  std::filesystem::remove_all(dir);
}

TEST(GatewayMembers, PlacesInTheRegionWarmFirstThenMostRoom) {
  Members members;
  members.joined(node("n1", "eu", 1));
  members.joined(node("n2", "eu", 3));
  members.joined(node("n3", "us", 2, 1));
  auto placed = members.place("eu", "");
  ASSERT_TRUE(placed);
  EXPECT_EQ((*placed)->report.name, "n2"); // most free slots
  members.reported(node("n1", "eu", 1, 1));
  placed = members.place("eu", "");
  ASSERT_TRUE(placed);
  EXPECT_EQ((*placed)->report.name, "n1"); // a warm VM wins
  placed = members.place("us", "");
  ASSERT_TRUE(placed);
  EXPECT_EQ((*placed)->report.name, "n3");
  placed = members.place("", "n2"); // a pin
  ASSERT_TRUE(placed);
  EXPECT_EQ((*placed)->report.name, "n2");
}

TEST(GatewayMembers, CountsItsOwnPlacementsUntilTheNextReport) {
  Members members;
  members.joined(node("n1", "eu", 2));
  EXPECT_TRUE(members.place("eu", ""));
  EXPECT_TRUE(members.place("eu", ""));
  auto full = members.place("eu", "");
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().kind, ErrorKind::capacity);
  EXPECT_NE(full.error().message().find("\"eu\""), std::string::npos) << full.error().message();
  members.reported(node("n1", "eu", 1));
  EXPECT_TRUE(members.place("eu", ""));
}

TEST(GatewayMembers, ARegionDownIsUnavailableAndAnUnknownOneIsTheCallersMistake) {
  Members members;
  members.set_settle(std::chrono::seconds(0));
  members.joined(node("n1", "eu", 2));
  members.joined(node("n2", "us", 2));
  int aborted = 0;
  auto ticket = members.on_down("n1", [&] { ++aborted; });
  members.went_down("n1", "no heartbeat for 1500 ms");
  EXPECT_EQ(aborted, 1);
  members.forget("n1", ticket);
  auto down = members.place("eu", "");
  ASSERT_FALSE(down);
  EXPECT_EQ(down.error().kind, ErrorKind::unavailable);
  EXPECT_NE(down.error().message().find("region \"eu\""), std::string::npos);
  auto unknown = members.place("mars", "");
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().kind, ErrorKind::invalid_argument);
  EXPECT_NE(unknown.error().message().find("\"us\""), std::string::npos)
      << unknown.error().message();
  // The node comes back with its next report.
  members.reported(node("n1", "eu", 2));
  EXPECT_TRUE(members.place("eu", ""));
}

} // namespace
