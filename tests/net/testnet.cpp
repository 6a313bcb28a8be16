#include "tests/net/testnet.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "net/nft.hpp"
#include "net/rtnl.hpp"
#include "net/ruleset.hpp"

namespace vesicle::net::testnet {
namespace fs = std::filesystem;

namespace {

const char* kPython = "/usr/bin/python3";

Result<void> run_and_wait(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& arg : argv)
    args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return sys_error("fork", argv[0]);
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return sys_error("waitpid", argv[0]);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return make_error("run", "exited with status " + std::to_string(status), argv[0]);
  }
  return {};
}

Result<void> with_rtnl(const std::function<Result<void>(Rtnl&)>& fn) {
  auto rtnl = Rtnl::open();
  if (!rtnl) return std::move(rtnl).error();
  return fn(*rtnl);
}

} // namespace

Child& Child::operator=(Child&& other) noexcept {
  if (this != &other) {
    stop();
    pid_ = std::exchange(other.pid_, -1);
  }
  return *this;
}

void Child::stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  for (int i = 0; i < 200; ++i) {
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

Result<Child> spawn(const std::vector<std::string>& argv, const Netns* netns,
                    const std::string& ready_line, std::chrono::milliseconds timeout) {
  std::vector<char*> args;
  for (const auto& arg : argv)
    args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return sys_error("pipe2");
  int netns_fd = netns ? netns->fd() : -1;
  pid_t pid = fork();
  if (pid < 0) return sys_error("fork", argv[0]);
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (netns_fd >= 0 && setns(netns_fd, CLONE_NEWNET) != 0) _exit(126);
    dup2(pipe_fds[1], 1);
    execv(args[0], args.data());
    _exit(127);
  }
  close(pipe_fds[1]);
  UniqueFd out(pipe_fds[0]);
  Child child(pid);
  std::string seen;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (seen.find(ready_line + "\n") == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return make_error("start", "not ready in time; printed: " + seen, argv[0]);
    }
    pollfd waiting{out.get(), POLLIN, 0};
    if (poll(&waiting, 1, static_cast<int>(left.count())) <= 0) continue;
    char buffer[512];
    ssize_t n = read(out.get(), buffer, sizeof buffer);
    if (n <= 0) return make_error("start", "exited before it was ready; printed: " + seen, argv[0]);
    seen.append(buffer, static_cast<size_t>(n));
  }
  return child;
}

Result<void> TestInternet::reclaim(const std::string& prefix) {
  if (auto deleted = delete_named_netns(prefix + "-inet"); !deleted) return deleted;
  auto removed = with_rtnl([&](Rtnl& rtnl) -> Result<void> {
    auto deleted = rtnl.delete_link(prefix + "-wan");
    if (!deleted) return std::move(deleted).error();
    return {};
  });
  if (!removed) return removed;
  auto nft = Nft::open("host");
  if (!nft) return std::move(nft).error();
  auto dropped = (*nft)->run(delete_table(prefix + "_guard"));
  if (!dropped) return std::move(dropped).error();
  return {};
}

