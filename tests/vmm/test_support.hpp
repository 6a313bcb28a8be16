// Helpers shared by the vmm unit tests, integration tests and benchmark: an
// io_context on its own thread to run coroutines from a test body, exec
// output collection, temporary directories, sha256.
#pragma once

#include <utility>

#include <openssl/evp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include "common/hex.hpp"
#include "vmm/agent_client.hpp"

namespace vesicle::test {

namespace asio = boost::asio;

// Runs an io_context on a thread that lives as long as this object. Spawning
// QEMU from that thread matters: PR_SET_PDEATHSIG follows the thread.
class IoThread {
public:
  IoThread()
      : guard_(io_.get_executor()), thread_([this] {
          io_.run();
          drained_.set_value();
        }) {}
  // Lets the work still under way (readers of closed sockets, a QEMU being
  // reaped) finish before the io_context goes: I/O objects must not outlive
  // it. Work still there after 10 s is a leak; it is stopped and reported.
  ~IoThread() {
    guard_.reset();
    if (drained_.get_future().wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      std::fprintf(stderr,
                   "IoThread: work still pending 10 s after the test; stopping the io_context\n");
      io_.stop();
    }
    thread_.join();
  }
  asio::io_context& io() { return io_; }
  asio::any_io_executor executor() { return io_.get_executor(); }

  // Runs `work` on the io thread and waits for its result.
  template <class T> T run(asio::awaitable<T> work) {
    if constexpr (std::is_void_v<T>) {
      asio::co_spawn(io_, std::move(work), asio::use_future).get();
    } else {
      // use_future needs a default-constructible value; Result has none.
      auto wrapped = [](asio::awaitable<T> inner) -> asio::awaitable<std::optional<T>> {
        co_return co_await std::move(inner);
      };
      return std::move(*asio::co_spawn(io_, wrapped(std::move(work)), asio::use_future).get());
    }
  }
  // Runs a plain function on the io thread (destroying clients and VMs
  // there, where their sockets live).
  template <class F> auto call(F f) {
    return run([f = std::move(f)]() mutable -> asio::awaitable<decltype(f())> { co_return f(); }());
  }
  template <class F> void call_void(F f) {
    run([f = std::move(f)]() mutable -> asio::awaitable<void> {
      f();
      co_return;
    }());
  }

private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::promise<void> drained_;
  std::thread thread_;
};

struct ExecOutput {
  std::string out;
  std::string err;
  std::vector<std::string> results;
  std::vector<guest::PythonError> errors;
  std::size_t events = 0;
  // Caps what is kept, so a flood test measures the client, not this.
  std::size_t keep_bytes = std::size_t(64) << 20;
  std::size_t out_bytes = 0;

  vmm::ExecEventSink sink() {
    return [this](const guest::Event& event) {
      ++events;
      switch (event.kind_case()) {
      case guest::Event::kStdout:
        out_bytes += event.stdout().size();
        if (out.size() < keep_bytes) out += event.stdout();
        break;
      case guest::Event::kStderr:
        err += event.stderr();
        break;
      case guest::Event::kResult:
        results.push_back(event.result());
        break;
      case guest::Event::kError:
        errors.push_back(event.error());
        break;
      default:
        break;
      }
    };
  }
};

struct ExecReply {
  Result<guest::Exit> exit = make_error("exec", "not run");
  ExecOutput output;
};

inline asio::awaitable<ExecReply> python(vmm::AgentClient& agent, std::string code,
                                         std::uint32_t timeout_ms = 0,
                                         std::uint64_t max_output = 0) {
  ExecReply reply;
  guest::ExecPython request;
  request.set_code(std::move(code));
  request.set_timeout_ms(timeout_ms);
  request.set_max_output_bytes(max_output);
  vmm::ExecEventSink sink = reply.output.sink();
  reply.exit = co_await agent.exec_python(std::move(request), std::move(sink));
  co_return reply;
}

inline asio::awaitable<ExecReply> bash(vmm::AgentClient& agent, std::string command,
                                       std::uint32_t timeout_ms = 0) {
  ExecReply reply;
  guest::ExecBash request;
  request.set_command(std::move(command));
  request.set_timeout_ms(timeout_ms);
  vmm::ExecEventSink sink = reply.output.sink();
  reply.exit = co_await agent.exec_bash(std::move(request), std::move(sink));
  co_return reply;
}

inline asio::awaitable<Result<guest::Done>> upload(vmm::AgentClient& agent, std::string path,
                                                   std::string_view data,
                                                   std::size_t write_size = std::size_t(1) << 20) {
  auto started = co_await agent.begin_upload(path, 0644, true);
  if (!started) co_return std::move(started).error();
  while (!data.empty()) {
    const auto n = std::min(write_size, data.size());
    if (auto written = co_await started.value()->write(data.substr(0, n)); !written) {
      co_return std::move(written).error();
    }
    data.remove_prefix(n);
  }
  co_return co_await started.value()->finish();
}

class Sha256 {
public:
  Sha256() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(std::string_view data) { EVP_DigestUpdate(ctx_, data.data(), data.size()); }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx_, digest, &length);
    return to_hex(digest, length);
  }

