// hostd's network section and a create's egress: defaults, and the 400s a
// user sees for what this host cannot give. No root, no VM.
#include <gtest/gtest.h>

#include "hostd/config.hpp"
#include "hostd/network.hpp"

namespace vesicle::hostd {
namespace {

config::HostdConfig loaded(const std::string& text) {
  auto parsed = parse_config(text, false);
  EXPECT_TRUE(parsed) << parsed.error().message();
  auto config = parsed ? *parsed : config::HostdConfig{};
  apply_defaults(config);
  return config;
}

api::CreateSandboxRequest request(std::optional<bool> egress, std::vector<std::string> allow) {
  api::CreateSandboxRequest out;
  if (egress) out.set_egress(*egress);
  for (auto& name : allow)
    out.add_egress_allow(name);
  return out;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(NetworkConfig, NoSectionMeansNoNetworkAndEgressOffByDefault) {
  auto config = loaded("");
  ASSERT_TRUE(validate(config));
  auto bridge = bridge_config(config);
  ASSERT_TRUE(bridge);
  EXPECT_FALSE(bridge->has_value());
  auto spec = egress_spec(request(std::nullopt, {}), config);
  ASSERT_TRUE(spec.ok());
  EXPECT_FALSE(spec->egress);
  auto open = egress_spec(request(true, {}), config);
  ASSERT_FALSE(open.ok());
  EXPECT_EQ(open.error().kind, ErrorKind::invalid_argument);
  EXPECT_TRUE(contains(open.error().message(), "network.uplink")) << open.error().message();
  auto listed = egress_spec(request(std::nullopt, {"pypi.org"}), config);
  ASSERT_FALSE(listed.ok());
  EXPECT_TRUE(contains(listed.error().message(), "allowlist")) << listed.error().message();
}

TEST(NetworkConfig, GuestCapsSmtpAndAllowedNetworks) {
  auto config = loaded(R"(network { uplink: "eth9" upstream_resolver: "192.0.2.53" })");
  auto bridge = bridge_config(config);
  ASSERT_TRUE(bridge && bridge->has_value());
  EXPECT_EQ((*bridge)->guest_limits.max_connections, 512u);
  EXPECT_EQ((*bridge)->guest_limits.new_connections_per_second, 100u);
  EXPECT_FALSE((*bridge)->guest_limits.smtp);
  EXPECT_EQ((*bridge)->proxy_max_connections, 128u);
  EXPECT_EQ((*bridge)->proxy_idle_timeout, std::chrono::seconds(300));

  auto custom = loaded(R"(network { uplink: "eth9" upstream_resolver: "192.0.2.53"
      allowed_networks: "10.1.2.0/24" max_connections: 48 new_connections_per_second: 20
      allow_smtp: true proxy_max_connections: 16 proxy_idle_timeout_s: 3 })");
  bridge = bridge_config(custom);
  ASSERT_TRUE(bridge && bridge->has_value()) << bridge.error().message();
  EXPECT_EQ((*bridge)->allowed_networks.at(0).str(), "10.1.2.0/24");
  EXPECT_EQ((*bridge)->guest_limits.max_connections, 48u);
  EXPECT_EQ((*bridge)->guest_limits.new_connections_per_second, 20u);
  EXPECT_TRUE((*bridge)->guest_limits.smtp);
  EXPECT_EQ((*bridge)->proxy_max_connections, 16u);
  EXPECT_EQ((*bridge)->proxy_idle_timeout, std::chrono::seconds(3));

  // Link-local, loopback and multicast can never be opened.
  for (const char* network : {"169.254.0.0/16", "169.254.169.0/24", "127.0.0.0/8", "224.0.0.0/8"}) {
    auto bad = loaded(std::string(R"(network { uplink: "eth9" upstream_resolver: "192.0.2.53"
        allowed_networks: ")") +
                      network + "\" }");
    auto refused = bridge_config(bad);
    ASSERT_FALSE(refused) << network;
    EXPECT_TRUE(contains(refused.error().message(), "allowed_networks"))
        << refused.error().message();
  }
  auto malformed = loaded(R"(network { uplink: "eth9" upstream_resolver: "192.0.2.53"
      allowed_networks: "10.1.2.3/24" })");
  EXPECT_FALSE(bridge_config(malformed));
}

TEST(NetworkConfig, TheEgressCaLivesInTheStateDirUnlessSet) {
  auto config = loaded(R"(state_dir: "/srv/vesicle"
      network { uplink: "eth9" upstream_resolver: "192.0.2.53" })");
  auto bridge = bridge_config(config);
  ASSERT_TRUE(bridge && bridge->has_value());
  EXPECT_EQ((*bridge)->secrets_ca_dir, "/srv/vesicle/egress-ca");
  EXPECT_TRUE((*bridge)->upstream_extra_ca.empty());
  auto custom = loaded(R"(network { uplink: "eth9" upstream_resolver: "192.0.2.53"
      secrets_ca_dir: "/etc/vesicle/ca" upstream_extra_ca: "/etc/vesicle/corp.pem" })");
  auto set = bridge_config(custom);
  ASSERT_TRUE(set && set->has_value());
  EXPECT_EQ((*set)->secrets_ca_dir, "/etc/vesicle/ca");
  EXPECT_EQ((*set)->upstream_extra_ca, "/etc/vesicle/corp.pem");
}

