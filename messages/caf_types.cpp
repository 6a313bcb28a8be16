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

caf::error to_caf_error(const Error& error) {
  return make_error(error.kind, error.message());
}

Error to_error(const caf::error& error) {
  if (error.category() == kErrorCategory) {
    if (auto kind = error_kind_from_code(error.code()))
      return Error::of(*kind, error_message(error));
  }
  return Error::of(ErrorKind::internal, "hostd's actors did not answer (" + caf::to_string(error) +
                                            "); retry, and report it if it persists");
}

std::string error_message(const caf::error& error) {
  const auto& context = error.context();
  if (context.size() == 1 && context.match_element<std::string>(0))
    return context.get_as<std::string>(0);
  return {};
}

std::vector<std::string> SecretValues::hosts() const {
  std::vector<std::string> names;
  if (grants)
    for (const auto& [host, headers] : *grants)
      names.push_back(host);
  return names; // a std::map's keys: sorted
}

void register_caf_types(caf::actor_system_config& config) {
  config.add_message_type<SecretValues>("vesicle.SecretValues");
  config.add_message_type<SandboxSpec>("vesicle.SandboxSpec");
  // Also registers std::vector<SandboxInfo> (SandboxInfoList).
  config.add_message_type<SandboxInfo>("vesicle.SandboxInfo");
  config.add_message_type<SpaceInfo>("vesicle.SpaceInfo");
  config.add_message_type<TemplateInfo>("vesicle.TemplateInfo");
  config.add_message_type<CapacityInfo>("vesicle.CapacityInfo");
  config.add_message_type<PoolInfo>("vesicle.PoolInfo");
  config.add_message_type<NetSlot>("vesicle.NetSlot");
  config.add_error_category(kErrorCategory,
                            [](std::uint8_t code, caf::atom_value, const caf::message& context) {
                              std::string text(kind_info(static_cast<ErrorKind>(code)).name);
                              if (context.size() == 1 && context.match_element<std::string>(0))
                                text += ": " + context.get_as<std::string>(0);
                              return text;
                            });
}

} // namespace vesicle
