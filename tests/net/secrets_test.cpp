// Secret grants, header rewriting and the egress CA's certificates (no
// network, no root).
#include <sys/stat.h>

#include <filesystem>

#include <gtest/gtest.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "net/header_rewrite.hpp"
#include "net/secrets.hpp"
#include "net/tls_intercept.hpp"

namespace vesicle::net {
namespace {

namespace fs = std::filesystem;

const std::vector<HeaderField> kAuth = {{"Authorization", "Bearer sk-test"}};

TEST(HeaderRewrite, AddsAHeaderBeforeTheBlankLine) {
  auto out = rewrite_request_head("GET / HTTP/1.1\r\nHost: api.test\r\n\r\n", kAuth);
  ASSERT_TRUE(out) << out.error().message();
  EXPECT_EQ(*out, "GET / HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer sk-test\r\n\r\n");
}

TEST(HeaderRewrite, ReplacesAPlaceholderWhateverItsCase) {
  auto out =
      rewrite_request_head("POST /v1 HTTP/1.1\r\nauthorization: placeholder\r\nHost: api.test\r\n"
                           "AUTHORIZATION: again\r\nContent-Length: 2\r\n\r\n",
                           kAuth);
  ASSERT_TRUE(out) << out.error().message();
  EXPECT_EQ(*out, "POST /v1 HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\n"
                  "Authorization: Bearer sk-test\r\n\r\n");
}

TEST(HeaderRewrite, DropsFoldedLinesOfAReplacedFieldOnly) {
  auto out = rewrite_request_head(
      "GET / HTTP/1.1\r\nAuthorization: a\r\n b\r\nX-Other: c\r\n d\r\n\r\n", kAuth);
  ASSERT_TRUE(out) << out.error().message();
  EXPECT_EQ(*out, "GET / HTTP/1.1\r\nX-Other: c\r\n d\r\nAuthorization: Bearer sk-test\r\n\r\n");
}

TEST(HeaderRewrite, KeepsBareLfHeadsBareLf) {
  auto out = rewrite_request_head("GET / HTTP/1.1\nHost: a\n\n", kAuth);
  ASSERT_TRUE(out) << out.error().message();
  EXPECT_EQ(*out, "GET / HTTP/1.1\nHost: a\nAuthorization: Bearer sk-test\n\n");
}

TEST(HeaderRewrite, RefusesAnUnfinishedHead) {
  EXPECT_FALSE(rewrite_request_head("GET / HTTP/1.1\r\nHost: a\r\n", kAuth));
}

TEST(SecretGrants, NormalizesAndChecksAgainstTheAllowlist) {
  auto ok = check_secret_grants({{"API.Example.Test.", kAuth}}, {"*.example.test"});
  ASSERT_TRUE(ok) << ok.error().message();
  EXPECT_EQ(ok->count("api.example.test"), 1u);
  EXPECT_EQ(granted_names(*ok), std::vector<std::string>{"api.example.test"});

  auto unlisted = check_secret_grants({{"other.test", kAuth}}, {"api.test"});
  ASSERT_FALSE(unlisted);
  EXPECT_NE(unlisted.error().message().find("egress_allow"), std::string::npos);
  EXPECT_FALSE(check_secret_grants({{"*.example.test", kAuth}}, {"*.example.test"}));
  EXPECT_FALSE(check_secret_grants({{"10.0.0.1", kAuth}}, {"api.test"}));
  EXPECT_FALSE(check_secret_grants({{"api.test", {}}}, {"api.test"}));
}

TEST(SecretGrants, RefusesBadHeadersWithoutQuotingTheValue) {
  for (const auto& bad : std::vector<HeaderField>{{"Bad Name", "v"},
                                                  {"Host", "v"},
                                                  {"Content-Length", "1"},
                                                  {"Transfer-Encoding", "chunked"},
                                                  {"X-Key", "sk-secret\r\nX-Evil: 1"}}) {
    auto checked = check_secret_grants({{"api.test", {bad}}}, {"api.test"});
    ASSERT_FALSE(checked) << bad.name;
    EXPECT_EQ(checked.error().message().find("sk-secret"), std::string::npos);
  }
  EXPECT_FALSE(check_secret_grants({{"api.test", {{"X-A", "1"}, {"x-a", "2"}}}}, {"api.test"}));
}

class EgressCa : public ::testing::Test {
protected:
  void SetUp() override {
    char dir_template[] = "/tmp/vesicle-ca-test-XXXXXX";
    ASSERT_TRUE(mkdtemp(dir_template));
    dir_ = dir_template;
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(EgressCa, IsMadeOnceWithAPrivateKeyAndLoadedAfterwards) {
  auto made = InterceptCa::load_or_create(dir_ / "ca");
  ASSERT_TRUE(made) << made.error().message();
  struct stat key {};
  ASSERT_EQ(stat((dir_ / "ca" / "ca.key").c_str(), &key), 0);
  EXPECT_EQ(key.st_mode & 0777, 0600u);
  struct stat dir {};
  ASSERT_EQ(stat((dir_ / "ca").c_str(), &dir), 0);
  EXPECT_EQ(dir.st_mode & 0777, 0700u);
  EXPECT_EQ(X509_check_ca(made->certificate()), 1);

  auto loaded = InterceptCa::load_or_create(dir_ / "ca");
  ASSERT_TRUE(loaded) << loaded.error().message();
  EXPECT_EQ(loaded->certificate_pem(), made->certificate_pem());

  fs::remove(dir_ / "ca" / "ca.key");
  auto half = InterceptCa::load_or_create(dir_ / "ca");
  ASSERT_FALSE(half);
  EXPECT_NE(half.error().message().find("only ca.pem"), std::string::npos);
}

TEST_F(EgressCa, MintsALeafForExactlyTheNameThatVerifiesAgainstTheCa) {
  auto ca = InterceptCa::load_or_create(dir_ / "ca");
  ASSERT_TRUE(ca) << ca.error().message();
  auto leaf = ca->mint("api.example.test");
  ASSERT_TRUE(leaf) << leaf.error().message();
  X509* cert = leaf->certificate.get();
  EXPECT_EQ(X509_check_host(cert, "api.example.test", 0, 0, nullptr), 1);
  EXPECT_NE(X509_check_host(cert, "other.example.test", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_private_key(cert, leaf->key.get()), 1);
  EXPECT_EQ(X509_check_ca(cert), 0);

  auto verify = [&](X509* anchor) {
    X509_STORE* store = X509_STORE_new();
    X509_STORE_add_cert(store, anchor);
    X509_STORE_CTX* context = X509_STORE_CTX_new();
    X509_STORE_CTX_init(context, store, cert, nullptr);
    X509_STORE_CTX_set_purpose(context, X509_PURPOSE_SSL_SERVER);
    X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(context), X509_V_FLAG_X509_STRICT);
    int ok = X509_verify_cert(context);
    X509_STORE_CTX_free(context);
    X509_STORE_free(store);
    return ok == 1;
  };
  EXPECT_TRUE(verify(ca->certificate()));
  auto other = InterceptCa::load_or_create(dir_ / "other");
  ASSERT_TRUE(other) << other.error().message();
  EXPECT_FALSE(verify(other->certificate()));
}

TEST_F(EgressCa, ServerContextsAreCachedPerName) {
  auto interceptor = TlsInterceptor::create({dir_ / "ca", {}});
  ASSERT_TRUE(interceptor) << interceptor.error().message();
  auto a = (*interceptor)->server_context("a.test");
  auto again = (*interceptor)->server_context("a.test");
  auto b = (*interceptor)->server_context("b.test");
  ASSERT_TRUE(a && again && b);
  EXPECT_EQ(a->get(), again->get());
  EXPECT_NE(a->get(), b->get());
}

} // namespace
} // namespace vesicle::net