// A create's secrets: checked before any VM, a 400 that names the host and
// header and never the value; hosts normalized, headers sorted.
TEST(NetworkConfig, SecretsAreCheckedAndNeverQuoted) {
  auto config = loaded(R"(network { uplink: "eth9" upstream_resolver: "192.0.2.53" })");
  const std::string secret = "Bearer sk-unit-0123456789";
  auto grant = [&](const std::string& host, const std::string& header, const std::string& value) {
    SecretsField field;
    (*field[host].mutable_fields())[header].set_string_value(value);
    return field;
  };
  const std::vector<std::string> allow = {"api.example.com", "*.corp.example"};
  auto good = grant("API.Example.com", "Authorization", secret);
  (*good["API.Example.com"].mutable_fields())["A-First"].set_string_value("x");
  auto values = secret_values(good, &allow, config);
  ASSERT_TRUE(values) << values.error().message();
  EXPECT_EQ(values->hosts(), std::vector<std::string>{"api.example.com"});
  const auto& headers = values->grants->at("api.example.com");
  ASSERT_EQ(headers.size(), 2u);
  EXPECT_EQ(headers[0].first, "A-First");
  EXPECT_EQ(headers[1].second, secret);
  // Under a wildcard of the allowlist: allowed.
  EXPECT_TRUE(secret_values(grant("db.corp.example", "X-Key", secret), &allow, config));

  const std::vector<std::string> none;
  for (const auto& [field, list] :
       std::vector<std::pair<SecretsField, const std::vector<std::string>*>>{
           {grant("other.example.com", "Authorization", secret), &allow}, // not allowed
           {grant("*.corp.example", "Authorization", secret), &allow},    // a wildcard
           {grant("api.example.com", "Host", secret), &allow},            // framing
           {grant("api.example.com", "Bad Header", secret), &allow},      // not a token
           {grant("api.example.com", "X-Key", "a\r\nb" + secret), &allow},
           {grant("api.example.com", "Authorization", secret), &none}, // open egress
       }) {
    auto refused = secret_values(field, list, config);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().kind, ErrorKind::invalid_argument);
    EXPECT_TRUE(contains(refused.error().message(), "secrets")) << refused.error().message();
    EXPECT_FALSE(contains(refused.error().message(), "sk-unit")) << refused.error().message();
  }
  SecretsField number;
  (*number["api.example.com"].mutable_fields())["X-Key"].set_number_value(5);
  EXPECT_FALSE(secret_values(number, &allow, config));
  // No network: no secrets, said plainly.
  auto bare = secret_values(grant("api.example.com", "X-Key", secret), &allow, loaded(""));
  ASSERT_FALSE(bare);
  EXPECT_TRUE(contains(bare.error().message(), "no sandbox network")) << bare.error().message();
  // A resume checks names and headers only (the Space's allowlist held).
  EXPECT_TRUE(secret_values(grant("api.example.com", "X-Key", secret), nullptr, config));
}

TEST(NetworkConfig, UplinkMakesOpenTheDefault) {
  auto config = loaded(R"(network { uplink: "eth9" uplink_gateway: "192.0.2.1"
                                   upstream_resolver: "192.0.2.53" })");
  ASSERT_TRUE(validate(config)) << validate(config).error().message();
  EXPECT_EQ(config.network().default_egress(), "open");
  auto bridge = bridge_config(config);
  ASSERT_TRUE(bridge && bridge->has_value());
  EXPECT_EQ((*bridge)->uplink, "eth9");
  EXPECT_EQ((*bridge)->prefix, "vs");
  EXPECT_EQ((*bridge)->max_slots, 64u);
  auto spec = egress_spec(request(std::nullopt, {}), config);
  ASSERT_TRUE(spec.ok());
  EXPECT_TRUE(spec->egress);
  EXPECT_STREQ(egress_mode(spec->egress, spec->allow), "open");
  auto listed = egress_spec(request(std::nullopt, {"PyPI.org.", "*.Example.com"}), config);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->allow, (std::vector<std::string>{"pypi.org", "*.example.com"}));
  EXPECT_STREQ(egress_mode(listed->egress, listed->allow), "allowlist");
  auto off = egress_spec(request(false, {}), config);
  ASSERT_TRUE(off.ok());
  EXPECT_STREQ(egress_mode(off->egress, off->allow), "off");
}

TEST(NetworkConfig, BadAllowlistsNameTheEntry) {
  auto config = loaded(R"(network { uplink: "eth9" upstream_resolver: "192.0.2.53" })");
  for (const char* bad : {"1.2.3.4", "*", "*.com", "http://x.org/", "a*.x.org", "x.org:443", ""}) {
    auto spec = egress_spec(request(std::nullopt, {bad}), config);
    ASSERT_FALSE(spec.ok()) << bad;
    EXPECT_EQ(spec.error().kind, ErrorKind::invalid_argument);
    EXPECT_TRUE(contains(spec.error().message(), "egress_allow")) << spec.error().message();
  }
  auto contradictory = egress_spec(request(false, {"x.org"}), config);
  ASSERT_FALSE(contradictory.ok());
  std::vector<std::string> many(65, "x.org");
  EXPECT_FALSE(egress_spec(request(std::nullopt, many), config).ok());
}

TEST(NetworkConfig, BadSectionsAreRefusedNamingTheField) {
  for (auto [text, field] : {
           std::pair{R"(network { uplink: "eth9" })", "upstream_resolver"},
           std::pair{R"(network { default_egress: "open" })", "default_egress"},
           std::pair{R"(network { default_egress: "sometimes" })", "default_egress"},
           std::pair{R"(network { denied_networks: "10.0.0.1/8" })", "denied_networks"},
           std::pair{R"(network { uplink_gateway: "gw" })", "uplink_gateway"},
           std::pair{R"(network { prefix: "Bad-Prefix" })", "prefix"},
       }) {
    auto config = loaded(text);
    auto valid = validate(config);
    ASSERT_FALSE(valid) << text;
    EXPECT_TRUE(contains(valid.error().message(), field)) << valid.error().message();
  }
}

} // namespace
} // namespace vesicle::hostd
