// A fake VMM driver for unit tests of the sandbox actors and the HTTP API:
// VMs that "boot" when the test says so, "die" when the test kills them, and
// an agent that interprets a tiny script instead of Python:
//   out TEXT | err TEXT   a stdout / stderr event (TEXT with \n unescaped)
//   hex HEXBYTES          a stdout event with raw bytes
//   result TEXT           a result event
//   raise NAME VALUE      an error event, then exit code 1
//   sleep MS              wait (real time) before the next line
//   die                   the VM dies mid-cell
// Files are kept in a map per VM.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <unistd.h>
#include <utility>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "vmm/snapshot.hpp"
#include "vmm/vmm.hpp"

namespace vesicle::testing {

namespace asio = boost::asio;

// Something coroutines can wait for until it is opened, once.
class Gate {
public:
  explicit Gate(asio::any_io_executor executor) : timer_(executor) {
    timer_.expires_at(asio::steady_timer::time_point::max());
  }
  asio::awaitable<void> wait() {
    while (!open_) {
      boost::system::error_code ignored;
      co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
  }
  void open() {
    open_ = true;
    timer_.cancel();
  }
  bool is_open() const { return open_; }

private:
  asio::steady_timer timer_;
  bool open_ = false;
};

inline asio::awaitable<void> sleep_for(std::chrono::milliseconds delay) {
  asio::steady_timer timer(co_await asio::this_coro::executor, delay);
  boost::system::error_code ignored;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
}

class FakeVm;
class FakeDriver;

class FakeAgent : public vmm::AgentClient {
public:
  explicit FakeAgent(FakeVm& vm) : vm_(vm) {}
  asio::awaitable<Result<guest::Pong>> ping(std::chrono::milliseconds) override;
  asio::awaitable<Result<guest::Pong>> wait_ready(std::chrono::milliseconds timeout,
                                                  std::chrono::milliseconds) override {
    return ping(timeout);
  }
  asio::awaitable<Result<guest::Info>> info() override;
  asio::awaitable<Result<guest::Exit>> exec_python(guest::ExecPython request,
                                                   vmm::ExecEventSink sink) override {
    python_cells.push_back(request.code());
    return run_python(request.code(), std::move(sink));
  }
  asio::awaitable<Result<guest::Exit>> exec_bash(guest::ExecBash request,
                                                 vmm::ExecEventSink sink) override {
    return run_script(request.command(), std::move(sink));
  }
  asio::awaitable<Result<std::unique_ptr<vmm::Upload>>>
  begin_upload(std::string path, std::uint32_t mode, bool make_parents) override;
  asio::awaitable<Result<guest::Done>> download(std::string path, vmm::ChunkSink sink) override;
  asio::awaitable<Result<void>> shutdown() override;
  bool connected() const override;
  std::optional<Error> closed_reason() const override;
  asio::awaitable<Result<void>> refresh_identity(vmm::IdentityRefresh identity) override {
    if (!connected()) co_return broken();
    refreshed_hostnames.push_back(identity.hostname);
    co_return Result<void>{};
  }
  asio::awaitable<Result<void>> send_refresh_identity(vmm::IdentityRefresh identity,
                                                      vmm::RefreshFailureHandler) override {
    if (!connected()) co_return broken();
    refreshed_hostnames.push_back(identity.hostname);
    co_return Result<void>{};
  }
  asio::awaitable<Result<void>> send_grow_root_fs(std::uint64_t disk_bytes,
                                                  vmm::RefreshFailureHandler) override {
    if (!connected()) co_return broken();
    grow_requests.push_back(disk_bytes);
    co_return Result<void>{};
  }

