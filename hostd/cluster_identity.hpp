// Who this process is in a cluster (docs/cluster.md): a node's name and
// region, the tag its ids carry, the cluster secret, and the checks on the
// configuration's cluster section. A single host has an empty identity.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.hpp"
#include "messages/config.pb.h"

namespace vesicle::hostd {

struct ClusterIdentity {
  std::string node;   // "" on a single host
  std::string region; // "" on a single host
};

// What to_api writes into each sandbox and Space (api.cpp). Set once by
// main before the API serves; read-only afterwards.
const ClusterIdentity& cluster_identity();
void set_cluster_identity(ClusterIdentity identity);

// The 8 hex digits a node's sandbox and Space ids start with after "sb-" or
// "sp-": the first 32 bits of SHA-256 of its name. A gateway refuses a
// second node whose tag collides.
inline constexpr std::size_t kNodeTagDigits = 8;
std::string node_tag(std::string_view node_name);
// The tag in a sandbox ("sb-…") or Space ("sp-…") id; nullopt for any
// other string.
std::optional<std::string> tag_of_id(std::string_view id);

// The cluster secret: the file's content without trailing whitespace; at
// least 16 bytes, and the file readable by its owner only.
Result<std::string> read_cluster_secret(const std::filesystem::path& file);
// Compares without an early exit, so timing says nothing about the secret.
bool secret_matches(std::string_view expected, std::string_view given);

// The cluster section of a node (node_name set): name, region, gateways,
// secret_file; advertise_url, when unset, must be derivable from `listen`
// (not a wildcard address): main then sets it from the bound address.
Result<void> check_node_cluster_config(config::HostdConfig& config);
// The cluster section of a gateway: secret_file, actor_listen (default
// 127.0.0.1:7171).
Result<void> check_gateway_cluster_config(config::HostdConfig& config);
// Defaults for the heartbeat period and the down timeout.
void apply_cluster_defaults(config::ClusterConfig& cluster);

} // namespace vesicle::hostd
