// Secrets that never enter the sandbox: HTTP headers hostd's egress proxy
// sets on every request a sandbox sends to a granted name, over TLS it
// terminates itself (tls_intercept.hpp). The guest sends no header, or a
// placeholder the proxy replaces; the values live only in hostd's memory
// for the sandbox's life and are never logged (no message, error or
// to_string here spells a value).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.hpp"

namespace vesicle::net {

struct HeaderField {
  std::string name; // an HTTP token, e.g. "Authorization"
  std::string value;
};

// Exact normalized host name -> the headers set on its requests.
using SecretGrants = std::map<std::string, std::vector<HeaderField>>;

// Checks every name and header and normalizes the names. A name must be an
// exact host name (no wildcard) that `allow` (allowlist patterns) allows;
// a header name an HTTP token that is not hop-by-hop or framing (Host,
// Content-Length, Transfer-Encoding, Connection, Upgrade); a value without
// CR, LF or NUL. Errors name the host and header, never the value.
Result<SecretGrants> check_secret_grants(const SecretGrants& grants,
                                         const std::vector<std::string>& allow);

// The names of `grants` (what a Space stores instead of the values).
std::vector<std::string> granted_names(const SecretGrants& grants);

} // namespace vesicle::net
