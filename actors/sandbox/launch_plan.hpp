// A launch plan: where a new sandbox's VM comes from. VmHost::launch takes
// one; the registry makes it from the pool's answer, a fork or a resume.
#pragma once

#include <string>
#include <variant>

namespace vesicle {

// Where a sandbox's VM comes from: one of these, each with what it needs.
namespace launch {
// Boot the guest kernel from scratch.
struct ColdBoot {};
// Restore from the pool's template snapshot; cold boot while it is not
// built yet.
struct FromTemplate {
  std::string template_key;
};
// Adopt this waiting pool VM; if it died meanwhile, restore from its
// template as FromTemplate does.
struct FromPoolVm {
  std::string pool_vm_id;
  std::string template_key;
};
// A fork's child: restore from the fork snapshot fork_parent made, and
// nothing else: a child that cannot be restored fails.
struct FromForkSnapshot {
  std::string base_id;
};
// A resume: the Space open_space checked, and nothing else.
struct FromSpace {
  std::string space_id;
};
// A saved template (template_store.hpp): adopt this waiting VM of its pool
// if one was taken ("" if none), else restore from the template; never a
// cold boot (that would not be the template's state).
struct FromSavedTemplate {
  std::string template_id;
  std::string pool_vm_id;
};
} // namespace launch
using LaunchPlan =
    std::variant<launch::ColdBoot, launch::FromTemplate, launch::FromPoolVm,
                 launch::FromForkSnapshot, launch::FromSpace, launch::FromSavedTemplate>;

} // namespace vesicle
