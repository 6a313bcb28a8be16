// hostd's side of sandbox networking: the configuration's network section
// as a BridgeConfig, and a create request's egress checked against what
// this host can give.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/result.hpp"
#include "hostd/api_error.hpp"
#include "messages/api.pb.h"
#include "messages/caf_types.hpp"
#include "messages/config.pb.h"
#include "net/bridge.hpp"

namespace vesicle::hostd {

// Fills the network section's defaults (only when the section is present).
void apply_network_defaults(config::HostdConfig& config);

// The bridge manager's configuration, or nullopt when the section is absent
// (no networking). Errors name the field.
Result<std::optional<net::BridgeConfig>> bridge_config(const config::HostdConfig& config);

struct EgressSpec {
  bool egress = false;
  std::vector<std::string> allow; // normalized patterns; non-empty: allowlist
};

// The egress a create asks for, after the configuration's default: a 400
// naming the field for a bad allowlist, or for a mode this host cannot give
// (saying what to configure).
Result<EgressSpec> egress_spec(const api::CreateSandboxRequest& request,
                               const config::HostdConfig& config);

using SecretsField = google::protobuf::Map<std::string, google::protobuf::Struct>;

// The secrets of a create (or a resume), checked: a 400 naming the host and
// header that are wrong, never a value. `allow` is the sandbox's allowlist,
// which must allow each host; null on a resume, whose Space's hosts were
// checked against its allowlist when the sandbox was made (the registry
// then compares the hosts with the Space's).
Result<SecretValues> secret_values(const SecretsField& secrets,
                                   const std::vector<std::string>* allow,
                                   const config::HostdConfig& config);

// "off", "open" or "allowlist".
const char* egress_mode(bool egress, const std::vector<std::string>& allow);

} // namespace vesicle::hostd