  std::map<std::string, std::string> files;
  std::vector<std::uint64_t> grow_requests;     // each send_grow_root_fs's disk_bytes
  std::vector<std::string> refreshed_hostnames; // in the order the refreshes came
  std::vector<std::string> python_cells;        // each exec_python's code, in order
  // Set: the guest broke the protocol and the client disconnected it (as
  // vmm's agent client does), while its VM runs on.
  std::optional<Error> violation;

private:
  asio::awaitable<Result<guest::Exit>> run_script(std::string script, vmm::ExecEventSink sink);
  // run_script, unless the driver's fail_python_cell is this code.
  asio::awaitable<Result<guest::Exit>> run_python(std::string code, vmm::ExecEventSink sink);
  Error broken() const { return make_error("agent call", "the agent channel is closed (VM gone)"); }
  FakeVm& vm_;
};

class FakeVm : public vmm::Vm {
public:
  FakeVm(vmm::VmConfig config, asio::any_io_executor executor, int pid, std::set<std::string>& live,
         FakeDriver& driver)
      : config_(std::move(config)), pid_(pid), exited_(executor), agent_(*this), live_(live),
        driver_(driver) {
    live_.insert(config_.id);
  }
  ~FakeVm() override { live_.erase(config_.id); }
  const std::string& id() const override { return config_.id; }
  int qemu_pid() const override { return pid_; }
  vmm::AgentClient& agent() override { return agent_; }
  bool running() const override { return !exited_.is_open(); }
  bool maps_memory_shared() const override { return !restored; }
  asio::awaitable<std::string> wait_exit() override {
    co_await exited_.wait();
    co_return how_;
  }
  asio::awaitable<void> shutdown(std::chrono::milliseconds) override {
    destroy();
    co_return;
  }
  // A fake's disk is always the size asked for: nothing to grow.
  asio::awaitable<Result<bool>> grow_disk(std::uint64_t bytes) override {
    grown_to.push_back(bytes);
    co_return false;
  }
  void destroy() override {
    ++destroy_calls;
    kill("killed by destroy()");
    files_removed = true;
  }
  // Stands in for the real save: no files, but the VM ends as the real one
  // does, and the driver's fail_saves makes it fail.
  asio::awaitable<Result<vmm::Snapshot>> save_snapshot(std::filesystem::path dir,
                                                       std::filesystem::path memory_file) override;
  asio::awaitable<Result<vmm::Snapshot>> save_full(std::filesystem::path dir) override;
  // Stands in for the fork save of a running VM: no files, and the VM runs on.
  // Stays paused as the real one does: restored, with `written` reaching
  // after.stay_paused_from.
  asio::awaitable<Result<vmm::Snapshot>> save_fork_snapshot(std::filesystem::path dir,
                                                            vmm::ForkSaveStats* stats,
                                                            vmm::AfterForkSave after) override;
  // The VM's process exits (as if QEMU got kill -9).
  void kill(std::string how) {
    if (exited_.is_open()) return;
    how_ = std::move(how);
    exited_.open();
  }

  const vmm::VmConfig& config() const { return config_; }
  int destroy_calls = 0;
  std::vector<std::uint64_t> grown_to; // each grow_disk's bytes
  bool files_removed = false;
  bool restored = false; // made by FakeDriver::restore
  std::uint64_t written = 0; // bytes a fork save counts as written, when restored
  bool paused = false;       // by a fork save told to stay paused
  FakeAgent& fake_agent() { return agent_; }
  FakeDriver& driver() { return driver_; }

private:
  vmm::VmConfig config_;
  int pid_;
  Gate exited_;
  std::string how_;
  FakeAgent agent_;
  std::set<std::string>& live_;
  FakeDriver& driver_;
};

class FakeDriver;

class FakePreparedRestore : public vmm::PreparedRestore {
public:
  FakePreparedRestore(FakeDriver& driver, vmm::Snapshot snapshot, vmm::VmConfig config)
      : driver_(driver), snapshot_(std::move(snapshot)), config_(std::move(config)) {}
  asio::awaitable<Result<std::unique_ptr<vmm::Vm>>> finish() override;
  const vmm::RestoreTimes& times() const override { return times_; }

private:
  FakeDriver& driver_;
  vmm::Snapshot snapshot_;
  vmm::VmConfig config_;
  vmm::RestoreTimes times_;
};

class FakeDriver : public vmm::Driver {
public:
  explicit FakeDriver(asio::any_io_executor executor) : executor_(std::move(executor)) {}
  vmm::Accel accel() const override { return vmm::Accel::tcg; }

  asio::awaitable<Result<std::unique_ptr<vmm::Vm>>> boot(vmm::VmConfig config) override {
    ++boots_started;
    auto gate = std::make_shared<Gate>(executor_);
    pending_[config.id] = gate;
    if (!hold_boots) gate->open();
    co_await gate->wait();
    pending_.erase(config.id);
    if (fail_boots) co_return make_error("boot VM", "the fake driver was told to fail", config.id);
    auto vm = std::make_unique<FakeVm>(std::move(config), executor_, next_pid_++, live, *this);
    vms[vm->id()] = vm.get();
    co_return std::unique_ptr<vmm::Vm>(std::move(vm));
  }

