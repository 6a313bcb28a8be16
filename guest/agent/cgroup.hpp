// The cgroup every user process runs in (PID-1 mode): bash commands and the
// REPL go under /sys/fs/cgroup/workload, the agent stays in the root cgroup.
// That is what keeps the agent answering whatever the workload does:
//  - pids.max stops a fork bomb at a bounded process count;
//  - memory.max keeps some memory outside the workload, so an out-of-memory
//    kill happens inside it (memcg OOM) and never starves the agent;
//  - the cpu controller schedules the workload as one group against the
//    agent, so a thousand spinning processes cannot take the agent's share.
#pragma once

#include <string>

#include "common/result.hpp"

namespace vesicle::agent {

struct WorkloadLimits {
  unsigned long long memory_max_bytes = 0; // 0: no limit written
  unsigned long long pids_max = 0;
};

// What to give the workload on a machine with `mem_total` bytes of RAM of
// which `mem_available` are available to user space now (at boot).
WorkloadLimits workload_limits_for(unsigned long long mem_total, unsigned long long mem_available);

// The children of the workload cgroup: the REPL, and bash commands.
inline constexpr const char* kReplCgroup = "repl";
inline constexpr const char* kCommandsCgroup = "commands";

// Mounts cgroup2 on /sys/fs/cgroup if needed, enables the cpu, memory and
// pids controllers, creates the workload cgroup and sets its limits.
// Returns the workload cgroup's folder; processes go into its kReplCgroup
// and kCommandsCgroup children. Limits that cannot be set are logged
// and skipped; an Error only when there is no cgroup to use at all.
Result<std::string> setup_workload_cgroup();

// How many processes of `cgroup` (or, where it has no memory controller,
// of its parent's subtree) the out-of-memory killer has killed so far
// (memory.events oom_kill); 0 when it cannot be read. A process that died of SIGKILL while this grew was an
// OOM victim, which is what a user must be told instead of "signal 9".
unsigned long long oom_kill_count(const std::string& cgroup);

} // namespace vesicle::agent
