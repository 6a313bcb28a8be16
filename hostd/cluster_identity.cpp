#include "hostd/cluster_identity.hpp"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include <openssl/sha.h>

#include "hostd/config.hpp"

namespace vesicle::hostd {

namespace {

ClusterIdentity g_identity;

// Names and regions go into ids' routing, URLs and metrics labels: keep
// them to a plain alphabet.
bool plain_label(const std::string& text) {
  if (text.empty() || text.size() > 32) return false;
  for (char c : text)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  return true;
}

bool is_hex(std::string_view text) {
  for (char c : text)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

} // namespace

const ClusterIdentity& cluster_identity() {
  return g_identity;
}

void set_cluster_identity(ClusterIdentity identity) {
  g_identity = std::move(identity);
}

std::string node_tag(std::string_view node_name) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(node_name.data()), node_name.size(), digest);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string tag;
  for (std::size_t i = 0; i < kNodeTagDigits / 2; ++i) {
    tag += kHex[digest[i] >> 4];
    tag += kHex[digest[i] & 0xf];
  }
  return tag;
}

std::optional<std::string> tag_of_id(std::string_view id) {
  if (id.size() < 3 + kNodeTagDigits) return std::nullopt;
  if (id.substr(0, 3) != "sb-" && id.substr(0, 3) != "sp-") return std::nullopt;
  auto tag = id.substr(3, kNodeTagDigits);
  if (!is_hex(tag)) return std::nullopt;
  return std::string(tag);
}

Result<std::string> read_cluster_secret(const std::filesystem::path& file) {
  struct stat info {};
  if (::stat(file.c_str(), &info) != 0) return sys_error("stat", file.string());
  if ((info.st_mode & 077) != 0)
    return make_error("read the cluster secret", "the file is readable by others; chmod 600 it",
                      file.string());
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  std::string secret = text.str();
  while (!secret.empty() && std::isspace(static_cast<unsigned char>(secret.back())))
    secret.pop_back();
  if (secret.size() < 16)
    return make_error("read the cluster secret",
                      "it is shorter than 16 bytes; write e.g. `openssl rand -hex 32` into it",
                      file.string());
  return secret;
}

bool secret_matches(std::string_view expected, std::string_view given) {
  unsigned char diff = expected.size() == given.size() ? 0 : 1;
  for (std::size_t i = 0; i < expected.size(); ++i)
    diff |= static_cast<unsigned char>(expected[i] ^ (i < given.size() ? given[i] : 0));
  return diff == 0;
}

void apply_cluster_defaults(config::ClusterConfig& cluster) {
  if (cluster.heartbeat_ms() == 0) cluster.set_heartbeat_ms(1000);
  if (cluster.down_after_ms() == 0) cluster.set_down_after_ms(3000);
  if (cluster.actor_listen().empty()) cluster.set_actor_listen("127.0.0.1:7171");
}

Result<void> check_node_cluster_config(config::HostdConfig& config) {
  auto& cluster = *config.mutable_cluster();
  apply_cluster_defaults(cluster);
  if (!plain_label(cluster.node_name()))
    return make_error("check configuration", "must be 1-32 of [a-z0-9-]",
                      "cluster.node_name = " + cluster.node_name());
  if (!plain_label(cluster.region()))
    return make_error("check configuration",
                      "a node needs a region label, 1-32 of [a-z0-9-] (e.g. \"eu\")",
                      "cluster.region = " + cluster.region());
  if (cluster.gateways().empty())
    return make_error("check configuration",
                      "a node needs at least one gateway address (\"host:port\")",
                      "cluster.gateways");
  for (const auto& gateway : cluster.gateways())
    if (auto parsed = parse_listen_address(gateway); !parsed)
      return std::move(parsed).error().with_context("checking cluster.gateways");
  if (cluster.secret_file().empty())
    return make_error("check configuration", "a node needs the cluster secret's file",
                      "cluster.secret_file");
  if (cluster.advertise_url().empty()) {
    auto listen = parse_listen_address(config.listen());
    if (!listen) return std::move(listen).error();
    // Left empty: main fills it from the bound address (port 0 included).
    if (listen->host == "0.0.0.0" || listen->host == "::")
      return make_error("check configuration",
                        "listen is a wildcard address: set cluster.advertise_url to the URL "
                        "gateways reach this node's REST API at",
                        "cluster.advertise_url");
  }
  return {};
}

Result<void> check_gateway_cluster_config(config::HostdConfig& config) {
  auto& cluster = *config.mutable_cluster();
  apply_cluster_defaults(cluster);
  if (auto parsed = parse_listen_address(cluster.actor_listen()); !parsed)
    return std::move(parsed).error().with_context("checking cluster.actor_listen");
  if (cluster.secret_file().empty())
    return make_error("check configuration", "a gateway needs the cluster secret's file",
                      "cluster.secret_file");
  return {};
}

} // namespace vesicle::hostd