Result<std::unique_ptr<TestInternet>> TestInternet::start(const std::string& prefix) {
  if (auto reclaimed = reclaim(prefix); !reclaimed) return std::move(reclaimed).error();
  std::unique_ptr<TestInternet> net(new TestInternet());
  net->prefix_ = prefix;
  net->uplink_ = prefix + "-wan";
  char dir_template[] = "/tmp/vesicle-testnet-XXXXXX";
  if (!mkdtemp(dir_template)) return sys_error("mkdtemp", dir_template);
  net->dir_ = dir_template;

  // 1. A self-signed certificate for the TLS servers (both names).
  net->cert_ = net->dir_ / "cert.pem";
  auto key = net->dir_ / "key.pem";
  if (auto made = run_and_wait(
          {"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key.string(),
           "-out", net->cert_.string(), "-days", "2", "-subj", "/CN=allowed.test", "-addext",
           "subjectAltName=DNS:allowed.test,DNS:denied.test,DNS:www.example.test,"
           "DNS:rebind.example.test"});
      !made) {
    return std::move(made).error().with_context("making the test certificate");
  }

  // 2. The namespace, its server addresses, and the wire to the host.
  auto netns = create_named_netns(prefix + "-inet");
  if (!netns) return std::move(netns).error();
  net->netns_ = std::move(*netns);
  auto inside = in_netns(net->netns_, [&]() -> Result<void> {
    for (const char* path : {"/proc/sys/net/ipv6/conf/all/disable_ipv6",
                             "/proc/sys/net/ipv6/conf/default/disable_ipv6"}) {
      if (auto written = write_sysctl(path, "1"); !written) return written;
    }
    return with_rtnl([&](Rtnl& rtnl) -> Result<void> {
      if (auto up = rtnl.set_up("lo"); !up) return up;
      for (Ipv4 address : {kAllowedIp, kDeniedIp, kResolverIp, kLanIp, kMetadataIp, kAzureWireIp,
                           kOciMetadataIp, kAlibabaMetadataIp, kCgnatIp, kPackagesIp}) {
        if (auto added = rtnl.add_address("lo", address, 32); !added) return added;
      }
      return {};
    });
  });
  if (!inside) return std::move(inside).error();
  auto host = with_rtnl([&](Rtnl& rtnl) -> Result<void> {
    if (auto made = rtnl.add_veth(net->uplink_, -1, "wan0", net->netns_.fd()); !made) return made;
    if (auto v6 = write_sysctl("/proc/sys/net/ipv6/conf/" + net->uplink_ + "/disable_ipv6", "1");
        !v6) {
      return v6;
    }
    if (auto added = rtnl.add_address(net->uplink_, kWanHost, 24); !added) return added;
    return rtnl.set_up(net->uplink_);
  });
  if (!host) return std::move(host).error();
  auto wan = in_netns(net->netns_, [&]() -> Result<void> {
    return with_rtnl([&](Rtnl& rtnl) -> Result<void> {
      if (auto added = rtnl.add_address("wan0", kWanGateway, 24); !added) return added;
      return rtnl.set_up("wan0");
    });
  });
  if (!wan) return std::move(wan).error();

  // 3. The package host's files, then the servers, inside the namespace.
  const fs::path packages = net->dir_ / "packages";
  auto made = spawn({kPython, VESICLE_TESTNET_MAKE_PACKAGES, packages.string()}, nullptr,
                    "packages ready", std::chrono::seconds(30));
  if (!made) return std::move(made).error().with_context("writing the package host's files");
  auto allowed = kAllowedIp.str(), denied = kDeniedIp.str();
  std::vector<std::string> argv = {
      kPython,      VESICLE_TESTNET_SERVERS,
      "--log",      (net->dir_ / "requests.log").string(),
      "--cert",     net->cert_.string(),
      "--key",      key.string(),
      "--http",     "allowed=" + allowed + ":80",
      "--https",    "allowed=" + allowed + ":443",
      "--banner",   "allowed=" + allowed + ":7000",
      "--udp-echo", allowed + ":7001",
      "--http",     "denied=" + denied + ":80",
      "--https",    "denied=" + denied + ":443",
      "--banner",   "denied=" + denied + ":7000",
      "--http",     "lan=" + kLanIp.str() + ":80",
      "--banner",   "lan=" + kLanIp.str() + ":7000",
      "--http",     "metadata=" + kMetadataIp.str() + ":80",
      "--http",     "metadata=" + kAzureWireIp.str() + ":80",
      "--http",     "metadata=" + kOciMetadataIp.str() + ":80",
      "--http",     "metadata=" + kAlibabaMetadataIp.str() + ":80",
      "--http",     "allowed=" + allowed + ":8080",
      "--banner",   "smtp=" + allowed + ":25",
      "--http",     "cgnat=" + kCgnatIp.str() + ":80",
      "--banner",   "cgnat=" + kCgnatIp.str() + ":7000",
      "--record",   "cgnat.example.test=" + kCgnatIp.str(),
      "--files",    "packages=" + kPackagesIp.str() + ":80=" + packages.string(),
      "--record",   "packages.test=" + kPackagesIp.str(),
      "--dns",      kResolverIp.str() + ":53",
      "--record",   "allowed.test=" + allowed,
      "--record",   "denied.test=" + denied,
      "--record",   "www.example.test=" + allowed,
      "--record",   "badcert.test=" + allowed,
      "--record",   "lan.example.test=" + kLanIp.str(),
      "--record",   "metadata.example.test=" + kMetadataIp.str(),
      "--aaaa",     "allowed.test=2001:db8::10",
      "--rebind",   "rebind.example.test=" + allowed + "," + kMetadataIp.str(),
      "--rebind",   "rebind-lan.example.test=" + allowed + "," + kLanIp.str(),
  };
  auto servers = spawn(argv, &net->netns_, "ready", std::chrono::seconds(20));
  if (!servers) return std::move(servers).error().with_context("starting the test servers");
  net->servers_ = std::move(*servers);
  return net;
}

