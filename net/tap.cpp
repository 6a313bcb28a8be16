#include "net/tap.hpp"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>

#include <cstring>

namespace vesicle::net {
namespace {

constexpr short kTapFlags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;

Result<UniqueFd> open_and_set(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ) {
    return make_error("name tap device", "1-15 characters", name);
  }
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) return sys_error("open", "/dev/net/tun");
  UniqueFd tun(fd);
  ifreq request{};
  std::strncpy(request.ifr_name, name.c_str(), IFNAMSIZ - 1);
  request.ifr_flags = kTapFlags;
  if (ioctl(tun.get(), TUNSETIFF, &request) != 0) {
    int err = errno;
    auto error = sys_error("TUNSETIFF", name, err);
    if (err == EBUSY)
      error.detail = "another process still holds this tap (a VM that did not exit)";
    return error;
  }
  return tun;
}

} // namespace

Result<void> create_persistent_tap(const std::string& name) {
  auto tun = open_and_set(name);
  if (!tun) return std::move(tun).error().with_context("creating tap " + name);
  if (ioctl(tun->get(), TUNSETPERSIST, 1) != 0) return sys_error("TUNSETPERSIST", name);
  return {};
}

Result<UniqueFd> attach_tap(const std::string& name) {
  auto tun = open_and_set(name);
  if (!tun) return std::move(tun).error().with_context("attaching to tap " + name);
  return tun;
}

} // namespace vesicle::net
