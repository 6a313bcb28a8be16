// The guest's network, the same in every sandbox (net/README.md, "For
// the guest agent"): eth0 172.16.0.2/30, default route via 172.16.0.1, that
// address as the only resolver, IPv6 off. Every VM gets identical settings;
// the host's slot namespace gives each one its own outside address, so a
// restored or forked guest never has to change them.
#pragma once

#include <string>

namespace vesicle::agent {

// PID-1 mode only. Without an eth0 (a VM started with no network device)
// only IPv6 is switched off. Each failure is logged on the console and the
// rest still runs; the agent serves either way. Returns a one-line summary
// for the console (what was done, in how many microseconds).
std::string configure_network();

} // namespace vesicle::agent