  asio::awaitable<Result<std::unique_ptr<vmm::Vm>>> restore(const vmm::Snapshot& snapshot,
                                                            vmm::VmConfig config) override {
    ++restores_started;
    if (fail_restores || (fail_restores_after >= 0 && restores_started > fail_restores_after))
      co_return make_error("restore VM", "the fake driver was told to fail", config.id);
    restore_disks.push_back(snapshot.disk);
    config.vcpus = snapshot.vcpus;
    config.memory_mib = snapshot.memory_mib;
    auto vm = std::make_unique<FakeVm>(std::move(config), executor_, next_pid_++, live, *this);
    vm->restored = true;
    vms[vm->id()] = vm.get();
    co_return std::unique_ptr<vmm::Vm>(std::move(vm));
  }
  asio::awaitable<Result<std::unique_ptr<vmm::Vm>>> restore_full(const vmm::Snapshot& snapshot,
                                                                 vmm::VmConfig config) override {
    ++restores_started;
    if (fail_restores)
      co_return make_error("restore VM", "the fake driver was told to fail", config.id);
    if (!snapshot.full_ram)
      co_return make_error("restore VM", "not a full-RAM snapshot: use restore", config.id);
    full_restore_disks.push_back(snapshot.disk);
    config.vcpus = snapshot.vcpus;
    config.memory_mib = snapshot.memory_mib;
    auto vm = std::make_unique<FakeVm>(std::move(config), executor_, next_pid_++, live, *this);
    vms[vm->id()] = vm.get();
    co_return std::unique_ptr<vmm::Vm>(std::move(vm));
  }
  asio::awaitable<Result<std::unique_ptr<vmm::PreparedRestore>>>
  prepare_restore(const vmm::Snapshot& snapshot, vmm::VmConfig config) override {
    co_return std::unique_ptr<vmm::PreparedRestore>(
        std::make_unique<FakePreparedRestore>(*this, snapshot, std::move(config)));
  }

  // Lets held boots finish.
  void release_boots() {
    for (auto& [id, gate] : std::map(pending_))
      gate->open();
  }
  std::size_t pending_boots() const { return pending_.size(); }
  FakeVm* vm(const std::string& id) {
    auto found = vms.find(id);
    return found == vms.end() || !live.count(id) ? nullptr : found->second;
  }