TestInternet::~TestInternet() {
  servers_.stop();
  netns_ = Netns();
  if (auto reclaimed = reclaim(prefix_); !reclaimed) {
    std::fprintf(stderr, "removing test internet %s: %s\n", prefix_.c_str(),
                 reclaimed.error().message().c_str());
  }
  std::error_code ignored;
  if (!dir_.empty()) fs::remove_all(dir_, ignored);
}

std::vector<std::string> TestInternet::log_lines() const {
  std::vector<std::string> lines;
  std::ifstream log(dir_ / "requests.log");
  std::string line;
  while (std::getline(log, line))
    lines.push_back(line);
  return lines;
}

int TestInternet::hits(const std::string& label) const {
  int count = 0;
  for (const auto& line : log_lines()) {
    if (line.rfind(label + " ", 0) == 0) ++count;
  }
  return count;
}

BridgeConfig TestInternet::bridge_config(const std::string& bridge_prefix, uint8_t block) const {
  BridgeConfig config;
  config.prefix = bridge_prefix;
  config.transit = Cidr{Ipv4{uint32_t{10} << 24 | uint32_t{block} << 16}, 16};
  config.route_table = 1000 + block;
  config.rule_priority = 7000 + 2u * block;
  config.uplink = uplink_;
  config.uplink_gateway = kWanGateway;
  config.upstream_resolver = kResolverIp;
  config.denied_networks = default_host_networks();
  config.denied_networks.push_back(kLanNetwork);
  config.max_slots = 16;
  config.max_pooled = 4;
  config.test_guest_namespaces = true;
  return config;
}

Result<std::unique_ptr<RouteGuard>> RouteGuard::install(const std::string& guard_prefix,
                                                        const std::string& bridge_prefix,
                                                        const std::string& uplink) {
  std::unique_ptr<RouteGuard> guard(new RouteGuard());
  guard->table_ = guard_prefix + "_guard";
  auto nft = Nft::open("host");
  if (!nft) return std::move(nft).error();
  std::string script = delete_table(guard->table_) + "table inet " + guard->table_ +
                       " {\n  chain forward {\n"
                       "    type filter hook forward priority -300; policy accept;\n"
                       "    iifname \"" +
                       layout::host_link(bridge_prefix) + "\" oifname != \"" + uplink +
                       "\" counter drop\n  }\n}\n";
  auto applied = (*nft)->run(script);
  if (!applied) return std::move(applied).error();
  return guard;
}

RouteGuard::~RouteGuard() {
  if (auto nft = Nft::open("host"); nft) (void)(*nft)->run(delete_table(table_));
}

Result<int> RouteGuard::stray_packets() const {
  auto nft = Nft::open("host");
  if (!nft) return std::move(nft).error();
  auto listing = (*nft)->run("list table inet " + table_);
  if (!listing) return std::move(listing).error();
  auto at = listing->find("counter packets ");
  if (at == std::string::npos) return make_error("read guard counter", *listing);
  return std::atoi(listing->c_str() + at + 16);
}

Result<void> RouteGuard::check_no_strays() const {
  auto stray = stray_packets();
  if (!stray) return std::move(stray).error();
  if (*stray != 0)
    return make_error("check the route guard",
                      std::to_string(*stray) + " sandbox packets were routed past the uplink");
  return {};
}

Result<RoutedInternet> start_routed_internet(const std::string& internet_prefix,
                                             const std::string& bridge_prefix) {
  RoutedInternet routed;
  auto started = TestInternet::start(internet_prefix);
  if (!started) return std::move(started).error();
  routed.internet = std::move(*started);
  auto installed = RouteGuard::install(internet_prefix, bridge_prefix, routed.internet->uplink());
  if (!installed) return std::move(installed).error();
  routed.guard = std::move(*installed);
  return routed;
}

int open_fd_count() {
  int count = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1; // the directory's own fd
}

} // namespace vesicle::net::testnet
