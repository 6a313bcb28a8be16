// API key tiers and their caps. Every key has a tier (stored with it in the
// keys file, hostd/keys.hpp); a create is clamped to the tier's caps
// silently, and a key at its concurrency cap gets 429. The caps live in the
// configuration (messages/config.proto TiersConfig) with the published
// defaults filled in by apply_tier_defaults.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "messages/api.pb.h"
#include "messages/caf_types.hpp"
#include "messages/config.pb.h"

namespace vesicle::hostd {

enum class Tier { free, pro, scale, enterprise };

const char* to_string(Tier tier);
// "free", "pro", "scale", "enterprise"; nullopt for anything else.
std::optional<Tier> parse_tier(std::string_view name);
inline constexpr const char* kTierNames = "free, pro, scale, enterprise";

// Fills every tier cap left 0 with its published default, and
// default_key_tier with "free".
void apply_tier_defaults(config::HostdConfig& config);

// The caps of `tier` in a configuration with its defaults applied.
const config::TierCaps& caps_of(const config::HostdConfig& config, Tier tier);

// The request's explicit sizes and times lowered to the caps, before the
// host's own range checks: a free key asking for 8 GiB gets 1 GiB, not a
// 400 for exceeding the host's maximum. A timeout of 0 ("as long as
// allowed") becomes the cap.
void clamp_request(api::CreateSandboxRequest& request, const config::TierCaps& caps);

// The same for a spec after defaults were applied (a default may exceed a
// small tier's cap).
void clamp_spec(SandboxSpec& spec, const config::TierCaps& caps);

} // namespace vesicle::hostd