private:
  EVP_MD_CTX* ctx_;
};

struct Downloaded {
  Result<guest::Done> done = make_error("download", "not run");
  std::string data; // only when asked to keep it
  std::string sha256;
  std::size_t bytes = 0;
  std::size_t chunks = 0;
};

inline asio::awaitable<Downloaded> download(vmm::AgentClient& agent, std::string path,
                                            std::chrono::milliseconds per_chunk_delay = {},
                                            bool keep = true) {
  Downloaded result;
  Sha256 hash;
  auto executor = co_await asio::this_coro::executor;
  // Named: g++ 12 destroys a lambda converted inside a co_await
  // expression twice.
  vmm::ChunkSink sink = [&result, &hash, executor, per_chunk_delay,
                         keep](std::string_view chunk) -> asio::awaitable<Result<void>> {
    if (keep) result.data.append(chunk);
    hash.update(chunk);
    result.bytes += chunk.size();
    ++result.chunks;
    if (per_chunk_delay.count() > 0) {
      asio::steady_timer pause(executor, per_chunk_delay);
      co_await pause.async_wait(asio::use_awaitable);
    }
    co_return Result<void>{};
  };
  result.done = co_await agent.download(std::move(path), std::move(sink));
  result.sha256 = hash.hex();
  co_return result;
}

inline std::string sha256_hex(std::string_view data) {
  Sha256 hash;
  hash.update(data);
  return hash.hex();
}

// Makes this process the reaper of orphans, so processes the agent under
// test leaves behind (it runs on the host in unit tests) can be found and
// killed: kill_orphans() kills and reaps every child that is not `keep`.
inline void become_subreaper() {
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
}
inline void kill_orphans() {
  for (int round = 0; round < 20; ++round) {
    bool found = false;
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
      const std::string name = entry.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream stat(entry.path() / "stat");
      std::string line;
      std::getline(stat, line);
      const auto close = line.rfind(')');
      if (close == std::string::npos) continue;
      char state = 0;
      int ppid = 0;
      if (std::sscanf(line.c_str() + close + 1, " %c %d", &state, &ppid) != 2) continue;
      if (ppid != ::getpid()) continue;
      const pid_t pid = std::stoi(name);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      found = true;
    }
    if (!found) return;
  }
}

inline std::string random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string data(n, '\0');
  for (std::size_t i = 0; i < n; i += 8) {
    const std::uint64_t word = rng();
    std::memcpy(data.data() + i, &word, std::min<std::size_t>(8, n - i));
  }
  return data;
}

// A directory made fresh under `parent`, removed with everything in it.
class TempDir {
public:
  explicit TempDir(const std::filesystem::path& parent = std::filesystem::temp_directory_path(),
                   const std::string& prefix = "vesicle-test") {
    std::string pattern = (parent / (prefix + "-XXXXXX")).string();
    if (!::mkdtemp(pattern.data())) std::abort();
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

private:
  std::filesystem::path path_;
};

// A whole file's bytes ("" when it cannot be read).
inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Replaces a file's bytes with `data`.
inline void write_file(const std::filesystem::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

// The number after `key` (e.g. "VmRSS:") on its line of a /proc file that
// counts in KiB (status, smaps_rollup); 0 when the file has no such line.
inline std::size_t kib_field(const std::string& file, std::string_view key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::stoul(line.substr(key.size()));
  }
  return 0;
}

// This process's resident set in KiB (VmRSS).
inline std::size_t rss_kib() {
  return kib_field("/proc/self/status", "VmRSS:");
}

// Peak resident set (VmHWM) since the last reset_peak_rss(), in KiB.
inline std::size_t peak_rss_kib() {
  return kib_field("/proc/self/status", "VmHWM:");
}
inline void reset_peak_rss() {
  std::ofstream("/proc/self/clear_refs") << "5";
}

inline std::string env_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value && *value ? value : fallback;
}

// The guest images the VM tests boot: VESICLE_IMAGES_DIR, else the build
// tree's (CMake passes it as VESICLE_IMAGES_DIR_DEFAULT).
inline std::filesystem::path images_dir() {
  return env_or("VESICLE_IMAGES_DIR", env_or("VESICLE_IMAGES_DIR_DEFAULT", "build/images"));
}

// QEMU processes (other than this one) whose command line contains
// `needle`, e.g. "vesicle-" and the id prefix of one test run's VMs.
inline std::vector<pid_t> processes_naming(const std::string& needle) {
  std::vector<pid_t> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmdline.find(needle) != std::string::npos && std::stoi(name) != ::getpid()) {
      found.push_back(std::stoi(name));
    }
  }
  return found;
}

// The names in `dir` (none if it does not exist).
inline std::vector<std::string> dir_entries(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
    names.push_back(entry.path().filename().string());
  return names;
}

} // namespace vesicle::test
