#include "hostd/tiers.hpp"

#include <algorithm>

namespace vesicle::hostd {

namespace {

struct Defaults {
  std::uint32_t memory_mib, disk_mib, idle_s, lifetime_s, concurrent;
  std::uint32_t vcpus, spaces, spaces_mib, requests_per_s;
};

// The published caps (product brief, "Tier caps"; config.proto).
constexpr Defaults kDefaults[] = {
    {1024, 4096, 5 * 60, 30 * 60, 10, 2, 5, 10 * 1024, 100},             // free
    {4096, 16384, 30 * 60, 8 * 3600, 50, 4, 50, 100 * 1024, 500},        // pro
    {16384, 65536, 2 * 3600, 24 * 3600, 500, 8, 500, 1024 * 1024, 2000}, // scale
    {65536, 524288, 24 * 3600, 7 * 24 * 3600, 10000, 32, 10000, 16 * 1024 * 1024,
     10000}, // enterprise
};

config::TierCaps* mutable_caps(config::HostdConfig& config, Tier tier) {
  auto* tiers = config.mutable_tiers();
  switch (tier) {
  case Tier::free:
    return tiers->mutable_free();
  case Tier::pro:
    return tiers->mutable_pro();
  case Tier::scale:
    return tiers->mutable_scale();
  case Tier::enterprise:
    return tiers->mutable_enterprise();
  }
  return tiers->mutable_free();
}

// A value of 0 asks for "the most allowed".
std::uint32_t capped(std::uint32_t value, std::uint32_t cap) {
  return value == 0 ? cap : std::min(value, cap);
}

// A cap of 0 is no cap (a TierCaps built without apply_tier_defaults, as the
// other caps added after the first four).
std::uint32_t at_most(std::uint32_t value, std::uint32_t cap) {
  return cap == 0 ? value : std::min(value, cap);
}

} // namespace

const char* to_string(Tier tier) {
  switch (tier) {
  case Tier::free:
    return "free";
  case Tier::pro:
    return "pro";
  case Tier::scale:
    return "scale";
  case Tier::enterprise:
    return "enterprise";
  }
  return "free";
}

std::optional<Tier> parse_tier(std::string_view name) {
  for (auto tier : {Tier::free, Tier::pro, Tier::scale, Tier::enterprise})
    if (name == to_string(tier)) return tier;
  return std::nullopt;
}

void apply_tier_defaults(config::HostdConfig& config) {
  for (auto tier : {Tier::free, Tier::pro, Tier::scale, Tier::enterprise}) {
    auto* caps = mutable_caps(config, tier);
    const auto& d = kDefaults[static_cast<int>(tier)];
    if (caps->max_memory_mib() == 0) caps->set_max_memory_mib(d.memory_mib);
    if (caps->max_disk_mib() == 0) caps->set_max_disk_mib(d.disk_mib);
    if (caps->max_idle_timeout_s() == 0) caps->set_max_idle_timeout_s(d.idle_s);
    if (caps->max_lifetime_s() == 0) caps->set_max_lifetime_s(d.lifetime_s);
    if (caps->max_concurrent() == 0) caps->set_max_concurrent(d.concurrent);
    if (caps->max_vcpus() == 0) caps->set_max_vcpus(d.vcpus);
    if (caps->max_spaces() == 0) caps->set_max_spaces(d.spaces);
    if (caps->max_spaces_mib() == 0) caps->set_max_spaces_mib(d.spaces_mib);
    if (caps->max_requests_per_s() == 0) caps->set_max_requests_per_s(d.requests_per_s);
  }
  if (config.default_key_tier().empty()) config.set_default_key_tier("free");
  if (config.keys().removed_key_sandboxes().empty())
    config.mutable_keys()->set_removed_key_sandboxes("destroy");
}

const config::TierCaps& caps_of(const config::HostdConfig& config, Tier tier) {
  switch (tier) {
  case Tier::free:
    return config.tiers().free();
  case Tier::pro:
    return config.tiers().pro();
  case Tier::scale:
    return config.tiers().scale();
  case Tier::enterprise:
    return config.tiers().enterprise();
  }
  return config.tiers().free();
}

void clamp_request(api::CreateSandboxRequest& request, const config::TierCaps& caps) {
  if (request.has_vcpus()) request.set_vcpus(at_most(request.vcpus(), caps.max_vcpus()));
  if (request.has_memory_mib())
    request.set_memory_mib(std::min(request.memory_mib(), caps.max_memory_mib()));
  if (request.has_disk_mib())
    request.set_disk_mib(std::min(request.disk_mib(), caps.max_disk_mib()));
  if (request.has_idle_timeout_s())
    request.set_idle_timeout_s(capped(request.idle_timeout_s(), caps.max_idle_timeout_s()));
  if (request.has_max_lifetime_s())
    request.set_max_lifetime_s(capped(request.max_lifetime_s(), caps.max_lifetime_s()));
}

void clamp_spec(SandboxSpec& spec, const config::TierCaps& caps) {
  spec.vcpus = at_most(spec.vcpus, caps.max_vcpus());
  spec.memory_mib = std::min(spec.memory_mib, caps.max_memory_mib());
  spec.disk_mib = std::min(spec.disk_mib, caps.max_disk_mib());
  spec.idle_timeout_s = capped(spec.idle_timeout_s, caps.max_idle_timeout_s());
  spec.max_lifetime_s = capped(spec.max_lifetime_s, caps.max_lifetime_s());
}

} // namespace vesicle::hostd
