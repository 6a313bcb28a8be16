#include "net/layout.hpp"

namespace vesicle::net::layout {

std::string slot_netns(const std::string& prefix, uint32_t id) {
  return prefix + "-" + std::to_string(id);
}
std::string guest_netns(const std::string& prefix, uint32_t id) {
  return prefix + "-" + std::to_string(id) + "g";
}
std::string egress_netns(const std::string& prefix) {
  return prefix + "-eg";
}
std::string host_link(const std::string& prefix) {
  return prefix + "-up";
}
std::string egress_slot_link(uint32_t id) {
  return "s" + std::to_string(id);
}
std::string nft_table(const std::string& prefix, const char* role) {
  return prefix + "_" + role;
}

} // namespace vesicle::net::layout
