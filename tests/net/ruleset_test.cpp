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
  return SlotRules{"vs_slot", mode, Ipv4::parse("10.222.0.6").value(), denied,
                   Ipv4::parse("198.18.1.53").value()};
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

TEST(Ruleset, AllowlistProxiesWebAndForwardsOnlyLearnedAddresses) {
  auto text = slot_ruleset(slot(EgressMode::allowlist));
  EXPECT_TRUE(
      has(text, "tcp dport { 80, 443 } redirect to :" + std::to_string(layout::kProxyPort)));
  EXPECT_TRUE(has(text, "ip daddr @allowed tcp dport != { 80, 443 } accept"));
  EXPECT_FALSE(has(text, "dnat ip to"));
  EXPECT_FALSE(has(text, "meta nfproto ipv4 accept"));
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
