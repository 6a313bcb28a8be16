// Tier caps: the published defaults, clamping of requests and specs, the
// configuration's tier section, and a key's tier in the keys file.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "hostd/config.hpp"
#include "hostd/keys.hpp"
#include "hostd/tiers.hpp"

using namespace vesicle;
using namespace vesicle::hostd;

namespace {

config::HostdConfig defaults() {
  config::HostdConfig config;
  apply_defaults(config);
  return config;
}

TEST(Tiers, PublishedDefaults) {
  auto config = defaults();
  const auto& free = caps_of(config, Tier::free);
  EXPECT_EQ(free.max_memory_mib(), 1024u);
  EXPECT_EQ(free.max_disk_mib(), 4096u);
  EXPECT_EQ(free.max_idle_timeout_s(), 300u);
  EXPECT_EQ(free.max_lifetime_s(), 1800u);
  EXPECT_EQ(free.max_concurrent(), 10u);
  const auto& pro = caps_of(config, Tier::pro);
  EXPECT_EQ(pro.max_memory_mib(), 4096u);
  EXPECT_EQ(pro.max_lifetime_s(), 8u * 3600);
  EXPECT_EQ(pro.max_concurrent(), 50u);
  EXPECT_EQ(caps_of(config, Tier::scale).max_idle_timeout_s(), 7200u);
  const auto& enterprise = caps_of(config, Tier::enterprise);
  EXPECT_EQ(enterprise.max_disk_mib(), 512u * 1024);
  EXPECT_EQ(enterprise.max_lifetime_s(), 7u * 24 * 3600);
  EXPECT_EQ(enterprise.max_concurrent(), 10000u);
  EXPECT_EQ(config.default_key_tier(), "free");
}

TEST(Tiers, NamesRoundTrip) {
  for (auto tier : {Tier::free, Tier::pro, Tier::scale, Tier::enterprise})
    EXPECT_EQ(parse_tier(to_string(tier)), tier);
  EXPECT_FALSE(parse_tier("Free"));
  EXPECT_FALSE(parse_tier(""));
  EXPECT_FALSE(parse_tier("gold"));
}

TEST(Tiers, AFreeKeyAskingForEightGibGetsOne) {
  auto config = defaults();
  api::CreateSandboxRequest request;
  request.set_memory_mib(8192);
  request.set_disk_mib(100'000);
  request.set_idle_timeout_s(86'400);
  request.set_max_lifetime_s(1'000'000);
  clamp_request(request, caps_of(config, Tier::free));
  EXPECT_EQ(request.memory_mib(), 1024u);
  EXPECT_EQ(request.disk_mib(), 4096u);
  EXPECT_EQ(request.idle_timeout_s(), 300u);
  EXPECT_EQ(request.max_lifetime_s(), 1800u);
}

TEST(Tiers, ValuesWithinTheCapAndUnsetFieldsAreLeftAlone) {
  auto config = defaults();
  api::CreateSandboxRequest request;
  request.set_memory_mib(512);
  request.set_idle_timeout_s(5);
  clamp_request(request, caps_of(config, Tier::free));
  EXPECT_EQ(request.memory_mib(), 512u);
  EXPECT_EQ(request.idle_timeout_s(), 5u);
  EXPECT_FALSE(request.has_disk_mib());
  EXPECT_FALSE(request.has_max_lifetime_s());
}

TEST(Tiers, ZeroTimeoutsMeanAsLongAsTheTierAllows) {
  auto config = defaults();
  api::CreateSandboxRequest request;
  request.set_idle_timeout_s(0);
  request.set_max_lifetime_s(0);
  clamp_request(request, caps_of(config, Tier::pro));
  EXPECT_EQ(request.idle_timeout_s(), 1800u);
  EXPECT_EQ(request.max_lifetime_s(), 8u * 3600);
}

TEST(Tiers, SpecDefaultsAboveASmallCapAreClamped) {
  config::TierCaps caps;
  caps.set_max_memory_mib(512);
  caps.set_max_disk_mib(1024);
  caps.set_max_idle_timeout_s(60);
  caps.set_max_lifetime_s(600);
  SandboxSpec spec; // 1024 MiB, 2048 MiB disk, 300 s, 1800 s
  clamp_spec(spec, caps);
  EXPECT_EQ(spec.memory_mib, 512u);
  EXPECT_EQ(spec.disk_mib, 1024u);
  EXPECT_EQ(spec.idle_timeout_s, 60u);
  EXPECT_EQ(spec.max_lifetime_s, 600u);
  EXPECT_EQ(spec.vcpus, 2u);
}

TEST(Tiers, ConfigurationOverridesSomeCapsAndKeepsTheRest) {
  auto parsed = parse_config("tiers { free { max_concurrent: 2 max_idle_timeout_s: 10 } }\n"
                             "default_key_tier: \"pro\"\n",
                             false);
  ASSERT_TRUE(parsed) << parsed.error().message();
  apply_defaults(*parsed);
  ASSERT_TRUE(validate(*parsed));
  EXPECT_EQ(caps_of(*parsed, Tier::free).max_concurrent(), 2u);
  EXPECT_EQ(caps_of(*parsed, Tier::free).max_idle_timeout_s(), 10u);
  EXPECT_EQ(caps_of(*parsed, Tier::free).max_memory_mib(), 1024u);
  EXPECT_EQ(parsed->default_key_tier(), "pro");
}

TEST(Tiers, AnUnknownDefaultTierIsRefused) {
  auto parsed = parse_config("default_key_tier: \"gold\"\n", false);
  ASSERT_TRUE(parsed);
  apply_defaults(*parsed);
  auto valid = validate(*parsed);
  ASSERT_FALSE(valid);
  EXPECT_NE(valid.error().message().find("default_key_tier"), std::string::npos);
  EXPECT_NE(valid.error().message().find("free, pro, scale, enterprise"), std::string::npos);
}

struct TempDir {
  TempDir() {
    char pattern[] = "/tmp/hostd-tiers-test-XXXXXX";
    path = ::mkdtemp(pattern);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::filesystem::path path;
};

TEST(Tiers, AKeysTierIsStoredWithItAndOldLinesHaveNone) {
  TempDir dir;
  auto keys = KeyStore::load(dir.path / "keys");
  ASSERT_TRUE(keys);
  auto pro = keys->add("pro");
  ASSERT_TRUE(pro) << pro.error().message();
  auto plain = keys->add();
  ASSERT_TRUE(plain);
  EXPECT_FALSE(keys->add("gold"));

  auto reloaded = KeyStore::load(dir.path / "keys");
  ASSERT_TRUE(reloaded) << reloaded.error().message();
  ASSERT_NE(reloaded->find(pro->id), nullptr);
  EXPECT_EQ(reloaded->find(pro->id)->tier, "pro");
  EXPECT_EQ(reloaded->find(plain->id)->tier, "");
  EXPECT_EQ(reloaded->authenticate(pro->key), pro->id);
  EXPECT_EQ(reloaded->find("key-00000000"), nullptr);

  std::ofstream(dir.path / "bad") << "key-1 " << std::string(64, 'a') << " gold\n";
  auto bad = KeyStore::load(dir.path / "bad");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("gold"), std::string::npos);
}

} // namespace

// Issue 14: vCPUs had no tier cap; Spaces and requests per second none either.
TEST(Tiers, VcpusAreCappedPerTierAndTheNewCapsHaveDefaults) {
  auto config = defaults();
  api::CreateSandboxRequest request;
  request.set_vcpus(8);
  clamp_request(request, caps_of(config, Tier::free));
  EXPECT_EQ(request.vcpus(), 2u);
  SandboxSpec spec;
  spec.vcpus = 8;
  clamp_spec(spec, caps_of(config, Tier::pro));
  EXPECT_EQ(spec.vcpus, 4u);
  const auto& free = caps_of(config, Tier::free);
  EXPECT_EQ(free.max_spaces(), 5u);
  EXPECT_EQ(free.max_spaces_mib(), 10u * 1024);
  EXPECT_EQ(free.max_requests_per_s(), 100u);
  EXPECT_EQ(caps_of(config, Tier::enterprise).max_vcpus(), 32u);
  EXPECT_EQ(config.keys().removed_key_sandboxes(), "destroy");
  config.mutable_keys()->set_removed_key_sandboxes("maybe");
  auto checked = validate(config);
  ASSERT_FALSE(checked);
  EXPECT_NE(checked.error().message().find("removed_key_sandboxes"), std::string::npos);
}
