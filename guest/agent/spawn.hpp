// Starting the agent's children (bash commands, the Python REPL): a new
// session each, stdin /dev/null, stdout and stderr on pipes the agent reads
// without blocking, a clean signal state and environment, and nothing else
// inherited from the agent.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/result.hpp"
#include "common/unique_fd.hpp"

namespace vesicle::agent {

struct SpawnSpec {
  std::string program; // absolute path
  std::vector<std::string> argv;
  std::vector<std::string> env; // "NAME=value"
  std::string cwd;              // must exist (see prepare_directory)
  std::optional<int> oom_score_adj;
  // A cgroup folder the child moves itself into before exec; empty: none.
  std::string cgroup;
  // Extra fds for the child: {fd in the agent, number in the child}; the
  // child numbers start at 3.
  std::vector<std::pair<int, int>> extra_fds;
};

struct Spawned {
  pid_t pid = -1; // also the child's session and process group id
  UniqueFd out;   // read ends, non-blocking
  UniqueFd err;
};

Result<Spawned> spawn(const SpawnSpec& spec);

// A pipe whose two ends have separate blocking modes: the agent's end
// non-blocking, the child's end blocking (a child handed a non-blocking
// stdout would see EAGAIN).
struct Pipe {
  UniqueFd read;
  UniqueFd write;
};
Result<Pipe> make_pipe(bool nonblocking_read, bool nonblocking_write);

// The environment every child starts from, as NAME -> value.
std::map<std::string, std::string> default_environment(const std::string& home);
std::vector<std::string> flatten_environment(const std::map<std::string, std::string>& env);

// `name` itself when it contains a slash, else its first match on `path`
// (a colon-separated list) that is an executable file.
Result<std::string> resolve_program(const std::string& name, const std::string& path);

// mkdir -p with mode 0755; Ok when `dir` exists as a directory afterwards.
Result<void> make_directories(const std::string& dir);

// Sends `sig` to process group `pgid`; ignores a group that is already gone.
void signal_group(pid_t pgid, int sig);

// Raises the agent's open-file limit (to 65536 when it may, else to its
// hard limit): every request holds a few fds. Children get the limit the
// agent started with, which select()-based programs expect.
void raise_fd_limit();

// SIGKILLs every descendant of the calling process (found through /proc),
// in rounds until none is left or a few rounds have passed, and reaps them.
// For an agent that is a child subreaper and exits on the host.
void kill_descendants();

inline constexpr const char* kDefaultPath =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

} // namespace vesicle::agent
