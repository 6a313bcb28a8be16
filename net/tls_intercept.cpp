#include "net/tls_intercept.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/unique_fd.hpp"

namespace vesicle::net {

namespace fs = std::filesystem;
namespace ssl = boost::asio::ssl;

namespace {

constexpr long kCaLifetimeSeconds = 10L * 365 * 24 * 3600;
constexpr long kBackdateSeconds = 3600; // guest clocks after a snapshot restore may lag
constexpr auto kRemintAfter = std::chrono::hours(24);
constexpr size_t kMaxCachedLeaves = 1024;

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;

Error tls_error(std::string operation, std::string subject = {}) {
  return make_error(std::move(operation), openssl_error_text(), std::move(subject));
}

Result<EvpPkeyPtr> new_key() {
  EvpPkeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return tls_error("generate an ECDSA P-256 key");
  return key;
}

Result<void> add_extension(X509* certificate, X509V3_CTX* context, int nid, const char* value) {
  X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, context, nid, value);
  if (!extension) return tls_error("make certificate extension", OBJ_nid2sn(nid));
  int added = X509_add_ext(certificate, extension, -1);
  X509_EXTENSION_free(extension);
  if (!added) return tls_error("add certificate extension", OBJ_nid2sn(nid));
  return {};
}

// A certificate with a random 127-bit serial, the given subject CN and
// validity, and `key`'s public key; extensions and signature are the
// caller's.
Result<X509Ptr> new_certificate(EVP_PKEY* key, const std::string& common_name, long lifetime) {
  X509Ptr certificate(X509_new());
  if (!certificate) return tls_error("allocate certificate");
  X509_set_version(certificate.get(), 2);
  std::unique_ptr<BIGNUM, decltype(&BN_free)> serial(BN_new(), BN_free);
  if (!serial || !BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
      !BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(certificate.get()))) {
    return tls_error("make certificate serial");
  }
  if (!X509_gmtime_adj(X509_getm_notBefore(certificate.get()), -kBackdateSeconds) ||
      !X509_gmtime_adj(X509_getm_notAfter(certificate.get()), lifetime) ||
      !X509_set_pubkey(certificate.get(), key)) {
    return tls_error("fill certificate");
  }
  X509_NAME* subject = X509_get_subject_name(certificate.get());
  if (!X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8,
                                  reinterpret_cast<const unsigned char*>(common_name.c_str()), -1,
                                  -1, 0)) {
    return tls_error("set certificate subject", common_name);
  }
  return certificate;
}

Result<std::string> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return sys_error("open", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Writes `text` to `path` with `mode` through a temporary file and a
// rename, so a crash leaves the old file or the new one, never half.
Result<void> write_file(const fs::path& path, const std::string& text, mode_t mode) {
  fs::path temporary = path;
  temporary += ".tmp";
  ::unlink(temporary.c_str());
  UniqueFd fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd) return sys_error("create", temporary.string());
  if (::fchmod(fd.get(), mode) != 0) return sys_error("chmod", temporary.string());
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error("write", temporary.string());
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return sys_error("fsync", temporary.string());
  if (::rename(temporary.c_str(), path.c_str()) != 0) return sys_error("rename", path.string());
  return {};
}

std::string to_pem(X509* certificate) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), certificate);
  char* data = nullptr;
  long length = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(length));
}

std::string to_pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long length = BIO_get_mem_data(bio.get(), &data);
  std::string pem(data, static_cast<size_t>(length));
  return pem;
}

} // namespace

std::string openssl_error_text() {
  std::string text;
  while (unsigned long code = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof buffer);
    if (!text.empty()) text += "; ";
    text += buffer;
  }
  return text.empty() ? "unknown OpenSSL error" : text;
}

