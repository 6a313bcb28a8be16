#include "net/secrets.hpp"

#include <algorithm>
#include <cctype>

#include "net/allowlist.hpp"

namespace vesicle::net {

namespace {

bool is_token(std::string_view name) {
  static constexpr std::string_view kSpecials = "!#$%&'*+-.^_`|~";
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || kSpecials.find(c) != std::string::npos;
  });
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// Headers that frame the message or steer the connection: a secret that
// set them could desynchronize the proxy's framing from the server's.
bool reserved(std::string_view name) {
  for (std::string_view r : {"host", "content-length", "transfer-encoding", "connection", "upgrade",
                             "te", "trailer", "keep-alive", "proxy-connection"}) {
    if (iequals(name, r)) return true;
  }
  return false;
}

} // namespace

Result<SecretGrants> check_secret_grants(const SecretGrants& grants,
                                         const std::vector<std::string>& allow) {
  auto allowlist = Allowlist::parse(allow);
  if (!allowlist) return std::move(allowlist).error().with_context("checking secrets");
  SecretGrants checked;
  for (const auto& [host, headers] : grants) {
    auto name = normalize_hostname(host);
    if (!name || host.find('*') != std::string::npos) {
      return make_error("check secrets", "not an exact host name (no wildcards, no IP literals)",
                        host);
    }
    if (!allowlist->allows(*name)) {
      return make_error("check secrets",
                        "the name is not in egress_allow; add it there too, a secret only "
                        "applies to an allowed name",
                        host);
    }
    if (headers.empty()) return make_error("check secrets", "no headers for this name", host);
    auto& out = checked[*name];
    for (const auto& header : headers) {
      if (!is_token(header.name)) {
        return make_error("check secrets", "a header name must be an HTTP token",
                          host + " " + header.name);
      }
      if (reserved(header.name)) {
        return make_error("check secrets", "this header frames the request and cannot be set",
                          host + " " + header.name);
      }
      if (header.value.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
        // Never quote the value: it is the secret.
        return make_error("check secrets", "the header's value holds CR, LF or NUL",
                          host + " " + header.name);
      }
      for (const auto& earlier : out) {
        if (iequals(earlier.name, header.name)) {
          return make_error("check secrets", "the header is given twice", host + " " + header.name);
        }
      }
      out.push_back(header);
    }
  }
  return checked;
}

std::vector<std::string> granted_names(const SecretGrants& grants) {
  std::vector<std::string> names;
  for (const auto& [name, headers] : grants)
    names.push_back(name);
  return names;
}

} // namespace vesicle::net
