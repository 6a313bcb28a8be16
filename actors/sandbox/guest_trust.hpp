// Making a sandbox that holds secrets trust this install's egress CA
// (README, Design: Secrets): hostd runs `script` in the guest as root when
// it hands the sandbox out, and gives its later processes `env`. The guest
// image stays the same for every install; pool VMs restored from a snapshot
// get the CA only when a sandbox with secrets claims them.
#pragma once

#include <map>
#include <string>

namespace vesicle {

inline constexpr const char* kGuestCaBundle = "/etc/ssl/certs/ca-certificates.crt";
inline constexpr const char* kGuestCaFile = "/usr/local/share/ca-certificates/vesicle-egress.crt";

struct GuestTrust {
  // For /bin/sh -c. Appends the CA to the system bundle once (a marker line
  // with its SHA-256 makes a second run a no-op) and keeps it where a later
  // update-ca-certificates picks it up again.
  std::string script;
  // SSL_CERT_FILE and REQUESTS_CA_BUNDLE (the system bundle, for OpenSSL
  // clients and a venv's requests/certifi), NODE_EXTRA_CA_CERTS (Node's own
  // store).
  std::map<std::string, std::string> env;
};

// `ca_pem`: the CA certificate (InterceptCa::certificate_pem()). `root`
// prefixes every path the script writes (tests; "" in a guest).
GuestTrust guest_trust(const std::string& ca_pem, const std::string& root = "");

} // namespace vesicle
