#include "hostd/network.hpp"

#include <algorithm>
#include <map>
#include <memory>

#include "net/allowlist.hpp"
#include "net/egress.hpp"

namespace vesicle::hostd {

namespace {

// More names than this is a configuration mistake, and each costs the DNS
// forwarder a comparison per query.
constexpr int kMaxAllowlist = 64;
// Secrets are API credentials: a few hosts, a few headers, a few KiB each.
// More is a mistake, and every request to a granted host carries them.
constexpr std::size_t kMaxSecretHosts = 16;
constexpr std::size_t kMaxSecretHeaders = 16;
constexpr std::size_t kMaxSecretValueBytes = 8192;

Error bad_field(const std::string& field, const std::string& value, const std::string& detail) {
  return make_error("check configuration", detail, "network." + field + " = \"" + value + "\"");
}

} // namespace

void apply_network_defaults(config::HostdConfig& config) {
  if (!config.has_network()) return;
  auto& n = *config.mutable_network();
  if (n.default_egress().empty()) n.set_default_egress(n.uplink().empty() ? "off" : "open");
  if (n.max_slots() == 0) n.set_max_slots(64);
  if (n.max_pooled() == 0) n.set_max_pooled(8);
  if (n.prefix().empty()) n.set_prefix("vs");
  if (n.transit().empty()) n.set_transit("10.222.0.0/16");
  if (n.route_table() == 0) n.set_route_table(7316);
  if (n.rule_priority() == 0) n.set_rule_priority(7316);
  const net::BridgeConfig defaults;
  if (n.max_connections() == 0) n.set_max_connections(defaults.guest_limits.max_connections);
  if (n.new_connections_per_second() == 0)
    n.set_new_connections_per_second(defaults.guest_limits.new_connections_per_second);
  if (n.proxy_max_connections() == 0)
    n.set_proxy_max_connections(static_cast<uint32_t>(defaults.proxy_max_connections));
  if (n.proxy_idle_timeout_s() == 0)
    n.set_proxy_idle_timeout_s(static_cast<uint32_t>(defaults.proxy_idle_timeout.count()));
  if (n.secrets_ca_dir().empty()) n.set_secrets_ca_dir(config.state_dir() + "/egress-ca");
}

Result<std::optional<net::BridgeConfig>> bridge_config(const config::HostdConfig& config) {
  if (!config.has_network()) return std::optional<net::BridgeConfig>{};
  const auto& n = config.network();
  net::BridgeConfig bridge;
  bridge.prefix = n.prefix();
  bridge.uplink = n.uplink();
  if (!n.uplink_gateway().empty()) {
    auto gateway = net::Ipv4::parse(n.uplink_gateway());
    if (!gateway) return bad_field("uplink_gateway", n.uplink_gateway(), "not an IPv4 address");
    bridge.uplink_gateway = *gateway;
  }
  if (!n.uplink().empty() && n.upstream_resolver().empty())
    return bad_field("upstream_resolver", "",
                     "an uplink needs a resolver for the sandboxes: set upstream_resolver");
  if (!n.upstream_resolver().empty()) {
    auto resolver = net::Ipv4::parse(n.upstream_resolver());
    if (!resolver)
      return bad_field("upstream_resolver", n.upstream_resolver(), "not an IPv4 address");
    bridge.upstream_resolver = *resolver;
  }
  if (n.denied_networks_size() > 0) {
    bridge.denied_networks.clear();
    for (const auto& text : n.denied_networks()) {
      auto cidr = net::Cidr::parse(text);
      if (!cidr)
        return bad_field("denied_networks", text,
                         "not an IPv4 network with zero host bits, e.g. \"10.0.0.0/8\"");
      bridge.denied_networks.push_back(*cidr);
    }
  }
  for (const auto& text : n.allowed_networks()) {
    auto cidr = net::Cidr::parse(text);
    if (!cidr)
      return bad_field("allowed_networks", text,
                       "not an IPv4 network with zero host bits, e.g. \"10.1.2.0/24\"");
    bridge.allowed_networks.push_back(*cidr);
  }
  bridge.guest_limits.max_connections = n.max_connections();
  bridge.guest_limits.new_connections_per_second = n.new_connections_per_second();
  bridge.guest_limits.smtp = n.allow_smtp();
  if (n.proxy_max_connections() > 0) bridge.proxy_max_connections = n.proxy_max_connections();
  if (n.proxy_idle_timeout_s() > 0)
    bridge.proxy_idle_timeout = std::chrono::seconds(n.proxy_idle_timeout_s());
  bridge.secrets_ca_dir = n.secrets_ca_dir();
  bridge.upstream_extra_ca = n.upstream_extra_ca();
  if (n.default_egress() != "open" && n.default_egress() != "off")
    return bad_field("default_egress", n.default_egress(), "must be \"open\" or \"off\"");
  if (n.default_egress() == "open" && n.uplink().empty())
    return bad_field("default_egress", "open", "open egress needs network.uplink");
  auto transit = net::Cidr::parse(n.transit());
  if (!transit) return bad_field("transit", n.transit(), "not an IPv4 network, e.g. 10.222.0.0/16");
  bridge.transit = *transit;
  bridge.route_table = n.route_table();
  bridge.rule_priority = n.rule_priority();
  bridge.max_slots = n.max_slots();
  bridge.max_pooled = std::min<std::size_t>(n.max_pooled(), n.max_slots());
  if (auto valid = bridge.validate(); !valid) return std::move(valid).error();
  return std::optional<net::BridgeConfig>(std::move(bridge));
}

Result<SecretValues> secret_values(const SecretsField& secrets,
                                   const std::vector<std::string>* allow,
                                   const config::HostdConfig& config) {
  if (secrets.empty()) return SecretValues{};
  auto refuse = [](const std::string& why) {
    return Error::of(ErrorKind::invalid_argument, "secrets: " + why);
  };
  if (!config.has_network() || config.network().secrets_ca_dir().empty())
    return refuse("this host has no sandbox network (or no network.secrets_ca_dir), so it "
                  "cannot set headers on a sandbox's requests; create without secrets, or have "
                  "the operator configure the network section");
  if (allow && allow->empty())
    return refuse("a sandbox with secrets needs an allowlist: add each of their hosts to "
                  "egress_allow (open egress would let the sandbox send its requests elsewhere)");
  if (secrets.size() > kMaxSecretHosts)
    return refuse("at most " + std::to_string(kMaxSecretHosts) + " hosts, got " +
                  std::to_string(secrets.size()));
  net::SecretGrants grants;
  for (const auto& [host, headers] : secrets) {
    if (headers.fields().empty())
      return refuse("\"" + host + "\" has no headers; give {\"Header-Name\": \"value\"}");
    if (headers.fields_size() > static_cast<int>(kMaxSecretHeaders))
      return refuse("\"" + host + "\": at most " + std::to_string(kMaxSecretHeaders) +
                    " headers per host");
    auto& fields = grants[host];
    for (const auto& [name, value] : headers.fields()) {
      const std::string where = "\"" + host + "\" header \"" + name + "\"";
      if (value.kind_case() != google::protobuf::Value::kStringValue)
        return refuse(where + ": the value must be a string");
      if (value.string_value().size() > kMaxSecretValueBytes)
        return refuse(where + ": the value is longer than " + std::to_string(kMaxSecretValueBytes) +
                      " bytes");
      fields.push_back({name, value.string_value()});
    }
    // The Struct's map has no order: sorted, so equal grants compare equal.
    std::sort(fields.begin(), fields.end(),
              [](const auto& a, const auto& b) { return a.name < b.name; });
  }
  // A resume's hosts are checked as names only: each allows itself.
  std::vector<std::string> names = net::granted_names(grants);
  auto checked = net::check_secret_grants(grants, allow ? *allow : names);
  if (!checked) return refuse(checked.error().message());
  auto values = std::make_shared<std::map<std::string, SecretValues::Headers>>();
  for (auto& [host, fields] : *checked) {
    auto& out = (*values)[host];
    for (auto& field : fields)
      out.emplace_back(std::move(field.name), std::move(field.value));
  }
  SecretValues result;
  result.grants = std::move(values);
  return result;
}

const char* egress_mode(bool egress, const std::vector<std::string>& allow) {
  if (!egress) return "off";
  return allow.empty() ? "open" : "allowlist";
}

Result<EgressSpec> egress_spec(const api::CreateSandboxRequest& request,
                               const config::HostdConfig& config) {
  EgressSpec spec;
  const bool networked = config.has_network();
  const bool has_uplink = networked && !config.network().uplink().empty();
  const bool default_open = networked && config.network().default_egress() == "open";
  const bool listed = request.egress_allow_size() > 0;
  // An allowlist asks for egress by itself; an explicit false with one is
  // contradictory.
  spec.egress = request.has_egress() ? request.egress() : (listed || default_open);
  if (!spec.egress) {
    if (listed)
      return Error::of(
          ErrorKind::invalid_argument,
          "egress_allow: egress is false, so an allowlist would have no effect; send egress "
          "true (or leave it out) with egress_allow, or drop egress_allow");
    return spec;
  }
  if (listed) {
    if (request.egress_allow_size() > kMaxAllowlist)
      return Error::of(ErrorKind::invalid_argument,
                       "egress_allow: at most " + std::to_string(kMaxAllowlist) + " names, got " +
                           std::to_string(request.egress_allow_size()));
    std::vector<std::string> patterns(request.egress_allow().begin(), request.egress_allow().end());
    for (const auto& pattern : patterns) {
      auto one = net::Allowlist::parse({pattern});
      if (!one)
        return Error::of(
            ErrorKind::invalid_argument,
            "egress_allow: \"" + pattern +
                "\" is not a host name (\"pypi.org\") or a wildcard (\"*.example.com\"); IP "
                "addresses, ports, URLs and other wildcards are not accepted");
      const std::string& normalized = one->patterns().front();
      if (normalized.rfind("*.", 0) == 0 && normalized.find('.', 2) == std::string::npos)
        return Error::of(ErrorKind::invalid_argument,
                         "egress_allow: \"" + pattern +
                             "\" would allow a whole top-level domain; name at "
                             "least two labels after \"*.\", e.g. \"*.example.com\"");
      spec.allow.push_back(normalized);
    }
  }
  if (!has_uplink) {
    const std::string what =
        listed ? "an egress allowlist" : "egress (open by default; egress_allow for a list)";
    return Error::of(ErrorKind::invalid_argument,
                     "egress: this host has no uplink configured, so " + what +
                         " is not available; create with egress false, or have the operator set "
                         "network.uplink " +
                         "and network.upstream_resolver in hostd's configuration");
  }
  return spec;
}

} // namespace vesicle::hostd
