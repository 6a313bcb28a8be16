#include "net/conntrack.hpp"

#include <arpa/inet.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <netlink/attr.h>
#include <netlink/errno.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>

#include <fstream>
#include <memory>
#include <string>

#include "net/rtnl.hpp"

namespace vesicle::net {
namespace {
struct MsgDeleter {
  void operator()(nl_msg* msg) const {
    if (msg) nlmsg_free(msg);
  }
};
} // namespace

Result<void> flush_conntrack(std::optional<uint32_t> mark) {
  std::unique_ptr<nl_sock, NlSockDeleter> sock(nl_socket_alloc());
  if (!sock) return make_error("nl_socket_alloc", "out of memory");
  if (int err = nl_connect(sock.get(), NETLINK_NETFILTER); err < 0) {
    return nl_error("connect", "NETLINK_NETFILTER", err);
  }
  // IPCTNL_MSG_CT_DELETE without a tuple is ctnetlink's flush; with
  // CTA_MARK/CTA_MARK_MASK it flushes only the matching entries.
  std::unique_ptr<nl_msg, MsgDeleter> msg(
      nlmsg_alloc_simple((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, NLM_F_ACK));
  if (!msg) return make_error("nlmsg_alloc", "out of memory");
  nfgenmsg header{};
  header.nfgen_family = AF_INET;
  header.version = NFNETLINK_V0;
  header.res_id = 0;
  if (nlmsg_append(msg.get(), &header, sizeof header, NLMSG_ALIGNTO) < 0 ||
      (mark && (nla_put_u32(msg.get(), CTA_MARK, htonl(*mark)) < 0 ||
                nla_put_u32(msg.get(), CTA_MARK_MASK, htonl(0xffffffffu)) < 0))) {
    return make_error("build conntrack flush", "message too large");
  }
  if (int err = nl_send_auto(sock.get(), msg.get()); err < 0) {
    return nl_error("send conntrack flush", mark ? "mark " + std::to_string(*mark) : "all", err);
  }
  int err = nl_wait_for_ack(sock.get());
  if (err < 0 && err != -NLE_OBJ_NOTFOUND) {
    return nl_error("flush conntrack", mark ? "mark " + std::to_string(*mark) : "all", err);
  }
  return {};
}

Result<int> count_conntrack() {
  // /proc/thread-self/net follows the calling thread's namespace.
  std::ifstream table("/proc/thread-self/net/nf_conntrack");
  if (!table) return sys_error("open", "/proc/thread-self/net/nf_conntrack");
  int count = 0;
  std::string line;
  while (std::getline(table, line))
    ++count;
  return count;
}

} // namespace vesicle::net
