#include "actors/sandbox/guest_trust.hpp"

#include <openssl/evp.h>

namespace vesicle {

namespace {

std::string sha256_hex(const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(text.data(), text.size(), digest, &length, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

// Single-quoted for sh. PEM has no quote, but a path from a test might.
std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

} // namespace

GuestTrust guest_trust(const std::string& ca_pem, const std::string& root) {
  const std::string marker = "# vesicle egress CA sha256:" + sha256_hex(ca_pem);
  const std::string bundle = root + kGuestCaBundle;
  const std::string file = root + kGuestCaFile;
  GuestTrust trust;
  trust.script = "set -e\n"
                 "ca=" +
                 quoted(ca_pem) +
                 "\n"
                 "file=" +
                 quoted(file) +
                 "\n"
                 "bundle=" +
                 quoted(bundle) +
                 "\n"
                 "marker=" +
                 quoted(marker) +
                 "\n"
                 "mkdir -p \"$(dirname \"$file\")\" \"$(dirname \"$bundle\")\"\n"
                 "printf '%s\\n' \"$ca\" > \"$file\"\n"
                 "chmod 0644 \"$file\"\n"
                 "if ! grep -qxF \"$marker\" \"$bundle\" 2>/dev/null; then\n"
                 "  printf '%s\\n%s\\n' \"$marker\" \"$ca\" >> \"$bundle\"\n"
                 "fi\n";
  trust.env = {{"SSL_CERT_FILE", kGuestCaBundle},
               {"REQUESTS_CA_BUNDLE", kGuestCaBundle},
               {"NODE_EXTRA_CA_CERTS", kGuestCaFile}};
  return trust;
}

} // namespace vesicle
