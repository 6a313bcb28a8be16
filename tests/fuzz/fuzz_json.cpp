// hostd's own JSON parser (vmm/json.cpp), which reads every MCP message a
// client POSTs to /mcp and every QMP message from a sandbox's QEMU. A text
// that parses dumps to JSON that parses to the same value, and the typed
// accessors the MCP tools use (as_int for counts and timeouts) are defined
// for every value.
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_check.hpp"
#include "vmm/json.hpp"

namespace {

void visit(const vesicle::json::Value& value) {
  (void)value.as_bool();
  (void)value.as_int();
  (void)value.as_double();
  (void)value.as_string();
  for (const auto& item : value.as_array())
    visit(item);
  for (const auto& [key, member] : value.as_object()) {
    FUZZ_CHECK(value.contains(key));
    visit(member);
  }
}

// The same JSON value; numbers compare as doubles (-0.0 dumps as "-0",
// which parses back as the integer 0).
bool same(const vesicle::json::Value& a, const vesicle::json::Value& b) {
  if (a.is_number() || b.is_number())
    return a.is_number() && b.is_number() && a.as_double() == b.as_double();
  if (a.is_array()) {
    if (!b.is_array() || a.as_array().size() != b.as_array().size()) return false;
    for (std::size_t i = 0; i < a.as_array().size(); ++i)
      if (!same(a.as_array()[i], b.as_array()[i])) return false;
    return true;
  }
  if (a.is_object()) {
    if (!b.is_object() || a.as_object().size() != b.as_object().size()) return false;
    for (const auto& [key, member] : a.as_object())
      if (!b.contains(key) || !same(member, b[key])) return false;
    return true;
  }
  return a.is_null() == b.is_null() && a.is_bool() == b.is_bool() &&
         a.is_string() == b.is_string() && a.as_bool() == b.as_bool() &&
         a.as_string() == b.as_string();
}

} // namespace

extern "C" int VESICLE_FUZZ_ENTRY(const std::uint8_t* data, std::size_t size) {
  auto parsed = vesicle::json::parse(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!parsed) return 0;
  visit(*parsed);
  const std::string dumped = parsed->dump();
  auto again = vesicle::json::parse(dumped);
  FUZZ_CHECK(again);
  FUZZ_CHECK(same(*again, *parsed));
  return 0;
}
