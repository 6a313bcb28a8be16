// The TLS half of secret injection (secrets.hpp): a per-install certificate
// authority that mints a leaf certificate for each granted name, so the
// egress proxy can terminate the guest's TLS for that name, and the client
// context the proxy uses for its own connection to the real host, which
// verifies the host's certificate against the host's trust store.
//
// The CA lives in a directory of hostd's state: ca.pem (the certificate
// guests trust, 0644) and ca.key (0600), made once on first use with an
// ECDSA P-256 key and kept across restarts, so a guest image or a saved
// sandbox that trusts it keeps working. All cryptography is OpenSSL's.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <boost/asio/ssl/context.hpp>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "common/result.hpp"

namespace vesicle::net {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct EvpPkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyFree>;

struct Leaf {
  X509Ptr certificate;
  EvpPkeyPtr key;
};

class InterceptCa {
public:
  // Loads `dir`/ca.pem and ca.key, or makes both (and `dir`, 0700) when
  // neither exists. One without the other is an error saying which.
  static Result<InterceptCa> load_or_create(const std::filesystem::path& dir);

  // A leaf for exactly `name` (subjectAltName DNS:name, serverAuth), valid
  // from an hour ago for kLeafLifetime, signed by this CA.
  Result<Leaf> mint(const std::string& name) const;

  X509* certificate() const { return certificate_.get(); }
  const std::string& certificate_pem() const { return pem_; }
  static std::filesystem::path certificate_path(const std::filesystem::path& dir) {
    return dir / "ca.pem";
  }

  static constexpr std::chrono::hours kLeafLifetime{24 * 30};

private:
  X509Ptr certificate_;
  EvpPkeyPtr key_;
  std::string pem_;
};

class TlsInterceptor {
public:
  struct Config {
    std::filesystem::path ca_dir;
    // Also trusted for upstream hosts, besides the system store: a test
    // internet's own CA. Guests never see it.
    std::filesystem::path upstream_extra_ca;
  };
  static Result<std::shared_ptr<TlsInterceptor>> create(const Config& config);

  const InterceptCa& ca() const { return ca_; }
  // The server context presenting a leaf for `name`; minted on first use
  // and kept (re-minted when a day old, so a long-lived hostd never serves
  // an expired leaf). Thread-safe.
  Result<std::shared_ptr<boost::asio::ssl::context>> server_context(const std::string& name);
  // The client context for upstream connections: peer verification on, the
  // system trust store (plus upstream_extra_ca). Set the name per
  // connection with expect_host().
  boost::asio::ssl::context& upstream_context() { return upstream_; }
  // SNI and hostname verification for `name` on one upstream connection.
  static Result<void> expect_host(SSL* ssl, const std::string& name);

private:
  TlsInterceptor(InterceptCa ca, boost::asio::ssl::context upstream)
      : ca_(std::move(ca)), upstream_(std::move(upstream)) {}
  struct Minted {
    std::shared_ptr<boost::asio::ssl::context> context;
    std::chrono::steady_clock::time_point at;
  };
  InterceptCa ca_;
  boost::asio::ssl::context upstream_;
  std::mutex mutex_;
  std::map<std::string, Minted> leaves_;
};

// OpenSSL's queued errors as one line (and clears the queue).
std::string openssl_error_text();

} // namespace vesicle::net