  bool hold_boots = false;
  bool fail_boots = false;
  bool fail_restores = false;
  // When >= 0, restores after this many (restores_started) fail.
  int fail_restores_after = -1;
  bool fail_saves = false;
  // A Python cell of exactly this code raises (empty: none does); one of
  // exactly die_on_python_cell kills its VM instead (the agent's call fails).
  std::string fail_python_cell;
  std::string die_on_python_cell;
  // save_full writes a small snapshot's files (a manifest that parses,
  // device state, a disk without backing file) into its dir, and
  // save_fork_snapshot device state, disk and a sealed RAM memfd, as a
  // freeze needs; otherwise they write nothing.
  bool write_full_saves = false;
  int boots_started = 0;
  int restores_started = 0;
  int saves = 0;
  // The disk each restore_full was given.
  std::vector<std::filesystem::path> full_restore_disks;
  // The disk each restore's VM stood on.
  std::vector<std::filesystem::path> restore_disks;
  std::set<std::string> live;         // ids of FakeVm objects that exist
  std::map<std::string, FakeVm*> vms; // check `live` before use

private:
  asio::any_io_executor executor_;
  std::map<std::string, std::shared_ptr<Gate>> pending_;
  int next_pid_ = 1000;
};

inline asio::awaitable<Result<vmm::Snapshot>>
FakeVm::save_snapshot(std::filesystem::path dir, std::filesystem::path memory_file) {
  if (driver_.fail_saves) co_return make_error("save snapshot", "the fake driver was told to fail");
  ++driver_.saves;
  vmm::Snapshot snapshot;
  snapshot.dir = std::move(dir);
  snapshot.memory_file = std::move(memory_file);
  snapshot.vcpus = config_.vcpus;
  snapshot.memory_mib = config_.memory_mib;
  kill("saved as a snapshot");
  co_return snapshot;
}

inline asio::awaitable<Result<vmm::Snapshot>> FakeVm::save_fork_snapshot(std::filesystem::path dir,
                                                                         vmm::ForkSaveStats* stats,
                                                                         vmm::AfterForkSave after) {
  if (driver_.fail_saves) co_return make_error("save VM", "the fake driver was told to fail");
  ++driver_.saves;
  paused = after.stay_paused_from && restored && written >= *after.stay_paused_from;
  if (stats) stats->stayed_paused = paused;
  vmm::Snapshot snapshot;
  snapshot.dir = std::move(dir);
  snapshot.vcpus = config_.vcpus;
  snapshot.memory_mib = config_.memory_mib;
  snapshot.network = config_.network.has_value();
  if (driver_.write_full_saves) {
    // What a freeze turns into a Space: device state, a disk standing on
    // its own, and the RAM (sparse, one page of data), sealed as the real
    // fork save's is.
    snapshot.disk = snapshot.dir / "disk.qcow2";
    snapshot.images = vmm::GuestImages{"/dev/null", "/dev/null", "/dev/null"};
    snapshot.kernel_cmdline = "console=ttyS0";
    std::filesystem::create_directory(snapshot.dir);
    {
      std::ofstream(snapshot.device_state()) << "device state of " << config_.id;
      std::ofstream(snapshot.disk) << "a disk standing on its own";
    }
    auto memory =
        vmm::GuestMemory::create("fake-" + config_.id, std::uint64_t{snapshot.memory_mib} << 20);
    if (!memory) co_return std::move(memory).error();
    const std::string page = "RAM of " + config_.id;
    if (::pwrite((*memory)->fd(), page.data(), page.size(), 4096) < 0)
      co_return make_error("write fake RAM", "pwrite failed");
    if (auto sealed = (*memory)->seal(); !sealed) co_return std::move(sealed).error();
    snapshot.memory = std::move(memory.value());
  }
  co_return snapshot;
}

inline asio::awaitable<Result<vmm::Snapshot>> FakeVm::save_full(std::filesystem::path dir) {
  if (driver_.fail_saves) co_return make_error("save VM", "the fake driver was told to fail");
  ++driver_.saves;
  vmm::Snapshot snapshot;
  snapshot.dir = std::move(dir);
  snapshot.disk = snapshot.dir / "disk.qcow2";
  snapshot.vcpus = config_.vcpus;
  snapshot.memory_mib = config_.memory_mib;
  snapshot.network = config_.network.has_value();
  snapshot.full_ram = true;
  if (driver_.write_full_saves) {
    namespace snap = vmm::snapshot;
    std::filesystem::create_directory(snapshot.dir);
    {
      std::ofstream(snapshot.device_state()) << "device state and RAM of " << config_.id;
      std::ofstream(snapshot.disk) << "a disk standing on its own";
    }
    snap::Manifest manifest;
    manifest.vcpus = snapshot.vcpus;
    manifest.memory_mib = snapshot.memory_mib;
    manifest.network = snapshot.network;
    // Boot files must be readable for open_snapshot; a fake VM has none.
    manifest.kernel = "/dev/null";
    manifest.initrd = "/dev/null";
    manifest.base_disk = "/dev/null";
    manifest.cmdline = "console=ttyS0";
    manifest.full_ram = true;
    manifest.state = snap::digest_file(snapshot.device_state()).value();
    manifest.disk = snap::digest_file(snapshot.disk).value();
    (void)snap::write_file_atomically(snapshot.manifest(), snap::format_manifest(manifest));
  }
  kill("saved to a snapshot");
  co_return snapshot;
}

inline asio::awaitable<Result<std::unique_ptr<vmm::Vm>>> FakePreparedRestore::finish() {
  return driver_.restore(snapshot_, config_);
}

// -- FakeAgent ----------------------------------------------------------------

inline bool FakeAgent::connected() const {
  return !violation && vm_.running();
}

inline std::optional<Error> FakeAgent::closed_reason() const {
  if (violation) return violation;
  if (!vm_.running())
    return make_error("agent channel closed", "the VM died").with_kind(ErrorKind::guest_died);
  return std::nullopt;
}

inline asio::awaitable<Result<guest::Pong>> FakeAgent::ping(std::chrono::milliseconds) {
  if (!connected()) co_return broken();
  co_return guest::Pong{};
}

inline asio::awaitable<Result<guest::Info>> FakeAgent::info() {
  if (!connected()) co_return broken();
  guest::Info info;
  info.set_agent_version("fake");
  co_return info;
}

inline asio::awaitable<Result<void>> FakeAgent::shutdown() {
  vm_.kill("powered off");
  co_return Result<void>{};
}

inline std::string unescape(std::string text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == 'n') {
      out += '\n';
      ++i;
    } else {
      out += text[i];
    }
  }
  return out;
}

inline asio::awaitable<Result<guest::Exit>> FakeAgent::run_python(std::string code,
                                                                  vmm::ExecEventSink sink) {
  if (!code.empty() && code == vm_.driver().fail_python_cell)
    return run_script("raise RuntimeError the fake driver fails this cell", std::move(sink));
  if (!code.empty() && code == vm_.driver().die_on_python_cell)
    return run_script("die", std::move(sink));
  return run_script(std::move(code), std::move(sink));
}

