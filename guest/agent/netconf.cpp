#include "guest/agent/netconf.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "guest/agent/log.hpp"
#include "guest/agent/loop.hpp"

namespace vesicle::agent {

namespace {

// net/layout.hpp on the host side; the agent is a static binary and
// does not link the host's network library.
constexpr const char* kLink = "eth0";
constexpr const char* kGuestAddress = "172.16.0.2";
constexpr const char* kGuestBroadcast = "172.16.0.3";
constexpr const char* kGateway = "172.16.0.1";
constexpr unsigned char kPrefix = 30;
constexpr const char* kResolvConf = "nameserver 172.16.0.1\noptions timeout:2 attempts:2\n";

std::string errno_text(const char* what, int error) {
  return std::string(what) + ": " + std::strerror(error);
}

// One rtnetlink request at a time, each acknowledged: small, and every
// failure is the kernel's own errno for that request.
class Rtnl {
public:
  Rtnl() : fd_(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE)) {}
  ~Rtnl() {
    if (fd_ >= 0) ::close(fd_);
  }
  Rtnl(const Rtnl&) = delete;
  Rtnl& operator=(const Rtnl&) = delete;
  bool ok() const { return fd_ >= 0; }

  // Starts a message: header plus the fixed-size body of `type`.
  template <class Body> Body& begin(std::uint16_t type, std::uint16_t flags) {
    std::memset(buffer_, 0, sizeof buffer_);
    auto* header = reinterpret_cast<nlmsghdr*>(buffer_);
    header->nlmsg_len = NLMSG_LENGTH(sizeof(Body));
    header->nlmsg_type = type;
    header->nlmsg_flags = static_cast<std::uint16_t>(NLM_F_REQUEST | NLM_F_ACK | flags);
    header->nlmsg_seq = ++seq_;
    return *reinterpret_cast<Body*>(NLMSG_DATA(header));
  }

  void attribute(std::uint16_t type, const void* data, std::size_t size) {
    auto* header = reinterpret_cast<nlmsghdr*>(buffer_);
    const std::size_t at = NLMSG_ALIGN(header->nlmsg_len);
    const std::size_t length = RTA_LENGTH(size);
    if (at + RTA_ALIGN(length) > sizeof buffer_) return; // our messages are far smaller
    auto* rta = reinterpret_cast<rtattr*>(buffer_ + at);
    rta->rta_type = type;
    rta->rta_len = static_cast<std::uint16_t>(length);
    std::memcpy(RTA_DATA(rta), data, size);
    header->nlmsg_len = static_cast<std::uint32_t>(at + RTA_ALIGN(length));
  }

  // Sends the message and waits for its acknowledgement: 0 or an errno.
  int send() {
    auto* header = reinterpret_cast<nlmsghdr*>(buffer_);
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(fd_, buffer_, header->nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel),
                 sizeof kernel) < 0)
      return errno;
    char reply[4096];
    for (;;) {
      const ssize_t n = ::recv(fd_, reply, sizeof reply, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      int length = static_cast<int>(n);
      for (auto* msg = reinterpret_cast<nlmsghdr*>(reply); NLMSG_OK(msg, length);
           msg = NLMSG_NEXT(msg, length)) {
        if (msg->nlmsg_seq != seq_ || msg->nlmsg_type != NLMSG_ERROR) continue;
        const auto* answer = static_cast<const nlmsgerr*>(NLMSG_DATA(msg));
        return -answer->error;
      }
    }
  }

private:
  int fd_;
  std::uint32_t seq_ = 0;
  alignas(nlmsghdr) char buffer_[512];
};

int set_link_up(Rtnl& rtnl, int index) {
  auto& link = rtnl.begin<ifinfomsg>(RTM_NEWLINK, 0);
  link.ifi_family = AF_UNSPEC;
  link.ifi_index = index;
  link.ifi_flags = IFF_UP;
  link.ifi_change = IFF_UP;
  return rtnl.send();
}

int add_address(Rtnl& rtnl, int index) {
  auto& address = rtnl.begin<ifaddrmsg>(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE);
  address.ifa_family = AF_INET;
  address.ifa_prefixlen = kPrefix;
  address.ifa_scope = RT_SCOPE_UNIVERSE;
  address.ifa_index = static_cast<unsigned>(index);
  in_addr local{}, broadcast{};
  ::inet_pton(AF_INET, kGuestAddress, &local);
  ::inet_pton(AF_INET, kGuestBroadcast, &broadcast);
  rtnl.attribute(IFA_LOCAL, &local, sizeof local);
  rtnl.attribute(IFA_ADDRESS, &local, sizeof local);
  rtnl.attribute(IFA_BROADCAST, &broadcast, sizeof broadcast);
  return rtnl.send();
}

int add_default_route(Rtnl& rtnl, int index) {
  auto& route = rtnl.begin<rtmsg>(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE);
  route.rtm_family = AF_INET;
  route.rtm_dst_len = 0;
  route.rtm_table = RT_TABLE_MAIN;
  route.rtm_protocol = RTPROT_BOOT;
  route.rtm_scope = RT_SCOPE_UNIVERSE;
  route.rtm_type = RTN_UNICAST;
  in_addr gateway{};
  ::inet_pton(AF_INET, kGateway, &gateway);
  const std::uint32_t oif = static_cast<std::uint32_t>(index);
  rtnl.attribute(RTA_GATEWAY, &gateway, sizeof gateway);
  rtnl.attribute(RTA_OIF, &oif, sizeof oif);
  return rtnl.send();
}

