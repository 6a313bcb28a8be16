#include "messages/caf_types.hpp"

#include <caf/message.hpp>

namespace vesicle {

const char* to_string(SandboxState state) {
  switch (state) {
  case SandboxState::booting:
    return "booting";
  case SandboxState::ready:
    return "ready";
  case SandboxState::destroying:
    return "destroying";
  case SandboxState::dead:
    return "dead";
  case SandboxState::frozen:
    return "frozen";
  }
  return "unknown";
}

const char* to_string(errc code) {
  switch (code) {
  case errc::invalid_argument:
    return "invalid_argument";
  case errc::not_found:
    return "not_found";
  case errc::failed_precondition:
    return "failed_precondition";
  case errc::sandbox_died:
    return "sandbox_died";
  case errc::no_capacity:
    return "no_capacity";
  case errc::boot_failed:
    return "boot_failed";
  case errc::shutting_down:
    return "shutting_down";
  case errc::internal:
    return "internal";
  case errc::quota_exceeded:
    return "quota_exceeded";
  case errc::space_corrupted:
    return "space_corrupted";
  }
  return "unknown";
}

std::string error_message(const caf::error& error) {
  const auto& context = error.context();
  if (context.size() == 1 && context.match_element<std::string>(0))
    return context.get_as<std::string>(0);
  return {};
}

void register_caf_types(caf::actor_system_config& config) {
  config.add_message_type<SandboxSpec>("vesicle.SandboxSpec");
  // Also registers std::vector<SandboxInfo> (SandboxInfoList).
  config.add_message_type<SandboxInfo>("vesicle.SandboxInfo");
  config.add_message_type<SpaceInfo>("vesicle.SpaceInfo");
  config.add_message_type<CapacityInfo>("vesicle.CapacityInfo");
  config.add_message_type<PoolInfo>("vesicle.PoolInfo");
  config.add_message_type<NetSlot>("vesicle.NetSlot");
  config.add_error_category(kErrorCategory,
                            [](std::uint8_t code, caf::atom_value, const caf::message& context) {
                              std::string text = to_string(static_cast<errc>(code));
                              if (context.size() == 1 && context.match_element<std::string>(0))
                                text += ": " + context.get_as<std::string>(0);
                              return text;
                            });
}

} // namespace vesicle