inline asio::awaitable<Result<guest::Exit>> FakeAgent::run_script(std::string script,
                                                                  vmm::ExecEventSink sink) {
  if (!connected()) co_return broken();
  std::istringstream lines(script);
  std::string line;
  guest::Exit exit;
  while (std::getline(lines, line)) {
    auto space = line.find(' ');
    std::string verb = line.substr(0, space);
    std::string rest = space == std::string::npos ? "" : line.substr(space + 1);
    guest::Event event;
    if (verb == "out") {
      event.set_stdout(unescape(rest));
      sink(event);
    } else if (verb == "err") {
      event.set_stderr(unescape(rest));
      sink(event);
    } else if (verb == "hex") {
      std::string bytes;
      for (std::size_t i = 0; i + 1 < rest.size(); i += 2)
        bytes += static_cast<char>(std::stoi(rest.substr(i, 2), nullptr, 16));
      event.set_stdout(bytes);
      sink(event);
    } else if (verb == "result") {
      event.set_result(rest);
      sink(event);
    } else if (verb == "raise") {
      auto split = rest.find(' ');
      auto* error = event.mutable_error();
      error->set_name(rest.substr(0, split));
      error->set_value(split == std::string::npos ? "" : rest.substr(split + 1));
      error->set_traceback("Traceback (most recent call last):\n  fake\n");
      sink(event);
      exit.set_exit_code(1);
    } else if (verb == "sleep") {
      co_await sleep_for(std::chrono::milliseconds(std::stoi(rest)));
    } else if (verb == "die") {
      vm_.kill("killed by signal 9 (SIGKILL)");
    }
    if (!connected()) co_return broken();
  }
  exit.set_duration_us(1500);
  co_return exit;
}

class FakeUpload : public vmm::Upload {
public:
  FakeUpload(FakeAgent& agent, std::map<std::string, std::string>& files, std::string path)
      : agent_(agent), files_(files), path_(std::move(path)) {}
  asio::awaitable<Result<void>> write(std::string_view data) override {
    if (!agent_.connected()) co_return make_error("write file", "the VM is gone", path_);
    data_.append(data);
    co_return Result<void>{};
  }
  asio::awaitable<Result<guest::Done>> finish() override {
    if (!agent_.connected()) co_return make_error("write file", "the VM is gone", path_);
    guest::Done done;
    done.set_size(data_.size());
    files_[path_] = std::move(data_);
    co_return done;
  }
  asio::awaitable<void> abort() override {
    aborted = true;
    co_return;
  }
  bool aborted = false;

private:
  FakeAgent& agent_;
  std::map<std::string, std::string>& files_;
  std::string path_;
  std::string data_;
};

// The agent's refusal as the real agent client reports it (with its kind).
inline Error refused(guest::Failure::Code code, int err, std::string operation, std::string path,
                     std::string message) {
  guest::Failure failure;
  failure.set_code(code);
  failure.set_errno_value(err);
  failure.set_message(std::move(message));
  return vmm::failure_error(std::move(operation), std::move(path), failure);
}

inline asio::awaitable<Result<std::unique_ptr<vmm::Upload>>>
FakeAgent::begin_upload(std::string path, std::uint32_t, bool) {
  if (!connected()) co_return broken();
  if (path.starts_with("/proc/"))
    co_return refused(guest::Failure::IO, EACCES, "open", path, "read-only filesystem");
  co_return std::unique_ptr<vmm::Upload>(std::make_unique<FakeUpload>(*this, files, path));
}

inline asio::awaitable<Result<guest::Done>> FakeAgent::download(std::string path,
                                                                vmm::ChunkSink sink) {
  if (!connected()) co_return broken();
  if (path == "/dev/zero" || path.ends_with("/"))
    co_return refused(guest::Failure::NOT_A_FILE, EISDIR, "read", path, "not a regular file");
  auto found = files.find(path);
  if (found == files.end())
    co_return refused(guest::Failure::NOT_FOUND, ENOENT, "open", path, "no such file");
  std::string_view data = found->second;
  for (std::size_t offset = 0; offset < data.size(); offset += 65536) {
    auto sent = co_await sink(data.substr(offset, 65536));
    if (!sent) co_return std::move(sent).error();
  }
  guest::Done done;
  done.set_size(data.size());
  done.set_eof(true);
  co_return done;
}

} // namespace vesicle::testing
