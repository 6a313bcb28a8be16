// The guest's half of trusting the egress CA: the script hostd runs in a
// sandbox with secrets, run here by /bin/sh under a temporary root, and the
// bundle it leaves checked with `openssl verify` against a minted leaf.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <openssl/pem.h>

#include "actors/sandbox/guest_trust.hpp"
#include "net/tls_intercept.hpp"

namespace vesicle {
namespace {

namespace fs = std::filesystem;

std::string read(const fs::path& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

int run_shell(const std::string& script) {
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

size_t count(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1))
    ++n;
  return n;
}

TEST(GuestTrust, TheScriptAddsTheCaToTheBundleOnceAndItVerifiesALeaf) {
  char dir_template[] = "/tmp/vesicle-guest-trust-XXXXXX";
  ASSERT_TRUE(mkdtemp(dir_template));
  const fs::path root = dir_template;
  struct Cleanup {
    fs::path dir;
    ~Cleanup() { fs::remove_all(dir); }
  } cleanup{root};
  fs::create_directories(root / "etc/ssl/certs");
  std::ofstream(root / "etc/ssl/certs/ca-certificates.crt") << "# the image's bundle\n";

  auto ca = net::InterceptCa::load_or_create(root / "ca");
  ASSERT_TRUE(ca) << ca.error().message();
  auto trust = guest_trust(ca->certificate_pem(), root.string());
  ASSERT_EQ(run_shell(trust.script), 0);
  ASSERT_EQ(run_shell(trust.script), 0); // a second handout: no second copy
  const std::string bundle = read(root / "etc/ssl/certs/ca-certificates.crt");
  EXPECT_EQ(count(bundle, ca->certificate_pem()), 1u) << bundle;
  EXPECT_EQ(count(bundle, "# the image's bundle"), 1u);
  EXPECT_EQ(read(root / "usr/local/share/ca-certificates/vesicle-egress.crt"),
            ca->certificate_pem() + (ca->certificate_pem().back() == '\n' ? "\n" : ""))
      << "kept where update-ca-certificates finds it";
  EXPECT_EQ(trust.env.at("NODE_EXTRA_CA_CERTS"), kGuestCaFile);
  EXPECT_EQ(trust.env.at("SSL_CERT_FILE"), kGuestCaBundle);
  EXPECT_EQ(trust.env.at("REQUESTS_CA_BUNDLE"), kGuestCaBundle);

  auto leaf = ca->mint("api.example.test");
  ASSERT_TRUE(leaf) << leaf.error().message();
  const fs::path leaf_path = root / "leaf.pem";
  FILE* out = fopen(leaf_path.c_str(), "w");
  ASSERT_TRUE(out);
  PEM_write_X509(out, leaf->certificate.get());
  fclose(out);
  EXPECT_EQ(run_shell("openssl verify -x509_strict -purpose sslserver -CAfile " +
                      (root / "etc/ssl/certs/ca-certificates.crt").string() + " " +
                      leaf_path.string() + " >/dev/null"),
            0);
}

} // namespace
} // namespace vesicle
