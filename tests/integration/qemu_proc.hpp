// What /proc says about a QEMU process: whether it runs under a seccomp
// filter, and which files it holds open (to tell that a migration's state
// file was let go).
#pragma once

#include <dirent.h>
#include <unistd.h>

#include <sys/types.h>

#include <climits>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace vesicle::test {

// "Name:\tvalue" lines of /proc/<pid>/status, by name (value without the
// leading blanks); empty when the process is gone.
inline std::map<std::string, std::string> proc_status(pid_t pid) {
  std::map<std::string, std::string> fields;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    auto value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    fields[line.substr(0, colon)] = value;
  }
  return fields;
}

// The "Seccomp:" field of /proc/<pid>/status: 0 none, 1 strict, 2 a
// filter; -1 when the process or the field is not there.
inline int seccomp_mode(int pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Seccomp:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

// What each of the process's fds refers to (a path, "socket:[…]", a path
// with " (deleted)" once unlinked).
inline std::vector<std::string> open_files(int pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  std::vector<std::string> targets;
  DIR* listing = ::opendir(dir.c_str());
  if (!listing) return targets;
  while (const dirent* entry = ::readdir(listing)) {
    if (entry->d_name[0] == '.') continue;
    char target[PATH_MAX];
    const ssize_t n = ::readlink((dir + "/" + entry->d_name).c_str(), target, sizeof(target));
    if (n > 0) targets.emplace_back(target, static_cast<std::size_t>(n));
  }
  ::closedir(listing);
  return targets;
}

// Those of the process's open files whose target contains `needle`.
inline std::vector<std::string> open_files_naming(int pid, const std::string& needle) {
  std::vector<std::string> found;
  for (auto& target : open_files(pid)) {
    if (target.find(needle) != std::string::npos) found.push_back(std::move(target));
  }
  return found;
}

} // namespace vesicle::test
