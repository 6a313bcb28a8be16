#include "net/egress.hpp"

#include "net/allowlist.hpp"

namespace vesicle::net {

const char* to_string(EgressMode mode) {
  switch (mode) {
  case EgressMode::off:
    return "off";
  case EgressMode::open:
    return "open";
  case EgressMode::allowlist:
    return "allowlist";
  }
  return "?";
}

Result<EgressPolicy> EgressPolicy::allowlist(std::vector<std::string> patterns) {
  if (patterns.empty()) {
    return make_error("egress allowlist", "the list is empty; use egress off to allow nothing");
  }
  auto parsed = Allowlist::parse(patterns);
  if (!parsed) return std::move(parsed).error();
  return EgressPolicy{EgressMode::allowlist, parsed->patterns(), {}};
}

} // namespace vesicle::net
