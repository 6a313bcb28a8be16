// Network namespaces: named ones under /run/netns (so `ip netns` sees them),
// and running code inside one.
//
// A thread that joins a namespace never serves anyone else afterwards:
// in_netns() starts a fresh thread, joins the namespace there, runs the
// function and lets the thread exit. Sockets and netlink handles made inside
// stay bound to that namespace for their whole life, whichever thread uses
// them later, so callers create what they need inside and use it outside.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "common/result.hpp"
#include "common/unique_fd.hpp"

namespace vesicle::net {

inline constexpr const char* kNetnsDir = "/run/netns";

// An open handle on a network namespace. Holding it keeps the namespace
// alive even after its name is removed.
class Netns {
public:
  Netns() = default;
  Netns(std::string name, UniqueFd fd) : name_(std::move(name)), fd_(std::move(fd)) {}

  static Result<Netns> open_named(const std::string& name);
  // The namespace of the calling thread (what "the host" means to hostd).
  static Result<Netns> of_current_thread();

  int fd() const { return fd_.get(); }
  const std::string& name() const { return name_; }
  bool valid() const { return fd_.valid(); }
  Result<Netns> duplicate() const;

private:
  std::string name_;
  UniqueFd fd_;
};

// Creates a fresh namespace named /run/netns/<name>. EEXIST if the name is
// taken. Nothing is left behind on failure.
Result<Netns> create_named_netns(const std::string& name);
// Removes the name. The kernel destroys the namespace (and every link in
// it) once no fd, socket or process refers to it any more. A missing name is
// not an error.
Result<void> delete_named_netns(const std::string& name);
// Names under /run/netns that start with `prefix`, sorted.
Result<std::vector<std::string>> list_named_netns(std::string_view prefix);

namespace detail {
Result<void> join_netns(int netns_fd, const std::string& name);
}

// Runs fn() -> Result<T> on a new thread inside `netns`, waits, returns its
// result. fn must not stash the thread anywhere: it exits when fn returns.
template <class F> auto in_netns(const Netns& netns, F&& fn) -> std::invoke_result_t<F&> {
  using R = std::invoke_result_t<F&>;
  std::optional<R> out;
  std::thread worker([&] {
    try {
      if (auto joined = detail::join_netns(netns.fd(), netns.name()); !joined) {
        out.emplace(std::move(joined).error());
        return;
      }
      out.emplace(fn());
    } catch (const std::exception& e) {
      out.emplace(make_error("run inside network namespace", e.what(), netns.name()));
    }
  });
  worker.join();
  return std::move(*out);
}

// A socket that belongs to `netns` (made on a short-lived thread there).
Result<UniqueFd> socket_in(const Netns& netns, int domain, int type, int protocol = 0);

// Writes a /proc/sys value. /proc/sys/net resolves against the calling
// thread's namespace, so call it inside in_netns() for anything but the host.
Result<void> write_sysctl(const std::string& path, std::string_view value);
Result<std::string> read_sysctl(const std::string& path);

} // namespace vesicle::net
