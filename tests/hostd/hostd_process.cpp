#include "tests/hostd/hostd_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace vesicle::testing {

namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// In a forked child: becomes `args` (args[0] a path), or exits 127.
[[noreturn]] void exec_args(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& arg : args)
    argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  ::execv(argv[0], argv.data());
  ::_exit(127);
}

} // namespace

std::string run_for_stdout(const std::vector<std::string>& args) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  pid_t child = ::fork();
  if (child == 0) {
    ::dup2(out[1], 1);
    exec_args(args);
  }
  ::close(out[1]);
  std::string text;
  char buffer[4096];
  ssize_t n;
  while ((n = ::read(out[0], buffer, sizeof buffer)) > 0)
    text.append(buffer, n);
  ::close(out[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error(args[0] + " failed: " + text);
  return text;
}

std::string key_in(const std::string& text) {
  std::smatch match;
  if (!std::regex_search(text, match, std::regex("vsk_[0-9a-f]{64}")))
    throw std::runtime_error("no API key in the output: " + text);
  return match.str();
}

Listening start_listening(const std::vector<std::string>& args, const std::filesystem::path& log,
                          bool append) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  Listening started;
  started.pid = ::fork();
  if (started.pid == 0) {
    ::dup2(out[1], 1);
    int err = ::open(log.c_str(), O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0644);
    ::dup2(err, 2);
    exec_args(args);
  }
  ::close(out[1]);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::smatch match;
  const std::regex line("listening on http://127\\.0\\.0\\.1:(\\d+)");
  while (!std::regex_search(started.said, match, line)) {
    pollfd fd{out[0], POLLIN, 0};
    const int ready = ::poll(&fd, 1, 1000);
    if (std::chrono::steady_clock::now() > deadline || ready < 0) break;
    if (ready == 0) continue;
    char buffer[1024];
    auto n = ::read(out[0], buffer, sizeof buffer);
    if (n <= 0) break;
    started.said.append(buffer, n);
  }
  ::close(out[0]);
  if (!match.empty()) started.port = static_cast<unsigned short>(std::stoi(match[1].str()));
  return started;
}

HostdProcess::HostdProcess(HostdOptions options) {
  if (options.home.empty()) {
    char pattern[] = "/tmp/hostd-it-XXXXXX";
    if (!::mkdtemp(pattern)) throw std::runtime_error("mkdtemp failed");
    dir_ = pattern;
  } else {
    dir_ = options.home;
    owns_dirs_ = false;
    std::filesystem::create_directories(dir_);
  }
  try {
    start(options);
  } catch (...) {
    // A hostd that did not start leaves no temporary home behind.
    if (owns_dirs_) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
      std::filesystem::remove_all(shm_dir_, ignored);
    }
    throw;
  }
}

void HostdProcess::start(const HostdOptions& options) {
  runtime_dir_ = dir_ / "run";
  shm_dir_ = std::filesystem::path("/dev/shm") / dir_.filename();
  std::filesystem::create_directories(shm_dir_);
  auto state = dir_ / "state";
  auto config = dir_ / "hostd.json";
  {
    std::ofstream out(config);
    out << "{\"runtime_dir\": \"" << runtime_dir_.string() << "\", \"shm_dir\": \""
        << shm_dir_.string() << "\", \"max_sandboxes\": " << options.max_sandboxes
        << ", \"default_memory_mib\": " << options.memory_mib << ", \"request_timeout_s\": "
        << options.request_timeout_s
        // Its own cgroup parent (the home's name, so a restart on the same
        // home sweeps it), which the destructor removes.
        << ", \"confinement\": {\"cgroup_parent\": \"" << dir_.filename().string() << "\"";
    if (!options.confinement_extra.empty()) out << ", " << options.confinement_extra;
    out << "}";
    if (!options.extra_config.empty()) out << ", " << options.extra_config;
    if (options.prestarted_vmms >= 0) out << ", \"prestarted_vmms\": " << options.prestarted_vmms;
    if (!options.network_json.empty()) out << ", \"network\": " << options.network_json;
    out << "}";
  }
  // A first key, a second one and an admin key; hostd prints none again.
  key_ =
      key_in(run_for_stdout({options.binary.string(), "--state-dir", state.string(), "--new-key"}));
  other_key_ =
      key_in(run_for_stdout({options.binary.string(), "--state-dir", state.string(), "--new-key"}));
  admin_key_ = key_in(run_for_stdout(
      {options.binary.string(), "--state-dir", state.string(), "--new-key", "--admin"}));

  auto log = dir_ / "hostd.log";
  auto started = start_listening({options.binary.string(), "--config", config.string(), "--listen",
                                  "127.0.0.1:0", "--state-dir", state.string(), "--images-dir",
                                  options.images_dir.string()},
                                 log, false);
  pid_ = started.pid;
  if (started.port == 0) {
    stop(std::chrono::seconds(5));
    throw std::runtime_error("hostd did not start: " + started.said + read_file(log));
  }
  port_ = started.port;
}

HostdProcess::~HostdProcess() {
  if (pid_ > 0) stop(std::chrono::seconds(30));
  if (!owns_dirs_) return;
  // hostd removes its cgroup parent when it stops cleanly; after a kill, or
  // with a leaf still busy, it is left: remove it and what is in it.
  for (const char* controller : {"memory", "pids", "cpu"}) {
    const auto root = std::filesystem::path("/sys/fs/cgroup") / controller / dir_.filename();
    for (int attempt = 0; attempt < 50 && std::filesystem::exists(root); ++attempt) {
      std::error_code ec;
      for (const auto& leaf : std::filesystem::directory_iterator(root, ec))
        if (leaf.is_directory()) ::rmdir(leaf.path().c_str());
      if (::rmdir(root.c_str()) == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
  std::filesystem::remove_all(shm_dir_, ignored);
}

void HostdProcess::kill_hard() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

std::string HostdProcess::log() const {
  return read_file(dir_ / "hostd.log");
}

int HostdProcess::stop(std::chrono::seconds grace) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + grace;
  int status = 0;
  for (;;) {
    auto done = ::waitpid(pid_, &status, WNOHANG);
    if (done == pid_) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::vector<pid_t> HostdProcess::qemu_pids() const {
  std::vector<pid_t> pids;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    auto cmdline = read_file(entry.path() / "cmdline");
    if (cmdline.find("qemu") != std::string::npos &&
        cmdline.find(runtime_dir_.string()) != std::string::npos)
      pids.push_back(std::stoi(name));
  }
  return pids;
}

std::vector<std::string> HostdProcess::leftover_files() const {
  std::vector<std::string> files;
  for (const auto& dir : {runtime_dir_, shm_dir_}) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      // Template RAM images are a cache meant to outlive hostd.
      if (entry.path().filename().string().rfind("vesicle-template-", 0) == 0) continue;
      files.push_back(entry.path().string());
    }
  }
  return files;
}

std::size_t HostdProcess::open_fds() const {
  std::size_t count = 0;
  std::error_code ec;
  auto fd_dir = std::filesystem::path("/proc") / std::to_string(pid_) / "fd";
  for (auto it = std::filesystem::directory_iterator(fd_dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++count;
  return count;
}

} // namespace vesicle::testing
