#include "hostd/sweep.hpp"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <thread>
#include <vector>

namespace vesicle::hostd {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> command_line_of(const fs::path& proc_dir) {
  std::ifstream in(proc_dir / "cmdline", std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  std::string current;
  for (char c : text) {
    if (c == '\0') {
      args.push_back(std::move(current));
      current.clear();
    } else {
      current += c;
    }
  }
  return args;
}

// A QEMU started by a hostd names itself "vesicle-<id>" and keeps its QMP
// socket in runtime_dir/<id>/.
bool is_our_qemu(const std::vector<std::string>& args, const std::string& runtime_prefix) {
  bool named = false, ours = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "-name" && i + 1 < args.size() && args[i + 1].rfind("vesicle-", 0) == 0)
      named = true;
    if (args[i].find(runtime_prefix) != std::string::npos) ours = true;
  }
  return named && ours;
}

} // namespace

Result<SweepReport> sweep_leftovers(const fs::path& runtime_dir, const fs::path& shm_dir) {
  SweepReport report;
  const std::string runtime_prefix = fs::absolute(runtime_dir).lexically_normal().string() + "/";
  std::vector<pid_t> killed;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (pid == ::getpid()) continue;
    if (!is_our_qemu(command_line_of(entry.path()), runtime_prefix)) continue;
    if (::kill(pid, SIGKILL) == 0) killed.push_back(pid);
  }
  report.processes = static_cast<unsigned>(killed.size());
  // Their memory files are only freed once they are gone.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (pid_t pid : killed) {
    while (::kill(pid, 0) == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  // Guest RAM is held in memfds now, which vanish with their holders; RAM
  // files of templates and forks in shm_dir are left from hostd versions
  // before that and only hold memory.
  for (const auto& entry : fs::directory_iterator(shm_dir, ec)) {
    const auto name = entry.path().filename().string();
    const bool old_ram =
        (name.rfind("vesicle-template-", 0) == 0 || name.rfind("vesicle-fork-", 0) == 0) &&
        entry.path().extension() == ".mem";
    std::error_code ignored;
    if (old_ram && fs::remove(entry.path(), ignored)) ++report.memory_files;
  }
  ec.clear();
  if (!fs::exists(runtime_dir, ec)) return report;
  for (const auto& entry : fs::directory_iterator(runtime_dir, ec)) {
    const auto id = entry.path().filename().string();
    const auto memory = shm_dir / ("vesicle-" + id + ".mem");
    if (fs::remove(memory, ec)) ++report.memory_files;
    fs::remove_all(entry.path(), ec);
    if (ec) return Error{ec.value(), "remove", entry.path().string(), {}, {}};
    ++report.directories;
  }
  if (ec) return Error{ec.value(), "list", runtime_dir.string(), {}, {}};
  return report;
}

} // namespace vesicle::hostd
