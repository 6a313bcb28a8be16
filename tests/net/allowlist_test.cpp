// Allowlist patterns and host-name normalization (net/allowlist.hpp).
#include <gtest/gtest.h>

#include "net/allowlist.hpp"
#include "net/egress.hpp"

namespace vesicle::net {
namespace {

Allowlist parsed(std::vector<std::string> patterns) {
  auto list = Allowlist::parse(patterns);
  EXPECT_TRUE(list) << list.error().message();
  return list ? *list : Allowlist{};
}

TEST(Allowlist, MatchesExactNamesCaseAndTrailingDotInsensitively) {
  auto list = parsed({"allowed.test"});
  EXPECT_TRUE(list.allows("allowed.test"));
  EXPECT_TRUE(list.allows("ALLOWED.Test."));
  EXPECT_FALSE(list.allows("www.allowed.test"));
  EXPECT_FALSE(list.allows("allowed.test.evil"));
  EXPECT_FALSE(list.allows("notallowed.test"));
}

TEST(Allowlist, WildcardsMatchSubdomainsOnly) {
  auto list = parsed({"*.example.test"});
  EXPECT_TRUE(list.allows("www.example.test"));
  EXPECT_TRUE(list.allows("a.b.example.test"));
  EXPECT_FALSE(list.allows("example.test"));
  EXPECT_FALSE(list.allows("evilexample.test"));
  EXPECT_FALSE(list.allows("example.test.evil"));
}

TEST(Allowlist, RefusesPatternsThatAreNotHostNames) {
  for (std::string pattern :
       std::vector<std::string>{"", "*", "*.", "1.2.3.4", "*.1.2.3.4", "::1", "[::1]", "a*.test",
                                "*.*.test", "x.*.test", "exa mple.test", "-bad.test", "bad-.test",
                                "a..test", "0x7f.1", "1234", std::string(64, 'a') + ".test"}) {
    EXPECT_FALSE(Allowlist::parse({pattern})) << pattern;
  }
}

TEST(Allowlist, NeverMatchesAddressesOrEscapedLabels) {
  auto list = parsed({"*.test", "allowed.test"});
  for (std::string_view name : {"1.2.3.4", "0x7f.1", "127.1", "a\\046b.test", "allowed.test\\000",
                                "allowed.test/", "allowed.test:443"}) {
    EXPECT_FALSE(list.allows(name)) << name;
  }
}

TEST(Hostname, NormalizesAndValidates) {
  EXPECT_EQ(normalize_hostname("PyPI.org."), "pypi.org");
  EXPECT_EQ(normalize_hostname("_dmarc.example.test"), "_dmarc.example.test");
  EXPECT_EQ(normalize_hostname(std::string(63, 'a') + ".test"), std::string(63, 'a') + ".test");
  EXPECT_FALSE(normalize_hostname(std::string(64, 'a') + ".test"));
  EXPECT_FALSE(normalize_hostname("."));
  EXPECT_FALSE(normalize_hostname("a.b.123"));
}

TEST(EgressPolicy, AllowlistNeedsValidNonEmptyPatterns) {
  EXPECT_FALSE(EgressPolicy::allowlist({}));
  EXPECT_FALSE(EgressPolicy::allowlist({"pypi.org", "10.0.0.1"}));
  auto policy = EgressPolicy::allowlist({"PyPI.org", "*.Example.test"});
  ASSERT_TRUE(policy);
  EXPECT_EQ(policy->mode, EgressMode::allowlist);
  EXPECT_EQ(policy->allow, (std::vector<std::string>{"pypi.org", "*.example.test"}));
}

} // namespace
} // namespace vesicle::net