Result<InterceptCa> InterceptCa::load_or_create(const fs::path& dir) {
  const fs::path cert_path = certificate_path(dir);
  const fs::path key_path = dir / "ca.key";
  std::error_code ec;
  bool have_cert = fs::exists(cert_path, ec);
  bool have_key = fs::exists(key_path, ec);
  InterceptCa ca;
  if (have_cert != have_key) {
    return make_error("load the egress CA",
                      std::string("only ") + (have_cert ? "ca.pem" : "ca.key") +
                          " exists; restore the other from a backup, or remove both to make a "
                          "new CA (guests trusting the old one then need the new ca.pem)",
                      dir.string());
  }
  if (have_cert) {
    auto cert_text = read_file(cert_path);
    if (!cert_text) return std::move(cert_text).error();
    auto key_text = read_file(key_path);
    if (!key_text) return std::move(key_text).error();
    BioPtr cert_bio(BIO_new_mem_buf(cert_text->data(), static_cast<int>(cert_text->size())));
    ca.certificate_.reset(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
    BioPtr key_bio(BIO_new_mem_buf(key_text->data(), static_cast<int>(key_text->size())));
    ca.key_.reset(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
    OPENSSL_cleanse(key_text->data(), key_text->size());
    if (!ca.certificate_ || !ca.key_) return tls_error("read the egress CA", dir.string());
    if (X509_check_private_key(ca.certificate_.get(), ca.key_.get()) != 1) {
      return tls_error("check the egress CA's key against ca.pem", dir.string());
    }
    ca.pem_ = std::move(*cert_text);
    return ca;
  }

  fs::create_directories(dir, ec);
  if (ec) return make_error("create directory", ec.message(), dir.string());
  ::chmod(dir.c_str(), 0700);
  auto key = new_key();
  if (!key) return std::move(key).error();
  auto certificate = new_certificate(key->get(), "vesicle egress CA", kCaLifetimeSeconds);
  if (!certificate) return std::move(certificate).error();
  X509* raw = certificate->get();
  X509_set_issuer_name(raw, X509_get_subject_name(raw));
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, raw, raw, nullptr, nullptr, 0);
  for (auto [nid, value] : {std::pair{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
                            std::pair{NID_key_usage, "critical,keyCertSign,cRLSign"},
                            std::pair{NID_subject_key_identifier, "hash"},
                            std::pair{NID_authority_key_identifier, "keyid:always"}}) {
    if (auto added = add_extension(raw, &context, nid, value); !added) return added.error();
  }
  if (!X509_sign(raw, key->get(), EVP_sha256())) return tls_error("sign the egress CA");
  std::string key_pem = to_pem(key->get());
  auto wrote = write_file(key_path, key_pem, 0600);
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  if (!wrote) return std::move(wrote).error().with_context("saving the egress CA");
  ca.pem_ = to_pem(raw);
  if (auto saved = write_file(cert_path, ca.pem_, 0644); !saved) {
    return std::move(saved).error().with_context("saving the egress CA");
  }
  ca.certificate_ = std::move(*certificate);
  ca.key_ = std::move(*key);
  return ca;
}

Result<Leaf> InterceptCa::mint(const std::string& name) const {
  auto key = new_key();
  if (!key) return std::move(key).error();
  auto lifetime = std::chrono::duration_cast<std::chrono::seconds>(kLeafLifetime).count();
  auto certificate = new_certificate(key->get(), name, static_cast<long>(lifetime));
  if (!certificate) return std::move(certificate).error();
  X509* raw = certificate->get();
  X509_set_issuer_name(raw, X509_get_subject_name(certificate_.get()));
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, certificate_.get(), raw, nullptr, nullptr, 0);
  const std::string san = "DNS:" + name;
  for (auto [nid, value] :
       {std::pair{NID_basic_constraints, "critical,CA:FALSE"},
        std::pair{NID_key_usage, "critical,digitalSignature"},
        std::pair{NID_ext_key_usage, "serverAuth"}, std::pair{NID_subject_key_identifier, "hash"},
        std::pair{NID_authority_key_identifier, "keyid:always"},
        std::pair{NID_subject_alt_name, san.c_str()}}) {
    if (auto added = add_extension(raw, &context, nid, value); !added) return added.error();
  }
  if (!X509_sign(raw, key_.get(), EVP_sha256())) return tls_error("sign leaf certificate", name);
  return Leaf{std::move(*certificate), std::move(*key)};
}

Result<std::shared_ptr<TlsInterceptor>> TlsInterceptor::create(const Config& config) {
  auto ca = InterceptCa::load_or_create(config.ca_dir);
  if (!ca) return std::move(ca).error();
  ssl::context upstream(ssl::context::tls_client);
  boost::system::error_code ec;
  SSL_CTX_set_min_proto_version(upstream.native_handle(), TLS1_2_VERSION);
  upstream.set_default_verify_paths(ec);
  if (ec) return make_error("load the host's trust store", ec.message());
  if (!config.upstream_extra_ca.empty()) {
    upstream.load_verify_file(config.upstream_extra_ca.string(), ec);
    if (ec) {
      return make_error("load the extra upstream CA", ec.message(),
                        config.upstream_extra_ca.string());
    }
  }
  upstream.set_verify_mode(ssl::verify_peer);
  return std::shared_ptr<TlsInterceptor>(new TlsInterceptor(std::move(*ca), std::move(upstream)));
}

Result<std::shared_ptr<ssl::context>> TlsInterceptor::server_context(const std::string& name) {
  std::lock_guard lock(mutex_);
  auto now = std::chrono::steady_clock::now();
  if (auto found = leaves_.find(name);
      found != leaves_.end() && now - found->second.at < kRemintAfter) {
    return found->second.context;
  }
  auto leaf = ca_.mint(name);
  if (!leaf) return std::move(leaf).error();
  auto context = std::make_shared<ssl::context>(ssl::context::tls_server);
  SSL_CTX* raw = context->native_handle();
  SSL_CTX_set_min_proto_version(raw, TLS1_2_VERSION);
  if (SSL_CTX_use_certificate(raw, leaf->certificate.get()) != 1 ||
      SSL_CTX_use_PrivateKey(raw, leaf->key.get()) != 1 ||
      SSL_CTX_add1_chain_cert(raw, ca_.certificate()) != 1) {
    return tls_error("load minted leaf", name);
  }
  // No ALPN callback: the guest's client falls back to HTTP/1.1, the only
  // protocol whose request heads the proxy rewrites.
  if (leaves_.size() >= kMaxCachedLeaves) leaves_.clear();
  leaves_[name] = Minted{context, now};
  return context;
}

Result<void> TlsInterceptor::expect_host(SSL* ssl, const std::string& name) {
  if (SSL_set_tlsext_host_name(ssl, name.c_str()) != 1 || SSL_set1_host(ssl, name.c_str()) != 1) {
    return tls_error("set upstream TLS name", name);
  }
  return {};
}

} // namespace vesicle::net
