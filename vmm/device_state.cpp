#include "vmm/device_state.hpp"

#include <cstdint>

namespace vesicle::vmm {

namespace {

// migration/savevm.c (QEMU 7.2): the stream's magic and version, and the
// section types used here.
constexpr std::string_view kHeader{"QEVM\0\0\0\3", 8};
constexpr char kConfiguration = 0x07;
constexpr char kSubsection = 0x05;
constexpr char kVmDescription = 0x06;

void put_be32(std::string& out, std::uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((value >> shift) & 0xff));
}

void put_counted(std::string& out, std::string_view text) { // a u8 length, then the bytes
  out.push_back(static_cast<char>(text.size()));
  out.append(text);
}

// vmstate_configuration as QEMU writes it for `-M microvm` with the
// x-ignore-shared capability on (restore turns it on, and QEMU checks that
// both ends agree): the machine type's name, then the "capabilities"
// subsection listing x-ignore-shared.
std::string configuration_section() {
  std::string out;
  out.push_back(kConfiguration);
  const std::string_view machine = "microvm";
  put_be32(out, static_cast<std::uint32_t>(machine.size()));
  out.append(machine);
  out.push_back(kSubsection);
  put_counted(out, "configuration/capabilities");
  put_be32(out, 1); // the subsection's version
  put_be32(out, 1); // one capability
  put_counted(out, "x-ignore-shared");
  return out;
}

} // namespace

Result<std::string> loadable_device_state(std::string_view saved) {
  if (saved.substr(0, kHeader.size()) != kHeader) {
    return make_error("read device state",
                      "it does not start with QEMU 7.2's migration stream header "
                      "(QEVM, version 3)");
  }
  std::string stream(kHeader);
  stream += configuration_section();
  stream.append(saved.substr(kHeader.size()));
  // An empty VM description after the end: QEMU reads one after the last
  // section and logs a complaint when it is missing.
  stream.push_back(kVmDescription);
  put_be32(stream, 2);
  stream += "{}";
  return stream;
}

} // namespace vesicle::vmm
