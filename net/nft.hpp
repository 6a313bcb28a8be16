// nftables through libnftables. A context is bound, for its whole life, to
// the network namespace of the thread that opened it (libnftables opens its
// netlink socket in nft_ctx_new), so open it inside in_netns() for a slot.
//
// Every libnftables call runs on one thread of hostd's with a descriptor
// table of its own (nft.cpp says why), inside the context's namespace; that
// also serialises them, as libnftables' process-wide state (an interface
// cache, one-time init) needs. Rules name interfaces by iifname/oifname
// strings only: `iif`/`oif` would resolve names through a netlink socket of
// whichever namespace resolves them.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/result.hpp"

struct nft_ctx;

namespace vesicle::net {

class Nft {
public:
  ~Nft();
  Nft(const Nft&) = delete;
  Nft& operator=(const Nft&) = delete;

  // A context in the calling thread's namespace.
  static Result<std::unique_ptr<Nft>> open(std::string namespace_label);

  // Runs a script (one transaction: all of it applies or none does) and
  // returns what nft printed. The Error carries nft's own message.
  Result<std::string> run(std::string_view script);
  // Parses and evaluates without committing (still needs the kernel for
  // the cache of existing objects).
  Result<void> check(std::string_view script);

private:
  Nft(nft_ctx* ctx, int netns_fd, std::string label)
      : ctx_(ctx), netns_fd_(netns_fd), label_(std::move(label)) {}
  nft_ctx* ctx_;
  // The context's namespace, a descriptor in the nft thread's own table
  // (nft.cpp): every call runs there, inside it.
  int netns_fd_;
  std::string label_;
};

} // namespace vesicle::net