bool write_file(const std::string& path, const char* text, int& error) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_TRUNC | O_CREAT, 0644);
  if (fd < 0) {
    error = errno;
    return false;
  }
  const std::size_t size = std::strlen(text);
  const bool written = ::write(fd, text, size) == static_cast<ssize_t>(size);
  error = written ? 0 : errno;
  ::close(fd);
  return written;
}

// No IPv6 is ever routed for a sandbox; with it off, clients do not try an
// AAAA or a v6 connect first, and the guest sends no router solicitations.
// "default" covers interfaces that appear later; each existing one is
// switched off itself. Done before eth0 comes up, so it never gets a
// link-local address.
void disable_ipv6(std::string& problems) {
  const std::string dir = "/proc/sys/net/ipv6/conf";
  DIR* entries = ::opendir(dir.c_str());
  if (entries == nullptr) {
    // A kernel without IPv6 has nothing to switch off.
    if (errno != ENOENT) problems += errno_text("; reading /proc/sys/net/ipv6/conf", errno);
    return;
  }
  // "all" and "default" first, so no interface is configured in between.
  std::string names[64];
  int count = 0;
  names[count++] = "all";
  names[count++] = "default";
  while (const dirent* entry = ::readdir(entries)) {
    const std::string name = entry->d_name;
    if (name == "." || name == ".." || name == "all" || name == "default") continue;
    if (count < 64) names[count++] = name;
  }
  ::closedir(entries);
  for (int i = 0; i < count; ++i) {
    int error = 0;
    if (!write_file(dir + "/" + names[i] + "/disable_ipv6", "1", error))
      problems += "; disabling IPv6 on " + names[i] + ": " + std::strerror(error);
  }
}

// Written in place of whatever the image had (a file, or a symlink to a
// resolver daemon's file that does not run here): rename replaces the name.
void write_resolv_conf(std::string& problems) {
  // Writing costs ~40 ms of boot under TCG (a new inode on the root disk);
  // an image that already holds these lines needs none of it.
  if (const int fd = ::open("/etc/resolv.conf", O_RDONLY | O_CLOEXEC); fd >= 0) {
    char current[256];
    const ssize_t n = ::read(fd, current, sizeof current);
    ::close(fd);
    if (n == static_cast<ssize_t>(std::strlen(kResolvConf)) &&
        std::memcmp(current, kResolvConf, static_cast<std::size_t>(n)) == 0)
      return;
  }
  const std::string temporary = "/etc/.resolv.conf.vesicle";
  int error = 0;
  if (!write_file(temporary, kResolvConf, error)) {
    problems += "; writing " + temporary + ": " + std::strerror(error);
    ::unlink(temporary.c_str());
    return;
  }
  if (::rename(temporary.c_str(), "/etc/resolv.conf") != 0) {
    problems += errno_text("; renaming it to /etc/resolv.conf", errno);
    ::unlink(temporary.c_str());
  }
}

} // namespace

std::string configure_network() {
  // Each step's cost goes on the console: this runs on every boot.
  std::uint64_t mark = monotonic_us();
  const std::uint64_t started = mark;
  std::string steps;
  auto step = [&](const char* name) {
    const std::uint64_t now = monotonic_us();
    steps += (steps.empty() ? "" : ", ") + std::string(name) + " " + std::to_string(now - mark);
    mark = now;
  };
  std::string problems;
  disable_ipv6(problems);
  step("ipv6");

  const int index = static_cast<int>(::if_nametoindex(kLink));
  bool configured = false;
  if (index > 0) {
    Rtnl rtnl;
    int error = 0;
    if (!rtnl.ok()) {
      problems += errno_text("; opening an rtnetlink socket", errno);
    } else if (error = set_link_up(rtnl, index); error != 0) {
      problems += std::string("; bringing up eth0: ") + std::strerror(error);
    } else if (step("link"), error = add_address(rtnl, index); error != 0) {
      problems += std::string("; adding 172.16.0.2/30 to eth0: ") + std::strerror(error);
    } else if (error = add_default_route(rtnl, index); error != 0) {
      problems += std::string("; adding the default route via 172.16.0.1: ") + std::strerror(error);
    } else {
      configured = true;
      step("address+route");
    }
    write_resolv_conf(problems);
    step("resolv.conf");
  }

  const std::uint64_t took = monotonic_us() - started;
  std::string summary = index <= 0 ? "network: no eth0 (the VM has no network device)"
                        : configured
                            ? "network: eth0 172.16.0.2/30 via 172.16.0.1, resolver 172.16.0.1"
                            : "network: eth0 is not fully configured";
  summary += ", IPv6 off; " + std::to_string(took) + " us (" + steps + ")";
  if (!problems.empty()) summary += "; problems: " + problems.substr(2);
  return summary;
}

} // namespace vesicle::agent
