#include "guest/agent/agent.hpp"

#include <sys/random.h>
#include <unistd.h>

#include <vector>

#include "guest/agent/bash.hpp"
#include "guest/agent/events.hpp"
#include "guest/agent/files.hpp"
#include "guest/agent/grow_fs.hpp"
#include "guest/agent/identity.hpp"
#include "guest/agent/info.hpp"
#include "guest/agent/log.hpp"
#include "guest/agent/output.hpp"
#include "guest/agent/pid1.hpp"
#include "guest/agent/port_relay.hpp"
#include "guest/agent/repl.hpp"
#include "guest/agent/spawn.hpp"

namespace vesicle::agent {

namespace {
// Failed uploads remembered so their in-flight chunks are dropped quietly;
// bounded because a host that never sends `last` would otherwise grow it.
constexpr std::size_t kMaxDroppedUploads = 1024;
constexpr std::chrono::milliseconds kShutdownFlushBudget{2000};
// Each request holds memory and fds (a queued cell holds up to a 4 MiB
// cell); a host that sends without end gets BUSY instead of an agent that
// runs out of either.
constexpr std::size_t kMaxRequestsInFlight = 1024;
constexpr std::size_t kMaxQueuedCells = 64;
// How long a GrowRootFs waits for the kernel to see the disk's new size:
// hostd grows the disk (QMP block_resize) just after sending the request,
// and the kernel hears of it by a virtio config interrupt.
constexpr std::chrono::milliseconds kDiskResizeWait{30000};

// The id of an unparseable request, if its first field is a readable id:
// answering with it lets the host fail the right call.
std::uint64_t peek_id(std::string_view payload) {
  if (payload.empty() || static_cast<unsigned char>(payload[0]) != 0x08) return 0;
  std::uint64_t value = 0;
  for (std::size_t i = 1; i < payload.size() && i <= 10; ++i) {
    const auto byte = static_cast<unsigned char>(payload[i]);
    value |= static_cast<std::uint64_t>(byte & 0x7f) << (7 * (i - 1));
    if ((byte & 0x80) == 0) return value;
  }
  return 0;
}
} // namespace

void Request::emit(guest::Event event) {
  if (orphaned_) return;
  agent_.send(id_, std::move(event));
}

void Request::emit_output(OutputBudget& budget, bool is_stderr, std::string_view data) {
  data = budget.admit(data);
  if (data.empty()) return;
  guest::Event event;
  if (is_stderr) {
    event.set_stderr(data.data(), data.size());
  } else {
    event.set_stdout(data.data(), data.size());
  }
  emit(std::move(event));
}

void Request::finish(guest::Event event) {
  if (finished_) return;
  finished_ = true;
  emit(std::move(event));
  agent_.finished(this);
}

Agent::Agent(Loop& loop, Options options)
    : loop_(loop), options_(std::move(options)), started_us_(monotonic_us()) {
  Channel::Callbacks callbacks;
  callbacks.on_frame = [this](std::string_view payload) { on_frame(payload); };
  callbacks.on_disconnected = [this] { on_disconnected(); };
  callbacks.on_closed = [this](int status) { on_closed(status); };
  if (options_.channel_fd >= 0) {
    channel_ =
        std::make_unique<Channel>(loop_, UniqueFd(options_.channel_fd), std::move(callbacks));
  } else {
    channel_ = std::make_unique<Channel>(loop_, options_.port_name, std::move(callbacks));
  }
  repl_ = std::make_unique<Repl>(*this);
}

Agent::~Agent() = default;

void Agent::start() {
  channel_->start();
  repl_->start();
}

void Agent::send(std::uint64_t id, guest::Event event) {
  event.set_id(id);
  channel_->send(event);
}

void Agent::adopt(std::shared_ptr<Request> request) {
  by_id_[request->id()] = request.get();
  live_[request.get()] = std::move(request);
}

void Agent::finished(Request* request) {
  auto by_id = by_id_.find(request->id());
  if (by_id != by_id_.end() && by_id->second == request) by_id_.erase(by_id);
  auto live = live_.find(request);
  if (live == live_.end()) return;
  // Kept alive until this loop iteration ends: the request is usually
  // finishing from inside one of its own callbacks.
  loop_.post([keep = std::move(live->second)] {});
  live_.erase(live);
}

void Agent::remember_dropped_upload(std::uint64_t id) {
  if (!dropped_uploads_.insert(id).second) return;
  dropped_order_.push_back(id);
  while (dropped_order_.size() > kMaxDroppedUploads) {
    dropped_uploads_.erase(dropped_order_.front());
    dropped_order_.pop_front();
  }
}

void Agent::on_frame(std::string_view payload) {
  if (shutting_down_) return;
  guest::Request request;
  if (!request.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    std::uint64_t id = peek_id(payload);
    if (by_id_.count(id) != 0) id = 0; // never end another request by mistake
    log_line("a request of " + std::to_string(payload.size()) + " bytes does not parse");
    send(id, failure_event(guest::Failure::BAD_REQUEST, 0,
                           "a request of " + std::to_string(payload.size()) +
                               " bytes does not parse as vesicle.guest.Request; check that host "
                               "and agent use the same guest.proto"));
    return;
  }
  dispatch(request);
}

void Agent::dispatch(guest::Request& request) {
  const std::uint64_t id = request.id();
  if (request.kind_case() == guest::Request::kWriteFile) {
    handle_write_file(request);
    return;
  }
  if (request.kind_case() == guest::Request::kPortWrite) {
    // A relay that already ended drops what the host sent before it heard.
    if (auto it = by_id_.find(id); it != by_id_.end()) {
      if (auto* relay = dynamic_cast<PortRelay*>(it->second)) relay->take(request.port_write());
    }
    return;
  }
  dropped_uploads_.erase(id);
  if (by_id_.count(id) != 0) {
    send(id, failure_event(guest::Failure::BUSY, 0,
                           "request id " + std::to_string(id) +
                               " is already in flight; use an id that is not"));
    return;
  }
  const bool starts_work = request.kind_case() == guest::Request::kExecPython ||
                           request.kind_case() == guest::Request::kExecBash ||
                           request.kind_case() == guest::Request::kReadFile ||
                           request.kind_case() == guest::Request::kPortOpen;
  if (starts_work && by_id_.size() >= kMaxRequestsInFlight) {
    send(id, failure_event(guest::Failure::BUSY, 0,
                           std::to_string(by_id_.size()) +
                               " requests are in flight, the most the agent takes; retry when "
                               "some have ended"));
    return;
  }
  if (request.kind_case() == guest::Request::kExecPython &&
      repl_->queued_cells() >= kMaxQueuedCells) {
    send(id, failure_event(guest::Failure::BUSY, 0,
                           std::to_string(repl_->queued_cells()) +
                               " Python cells are already waiting for the REPL; retry when "
                               "some have run"));
    return;
  }
  switch (request.kind_case()) {
  case guest::Request::kPing: {
    guest::Event event;
    event.mutable_pong()->set_agent_uptime_ms((monotonic_us() - started_us_) / 1000);
    send(id, std::move(event));
    return;
  }
  case guest::Request::kInfo: {
    guest::Event event;
    *event.mutable_info() = collect_info(repl_->pid());
    send(id, std::move(event));
    return;
  }
  case guest::Request::kExecPython: {
    auto cell = std::make_shared<PythonCell>(*this, id, std::move(*request.mutable_exec_python()));
    adopt(cell);
    repl_->submit(std::move(cell));
    return;
  }
  case guest::Request::kExecBash: {
    auto command =
        std::make_shared<BashCommand>(*this, id, std::move(*request.mutable_exec_bash()));
    adopt(command);
    command->begin();
    return;
  }
  case guest::Request::kReadFile: {
    auto download = std::make_shared<Download>(*this, id);
    adopt(download);
    download->begin(request.read_file());
    return;
  }
  case guest::Request::kPortOpen: {
    auto relay = std::make_shared<PortRelay>(*this, id);
    adopt(relay);
    relay->begin(request.port_open());
    return;
  }
  case guest::Request::kCancel:
    handle_cancel(id, request.cancel().target());
    return;
  case guest::Request::kShutdown:
    handle_shutdown(id);
    return;
  case guest::Request::kRefreshIdentity:
    handle_refresh_identity(id, request.refresh_identity());
    return;
  case guest::Request::kGrowRootFs: {
    // Done before the next frame is read, like the identity refresh: a
    // request sent after it already sees the room.
    auto grown = grow_root_fs("/", request.grow_root_fs().disk_bytes(), kDiskResizeWait);
    if (!grown) {
      log_line(grown.error().message());
      send(id,
           failure_event(guest::Failure::IO, grown.error().errno_value, grown.error().message()));
      return;
    }
    guest::Event event;
    event.mutable_done()->set_size(grown->fs_bytes);
    send(id, std::move(event));
    return;
  }
  default:
    send(id, failure_event(guest::Failure::BAD_REQUEST, 0,
                           "request " + std::to_string(id) +
                               " has no kind this agent knows (agent " VESICLE_VERSION
                               "); is the host newer than the guest image?"));
    return;
  }
}

void Agent::handle_write_file(guest::Request& request) {
  const std::uint64_t id = request.id();
  const guest::WriteFile& chunk = request.write_file();
  if (dropped_uploads_.count(id) != 0) {
    if (chunk.last()) dropped_uploads_.erase(id);
    return;
  }
  std::shared_ptr<Upload> upload;
  if (auto it = by_id_.find(id); it != by_id_.end()) {
    auto* existing = dynamic_cast<Upload*>(it->second);
    if (existing == nullptr) {
      send(id, failure_event(guest::Failure::BUSY, 0,
                             "request id " + std::to_string(id) +
                                 " is in flight and is not an upload; use an id that is not"));
      return;
    }
    upload = std::static_pointer_cast<Upload>(live_.at(existing));
  } else if (by_id_.size() >= kMaxRequestsInFlight) {
    send(id, failure_event(guest::Failure::BUSY, 0,
                           std::to_string(by_id_.size()) +
                               " requests are in flight, the most the agent takes; retry when "
                               "some have ended"));
    if (!chunk.last()) remember_dropped_upload(id);
    return;
  } else {
    upload = std::make_shared<Upload>(*this, id);
    adopt(upload);
    upload->begin(chunk);
  }
  upload->take(chunk);
  if (upload->finished() && !chunk.last()) remember_dropped_upload(id);
}

void Agent::handle_cancel(std::uint64_t id, std::uint64_t target) {
  // Cancelling something that already ended is not an error: the host
  // cannot know whether its terminal event is on the way.
  if (auto it = by_id_.find(target); it != by_id_.end()) {
    Request* request = it->second;
    const bool upload = dynamic_cast<Upload*>(request) != nullptr;
    request->cancel();
    // Chunks the host sent before it decided to cancel are still coming.
    if (upload) remember_dropped_upload(target);
  }
  send(id, done_event());
}

void Agent::handle_shutdown(std::uint64_t id) {
  send(id, done_event());
  shutting_down_ = true;
  loop_.post([this] {
    channel_->flush(kShutdownFlushBudget);
    stop_everything();
    if (!options_.init) ::_exit(0);
    power_off();
    // The power-off failed; keep serving rather than leave a dead PID 1.
    shutting_down_ = false;
  });
}

// Runs to the end inside dispatch(), before the channel hands over the next
// frame (Channel::read_input delivers frames one at a time, in order, and
// nothing here waits on the loop): an exec sent after the refresh, even
// without waiting for its Done, spawns with the new hostname, clock and
// kernel RNG, and its cell is queued behind the REPL's reseed.
void Agent::handle_refresh_identity(std::uint64_t id, const guest::RefreshIdentity& identity) {
  if (auto problem = check_identity(identity); !problem.empty()) {
    send(id, failure_event(guest::Failure::BAD_REQUEST, 0,
                           "identity refresh refused, nothing changed: " + problem));
    return;
  }
  IdentityTargets targets;
  targets.kernel = options_.init;
  targets.machine_id_path = options_.machine_id_path;
  const std::vector<Error> failures = apply_identity(identity, targets);

  // The REPL's seed: the kernel's output after the reseed, plus the host's
  // bytes, so it differs between clones even where the reseed failed.
  std::string seed(32, '\0');
  const ssize_t got = ::getrandom(seed.data(), seed.size(), GRND_NONBLOCK);
  seed.resize(got > 0 ? static_cast<std::size_t>(got) : 0);
  seed += identity.entropy();
  repl_->reseed(std::move(seed));

  if (failures.empty()) {
    send(id, done_event());
    return;
  }
  std::string message = "identity refresh incomplete (the other steps were applied):";
  for (const Error& failure : failures)
    message += " [" + failure.message() + "]";
  log_line(message);
  send(id, failure_event(guest::Failure::INTERNAL, failures.front().errno_value, message));
}

void Agent::on_disconnected() {
  std::vector<Request*> requests;
  requests.reserve(by_id_.size());
  for (const auto& [id, request] : by_id_)
    requests.push_back(request);
  by_id_.clear();
  dropped_uploads_.clear();
  dropped_order_.clear();
  // Destruction is deferred (see finished()), so every pointer stays valid
  // while the others are orphaned.
  for (Request* request : requests)
    request->orphan();
}

void Agent::on_closed(int status) {
  stop_everything();
  ::_exit(status);
}

void Agent::stop_everything() {
  std::vector<std::shared_ptr<Request>> requests;
  requests.reserve(live_.size());
  for (const auto& [pointer, request] : live_)
    requests.push_back(request);
  by_id_.clear();
  for (auto& request : requests)
    request->orphan();
  repl_->terminate();
  // On the host (test mode) the agent is a subreaper: daemons its commands
  // started are its descendants and must not outlive it. In the VM the
  // power-off kills everything anyway.
  if (!options_.init) kill_descendants();
}

} // namespace vesicle::agent
