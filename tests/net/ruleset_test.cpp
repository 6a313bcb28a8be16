// The nftables rule text (net/ruleset.hpp). That nft accepts it is
// checked against the kernel in net_slot_test; here: what each mode allows.
#include <gtest/gtest.h>

#include "net/layout.hpp"
#include "net/ruleset.hpp"

namespace vesicle::net {
namespace {

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

SlotRules slot(EgressMode mode) {
  auto transit = Cidr::parse("10.222.0.0/16").value();
  auto denied = always_denied_networks(transit);
  denied.push_back(Cidr::parse("10.0.0.0/8").value());
  return SlotRules{"vs_slot",
                   mode,
                   Ipv4::parse("10.222.0.6").value(),
                   denied,
                   Ipv4::parse("198.18.1.53").value(),
                   GuestLimits{}};
}

TEST(Ruleset, DeniedSetDropsNestedNetworks) {
  auto text = slot_ruleset(slot(EgressMode::open));
  EXPECT_TRUE(has(text, "10.0.0.0/8"));
  EXPECT_FALSE(has(text, "10.222.0.0/16")); // inside 10.0.0.0/8: nft refuses overlaps
  EXPECT_TRUE(has(text, "169.254.0.0/16"));
  EXPECT_TRUE(has(text, "127.0.0.0/8"));
}

TEST(Ruleset, OffForwardsNothingAndSendsNothing) {
  auto text = slot_ruleset(slot(EgressMode::off));
  EXPECT_FALSE(has(text, "dnat"));
  EXPECT_FALSE(has(text, "redirect"));
  EXPECT_FALSE(has(text, "oifname \"veth0\" meta nfproto ipv4 accept"));
  EXPECT_FALSE(has(text, "@allowed tcp"));
  EXPECT_TRUE(has(text, "oifname \"veth0\" drop"));
  EXPECT_TRUE(has(text, "policy drop"));
}

TEST(Ruleset, OpenSendsDnsUpstreamAndDropsDeniedFirst) {
  auto text = slot_ruleset(slot(EgressMode::open));
  EXPECT_TRUE(has(text, "dnat ip to 198.18.1.53:53"));
  EXPECT_TRUE(has(text, "snat ip to 10.222.0.6"));
  auto denied = text.find("ip daddr @denied reject");
  auto accept = text.find("oifname \"veth0\" meta nfproto ipv4 accept");
  ASSERT_NE(denied, std::string::npos);
  ASSERT_NE(accept, std::string::npos);
  EXPECT_LT(denied, accept);
}

TEST(Ruleset, AllowlistProxiesEveryTcpPortAndForwardsNothing) {
  auto text = slot_ruleset(slot(EgressMode::allowlist));
  // Every TCP port goes to the proxy (which checks a name), but SMTP.
  EXPECT_TRUE(has(
      text,
      "ip daddr != 172.16.0.1 ip daddr != @denied meta l4proto tcp tcp dport != 25 redirect to :" +
          std::to_string(layout::kProxyPort)));
  EXPECT_FALSE(has(text, "80, 443"));
  EXPECT_FALSE(has(text, "@allowed tcp"));             // nothing forwarded by address alone
  EXPECT_TRUE(has(text, "ip daddr != @allowed drop")); // hostd's proxy only to learned addresses
  EXPECT_FALSE(has(text, "dnat ip to"));
  EXPECT_FALSE(has(text, "meta nfproto ipv4 accept"));
}

TEST(Ruleset, SmtpClosedUnlessAllowed) {
  auto rules = slot(EgressMode::open);
  EXPECT_TRUE(has(slot_ruleset(rules), "iifname \"tap0\" tcp dport 25 reject with tcp reset"));
  rules.limits.smtp = true;
  EXPECT_FALSE(has(slot_ruleset(rules), "dport 25"));
  auto allowlist = slot(EgressMode::allowlist);
  allowlist.limits.smtp = true;
  EXPECT_TRUE(has(slot_ruleset(allowlist), "meta l4proto tcp redirect to :"));
}

TEST(Ruleset, GuestConnectionCapsComeFirst) {
  auto rules = slot(EgressMode::open);
  rules.limits.max_connections = 48;
  rules.limits.new_connections_per_second = 50;
  auto text = slot_ruleset(rules);
  EXPECT_TRUE(has(text, "limit rate over 50/second burst 100 packets jump refuse"));
  EXPECT_TRUE(has(text, "ct count over 48 jump refuse"));
  EXPECT_TRUE(has(text, "reject with tcp reset"));
  auto forward = text.find("chain filter_forward");
  auto jump = text.find("ct state new jump guest_limits", forward);
  auto accept = text.find("meta nfproto ipv4 accept", forward);
  ASSERT_NE(jump, std::string::npos);
  EXPECT_LT(jump, accept);
  rules.limits = {0, 0, false};
  EXPECT_FALSE(has(slot_ruleset(rules), "ct count"));
  EXPECT_FALSE(has(slot_ruleset(rules), "limit rate"));
}

TEST(Ruleset, MetadataEndpointsAreAlwaysDenied) {
  auto denied = always_denied_networks(Cidr::parse("10.222.0.0/16").value());
  for (const char* address :
       {"169.254.169.254", "168.63.129.16", "192.0.0.192", "100.100.100.200", "127.0.0.1"}) {
    EXPECT_TRUE(contains_any(denied, Ipv4::parse(address).value())) << address;
  }
  for (const auto& endpoint : metadata_endpoints()) {
    EXPECT_TRUE(contains_any(denied, endpoint.network)) << endpoint.str();
  }
  // Each appears in the rules even when the network around it is denied too.
  auto rules = slot(EgressMode::open);
  rules.denied = denied;
  auto text = slot_ruleset(rules);
  EXPECT_TRUE(has(text, "168.63.129.16/32"));
  EXPECT_TRUE(has(text, "192.0.0.192/32"));
}

TEST(Ipv4, SubtractCutsHolesAtPrefixBoundaries) {
  auto cidr = [](const char* text) { return Cidr::parse(text).value(); };
  auto left = subtract({cidr("10.0.0.0/8"), cidr("192.168.0.0/16")}, {cidr("10.1.0.0/16")});
  EXPECT_EQ(left.size(), 9u); // 8 pieces of 10/8, and 192.168/16 untouched
  EXPECT_FALSE(contains_any(left, Ipv4::parse("10.1.2.3").value()));
  EXPECT_TRUE(contains_any(left, Ipv4::parse("10.0.255.255").value()));
  EXPECT_TRUE(contains_any(left, Ipv4::parse("10.2.0.0").value()));
  EXPECT_TRUE(contains_any(left, Ipv4::parse("10.255.255.255").value()));
  EXPECT_TRUE(contains_any(left, Ipv4::parse("192.168.1.1").value()));
  EXPECT_TRUE(subtract({cidr("100.64.0.0/10")}, {cidr("100.0.0.0/8")}).empty());
  EXPECT_EQ(subtract({cidr("100.64.0.0/10")}, {cidr("10.0.0.0/8")}).size(), 1u);
}

TEST(Ruleset, HostTableOnlyNarrowsTheSandboxLink) {
  auto transit = Cidr::parse("10.222.0.0/16").value();
  auto text = host_ruleset({"vs_host", "vs-up", "eth9", always_denied_networks(transit),
                            Ipv4::parse("198.18.1.53").value()});
  EXPECT_TRUE(has(text, "iifname \"vs-up\" counter drop"));                     // the host itself
  EXPECT_TRUE(has(text, "iifname \"vs-up\" oifname != \"eth9\" counter drop")); // only the uplink
  EXPECT_TRUE(has(text, "iifname \"vs-up\" oifname \"eth9\" masquerade"));
  EXPECT_FALSE(has(text, "policy drop")); // the host's other traffic is not ours to judge
  auto without_uplink = host_ruleset({"vs_host", "vs-up", "", always_denied_networks(transit),
                                      Ipv4::parse("198.18.1.53").value()});
  EXPECT_FALSE(has(without_uplink, "masquerade"));
  EXPECT_TRUE(has(without_uplink, "iifname \"vs-up\" counter drop"));
}

TEST(Ruleset, AllowedElementsCanRestartTimeouts) {
  std::vector<AllowedElement> elements{
      {Ipv4::parse("198.18.1.10").value(), std::chrono::seconds(60)}};
  EXPECT_EQ(allowed_elements("vs_slot", elements, false),
            "add element inet vs_slot allowed { 198.18.1.10 timeout 60s }\n");
  EXPECT_EQ(allowed_elements("vs_slot", elements, true),
            "delete element inet vs_slot allowed { 198.18.1.10 }\n"
            "add element inet vs_slot allowed { 198.18.1.10 timeout 60s }\n");
}

TEST(Layout, TransitPlanGivesEachSlotItsOwnLink) {
  layout::TransitPlan plan(Cidr::parse("10.222.0.0/16").value());
  EXPECT_EQ(plan.host_side().str(), "10.222.0.1");
  EXPECT_EQ(plan.egress_side().str(), "10.222.0.2");
  EXPECT_EQ(plan.slot_egress_side(0).str(), "10.222.0.5");
  EXPECT_EQ(plan.slot_side(0).str(), "10.222.0.6");
  EXPECT_EQ(plan.slot_side(63).str(), "10.222.1.2");
  EXPECT_EQ(plan.max_slots(), 16383u);
}

} // namespace
} // namespace vesicle::net
