// The agent channel: one reader coroutine splits the byte stream into Events
// and drops each into the mailbox of its request id; requests are written
// whole, one at a time, through an async mutex so frames never interleave.
// Each call owns its mailbox for as long as it waits, and forgets its id when
// it returns, so late events for an abandoned id are dropped.
//
// The guest is not trusted. Every route says what its request may stream
// (nothing, exec output up to its byte budget, file data up to the range
// asked for), and a mailbox never holds more than kMaxQueuedBytes; an event
// outside that (a reply to a request never made, data beyond the range, a
// flood past the budget, an oversized or unparsable frame) is a protocol
// violation: the channel closes with ErrorKind::guest_protocol_violation and
// the host ends the sandbox. Every wait on the agent has a deadline: a guest
// that stops answering costs a caller a timeout, never a hang.
#include "vmm/agent_client.hpp"

#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <deque>
#include <random>
#include <unordered_map>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "common/hex.hpp"
#include "common/log.hpp"
#include "messages/framing.hpp"
#include "vmm/async.hpp"

namespace vesicle::vmm {

namespace {
std::uint64_t first_request_id() {
  std::random_device random;
  const std::uint64_t high = random(), low = random();
  // 48 bits: far from any other client's range, far from wrapping.
  return (((high << 32) | low) & ((std::uint64_t{1} << 48) - 1)) | 1;
}
} // namespace

namespace {

using Socket = asio::local::stream_protocol::socket;
using detail::Clock;
using Inbox = detail::Mailbox<guest::Event>;

constexpr const char* kChannelClosedOperation = "agent channel closed";
constexpr const char* kViolationOperation = "agent protocol violation";
// What one mailbox may hold: a download range (its sink may be slow) plus
// frames' worth of slack. Exec output is taken as it comes, so it never
// waits here unless the guest floods faster than the host can read.
constexpr std::size_t kMaxQueuedBytes = 12u << 20;
// An event counts at least this much, so a flood of empty events is one.
constexpr std::size_t kMinEventWeight = 64;
// Exec output (stdout plus stderr) the host asks for when the caller set no
// cap; the agent's own default is the same. A guest sending more than its
// request's cap plus this slack breaks the protocol.
constexpr std::uint64_t kDefaultExecOutputBytes = 8u << 20;
constexpr std::uint64_t kExecOutputSlack = 64u << 10;
// A VM restored from a snapshot may still answer the requests of the client
// that was connected when the snapshot was taken (ids this client never
// made). Those come first, before any answer to this client; this many are
// dropped, and any such event after this client's first answer is a
// violation.
constexpr int kMaxStrayEvents = 64;
// A download asks for the file in ranges this large, so at most one range
// waits in memory while the sink is slow.
constexpr std::uint64_t kDownloadRange = 4u << 20;
constexpr std::size_t kReadBufferBytes = 64u << 10;
// The agent applies a refresh in a few syscalls; no answer in this long
// means it is stuck, and the waiting call (or the detached waiter of a
// send_refresh_identity) gives up instead of living as long as the VM.
constexpr std::chrono::seconds kRefreshAnswerTimeout{30};
// An online resize writes the new groups' metadata: longer for a larger disk.
constexpr std::chrono::seconds kGrowAnswerTimeout{120};
constexpr const char* kRefreshOperation = "refresh guest identity";
// Passed by name: g++ 12 destroys some temporaries made inside a co_await
// expression twice (braced and converted arguments), so calls awaited here
// never build their arguments in place.
const std::function<void(const guest::Event&)> kNoStream;

Error channel_closed(const std::string& cause) {
  return make_error(kChannelClosedOperation, "the VM died or its agent exited (" + cause + ")")
      .with_kind(ErrorKind::guest_died);
}

// "15 s", "0.2 s".
std::string seconds_text(std::chrono::milliseconds span) {
  if (span.count() % 1000 == 0) return std::to_string(span.count() / 1000) + " s";
  char text[32];
  std::snprintf(text, sizeof text, "%.1f s", static_cast<double>(span.count()) / 1000);
  return text;
}

Error protocol_violation(const std::string& what) {
  return make_error(kViolationOperation, "the guest broke the agent protocol (" + what +
                                             "); hostd disconnected it and ends the sandbox")
      .with_kind(ErrorKind::guest_protocol_violation);
}

Error agent_stuck(const std::string& what) {
  return make_error(kChannelClosedOperation, "the agent stopped answering (" + what +
                                                 "); hostd disconnected it and ends the sandbox")
      .with_kind(ErrorKind::timeout);
}

// What a request may receive before its terminal event.
enum class Streams {
  nothing,   // ping, info, refresh, grow, shutdown, cancel, an upload
  output,    // an exec: stdout, stderr, result, error, display
  file_data, // a ReadFile: file_data
  port,      // a PortOpen: port_data (within the host's window) and port_ack
};

bool is_terminal(const guest::Event& event) {
  switch (event.kind_case()) {
  case guest::Event::kStdout:
  case guest::Event::kStderr:
  case guest::Event::kResult:
  case guest::Event::kError:
  case guest::Event::kDisplay:
  case guest::Event::kFileData:
  case guest::Event::kPortData:
  case guest::Event::kPortAck:
    return false;
  default:
    return true;
  }
}

template <class F> class ScopeExit {
public:
  explicit ScopeExit(F f) : f_(std::move(f)) {}
  ScopeExit(const ScopeExit&) = delete;
  ~ScopeExit() { f_(); }

private:
  F f_;
};

class Channel : public std::enable_shared_from_this<Channel> {
public:
  Channel(Socket socket, AgentDeadlines deadlines)
      : executor_(socket.get_executor()), socket_(std::move(socket)), write_lock_(executor_),
        deadlines_(deadlines) {}

  void start() {
    asio::co_spawn(
        executor_, [self = shared_from_this()] { return self->read_loop(); }, asio::detached);
  }

  const asio::any_io_executor& executor() const { return executor_; }
  const AgentDeadlines& deadlines() const { return deadlines_; }
  bool connected() const { return !closed_.has_value(); }
  // The host closed it on purpose (the client was destroyed), as opposed to
  // the VM or agent going away.
  bool closed_by_host() const { return closed_by_host_; }
  void close_by_host() {
    if (!closed_) closed_by_host_ = true;
    close(channel_closed("the host closed the channel"));
  }
  std::uint64_t allocate_id() { return next_id_++; }

  // Python cells run one at a time in the agent, in arrival order: a cell's
  // own timeout starts only once the cells sent before it have ended. Each
  // cell takes its place here as it is sent, and gets the end of the one
  // before it to wait for.
  std::shared_ptr<detail::Event> queue_python_cell(std::shared_ptr<detail::Event> mine) {
    return std::exchange(last_python_cell_, std::move(mine));
  }

  // Routes events for `id` to `inbox`. Several ids may share one inbox.
  // `allowance` is how many bytes of `streams` the request may get (exec
  // output, or the file range asked for).
  void route(std::uint64_t id, const std::shared_ptr<Inbox>& inbox,
             Streams streams = Streams::nothing, std::uint64_t allowance = 0) {
    if (closed_) {
      inbox->close(*closed_);
      return;
    }
    routes_[id] = Route{inbox, streams, allowance};
  }
  std::shared_ptr<Inbox> open(std::uint64_t id, Streams streams = Streams::nothing,
                              std::uint64_t allowance = 0) {
    auto inbox = std::make_shared<Inbox>(executor_);
    route(id, inbox, streams, allowance);
    return inbox;
  }
  void forget(std::uint64_t id) { routes_.erase(id); }
  // Lets request `id` receive `bytes` more of its stream (a port's window
  // as the host takes its data).
  void grant(std::uint64_t id, std::uint64_t bytes) {
    if (auto it = routes_.find(id); it != routes_.end()) it->second.allowance += bytes;
  }

  // Why the channel closed, once it has.
  const std::optional<Error>& closed_reason() const { return closed_; }

  // The guest broke the protocol: disconnect it.
  void violate(const std::string& what) {
    if (closed_) return;
    log::warn("a guest broke the agent protocol; disconnecting it", {{"what", what}});
    close(protocol_violation(what));
  }

  asio::awaitable<Result<void>> send(const guest::Request& request) {
    if (closed_) co_return *closed_;
    // A cancel still goes: the agent acts on it when the guest runs again.
    if (held_ && !request.has_cancel()) co_return held_error("send a request to the agent");
    std::string frame = wire::encode_frame(request);
    co_await write_lock_.lock();
    detail::AsyncLockGuard guard(write_lock_);
    // The channel may have closed while this call waited for its turn.
    if (closed_) co_return *closed_;
    // A guest that stops reading fills its end of the channel and would hold
    // this write (and every call queued behind it) forever.
    auto watchdog = std::make_shared<asio::steady_timer>(executor_);
    watch_send(watchdog, holds_);
    boost::system::error_code ec;
    co_await asio::async_write(socket_, asio::buffer(frame),
                               asio::redirect_error(asio::use_awaitable, ec));
    watchdog->cancel();
    if (closed_) co_return *closed_;
    if (ec) {
      close(channel_closed("writing to the agent failed: " + ec.message()));
      co_return *closed_;
    }
    co_return Result<void>{};
  }

  void close(Error reason) {
    if (closed_) return;
    closed_ = std::move(reason);
    boost::system::error_code ignored;
    socket_.close(ignored);
    auto routes = std::move(routes_);
    routes_.clear();
    for (auto& [id, route] : routes)
      route.inbox->close(*closed_);
    tell_disconnect();
  }

  void on_disconnect(AgentClient::DisconnectHandler handler) {
    on_disconnect_ = std::move(handler);
    if (closed_) tell_disconnect();
  }

  // AgentClient::hold. A wait takes hold_count() as it starts; when its
  // time runs out, held_since(that) says whether the host stopped the guest
  // meanwhile, in which case the agent is not stuck.
  void hold(std::optional<std::string> why) {
    if (why) {
      if (!held_) ++holds_;
      last_hold_ = *why;
    }
    held_ = std::move(why);
  }
  std::uint64_t hold_count() const { return holds_; }
  bool held_since(std::uint64_t mark) const { return held_.has_value() || holds_ != mark; }
  std::string held_text() const {
    return std::string("the sandbox's VM ") + (held_ ? "is" : "was") + " paused: " + last_hold_ +
           "; nothing it holds is lost, retry later";
  }
  Error held_error(const std::string& operation) const {
    return Error::of(ErrorKind::unavailable, operation + ": " + held_text());
  }

private:
  // Closes the channel if a write is still under way after
  // AgentDeadlines::send, unless the host held the guest meanwhile (a
  // stopped guest reads nothing and is not stuck for it): then it waits on.
  void watch_send(const std::shared_ptr<asio::steady_timer>& watchdog, std::uint64_t mark) {
    watchdog->expires_after(deadlines_.send);
    watchdog->async_wait([self = shared_from_this(), watchdog, mark](boost::system::error_code ec) {
      if (ec) return;
      if (self->held_since(mark)) {
        self->watch_send(watchdog, self->holds_);
        return;
      }
      self->close(agent_stuck("it read nothing for " + seconds_text(self->deadlines_.send) +
                              " while hostd was writing to it"));
    });
  }

  // A channel this host closed (not one the guest's end closed: the VM's
  // exit reports that) ends the sandbox: say so once, off this call stack.
  void tell_disconnect() {
    if (!on_disconnect_ || !closed_ || closed_->kind == ErrorKind::guest_died) return;
    asio::post(executor_,
               [handler = std::move(on_disconnect_), reason = *closed_] { handler(reason); });
    on_disconnect_ = nullptr;
  }

  asio::awaitable<void> read_loop() {
    auto self = shared_from_this();
    std::string buffer(kReadBufferBytes, '\0');
    wire::FrameDecoder decoder;
    while (!closed_) {
      boost::system::error_code ec;
      const std::size_t n = co_await socket_.async_read_some(
          asio::buffer(buffer), asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        close(channel_closed(ec == asio::error::eof ? "end of stream" : ec.message()));
        break;
      }
      decoder.feed(std::string_view(buffer.data(), n));
      while (!closed_) {
        auto payload = decoder.next();
        if (!payload) {
          violate("bad frame: " + payload.error().message());
          break;
        }
        if (!payload.value()) break;
        guest::Event event;
        if (auto parsed = wire::parse_payload(*payload.value(), event); !parsed) {
          violate("bad frame: " + parsed.error().message());
          break;
        }
        if (auto broken = deliver(std::move(event))) violate(*broken);
      }
    }
  }

  struct Route {
    std::shared_ptr<Inbox> inbox;
    Streams streams = Streams::nothing;
    std::uint64_t allowance = 0;
  };

  // Hands `event` to its request's mailbox; what the guest did wrong, if
  // it did.
  std::optional<std::string> deliver(guest::Event event) {
    const std::uint64_t id = event.id();
    auto it = routes_.find(id);
    if (it == routes_.end()) {
      // A late event of a call that gave up (timed out, abandoned): dropped.
      if (id >= first_id_ && id < next_id_) return std::nullopt;
      if (answered_)
        return "an event for request " + std::to_string(id) + ", which this host never sent";
      if (++strays_ > kMaxStrayEvents)
        return "more than " + std::to_string(kMaxStrayEvents) +
               " events for requests this host never sent";
      return std::nullopt;
    }
    answered_ = true;
    Route& route = it->second;
    const bool terminal = is_terminal(event);
    if (!terminal) {
      if (auto wrong = charge(route, event)) return "request " + std::to_string(id) + ": " + *wrong;
    }
    const std::size_t weight = std::max<std::size_t>(event.ByteSizeLong(), kMinEventWeight);
    auto inbox = route.inbox;
    // One terminal event per request: whatever follows it is dropped.
    if (terminal) routes_.erase(it);
    inbox->push(std::move(event), weight);
    if (inbox->queued_weight() > kMaxQueuedBytes)
      return "more than " + std::to_string(kMaxQueuedBytes >> 20) + " MiB of events for request " +
             std::to_string(id) + " wait to be read; the guest floods its channel";
    return std::nullopt;
  }

  // Counts a streamed event against what its request may get.
  static std::optional<std::string> charge(Route& route, const guest::Event& event) {
    std::uint64_t bytes = 0;
    Streams needed = Streams::output;
    switch (event.kind_case()) {
    case guest::Event::kStdout:
      bytes = event.stdout().size();
      break;
    case guest::Event::kStderr:
      bytes = event.stderr().size();
      break;
    case guest::Event::kFileData:
      bytes = event.file_data().size();
      needed = Streams::file_data;
      break;
    case guest::Event::kPortData:
      bytes = event.port_data().size();
      needed = Streams::port;
      break;
    case guest::Event::kPortAck: // checked against what was sent by the stream
      needed = Streams::port;
      break;
    default: // result, error, display: bounded per event, and queued-bytes capped
      break;
    }
    if (route.streams != needed)
      return std::string("a streamed event (field ") +
             std::to_string(static_cast<int>(event.kind_case())) +
             ") for a request that streams none of that kind";
    if (bytes > route.allowance) {
      if (needed == Streams::port) return "port data beyond the window the host gave";
      return needed == Streams::file_data ? "file data beyond the range that was asked for"
                                          : "exec output past its budget of " +
                                                std::to_string(route.allowance) + " more bytes";
    }
    route.allowance -= bytes;
    return std::nullopt;
  }

  asio::any_io_executor executor_;
  Socket socket_;
  detail::AsyncMutex write_lock_;
  const AgentDeadlines deadlines_;
  std::unordered_map<std::uint64_t, Route> routes_;
  std::shared_ptr<detail::Event> last_python_cell_;
  std::optional<Error> closed_;
  AgentClient::DisconnectHandler on_disconnect_;
  bool closed_by_host_ = false;
  // hold(): why the host holds the guest now, the last reason given, and
  // how many holds have begun.
  std::optional<std::string> held_;
  std::string last_hold_;
  std::uint64_t holds_ = 0;
  // Ids start at a random point, not 1: a VM restored from a snapshot taken
  // while calls were in flight still answers the old client's ids, and a
  // fresh client counting from 1 would take those stale events for its own.
  const std::uint64_t first_id_ = first_request_id();
  std::uint64_t next_id_ = first_id_;
  // An event for one of this client's requests arrived (stray events are
  // violations from then on), and how many strays came before it.
  bool answered_ = false;
  int strays_ = 0;
};

using ChannelPtr = std::shared_ptr<Channel>;

Error unexpected_event(const std::string& operation, const guest::Event& event) {
  return make_error(operation, "the agent answered with an unexpected event (field " +
                                   std::to_string(static_cast<int>(event.kind_case())) +
                                   "); the agent and hostd disagree on the protocol");
}

// Waits for the terminal event of request `id` (whose events arrive in
// `inbox`); streamed events go to `on_stream` (which may be empty). Nullopt
// at the deadline.
asio::awaitable<std::optional<Result<guest::Event>>>
await_terminal(Inbox& inbox, Clock::time_point deadline,
               const std::function<void(const guest::Event&)>& on_stream) {
  for (;;) {
    auto received = co_await inbox.receive(deadline);
    if (!received) co_return std::nullopt;
    if (!*received) co_return std::move(*received).error();
    guest::Event& event = received->value();
    if (is_terminal(event)) co_return std::move(event);
    if (on_stream) on_stream(event);
  }
}

// Sends `request` under a fresh id and returns its terminal event; streamed
// events go to `on_stream` (which may be empty). At the deadline the agent
// is taken to be stuck: the channel closes (the host ends the sandbox) and
// the caller gets a timeout.
asio::awaitable<Result<guest::Event>>
call(ChannelPtr channel, guest::Request request, Clock::time_point deadline,
     const std::function<void(const guest::Event&)>& on_stream) {
  const std::uint64_t id = channel->allocate_id();
  request.set_id(id);
  auto inbox = channel->open(id);
  ScopeExit forget([&] { channel->forget(id); });
  if (auto sent = co_await channel->send(request); !sent) co_return std::move(sent).error();
  auto terminal = co_await await_terminal(*inbox, deadline, on_stream);
  if (terminal) co_return std::move(*terminal);
  co_return make_error("wait for the agent", "no answer before the deadline");
}

// A control call: one that the agent answers at once. No answer within
// AgentDeadlines::control means the agent is stuck: its channel is closed (the host
// ends the sandbox) and the caller gets a timeout that says so.
asio::awaitable<Result<guest::Event>> control_call(ChannelPtr channel, guest::Request request) {
  const auto limit = channel->deadlines().control;
  const auto mark = channel->hold_count();
  auto terminal = co_await call(channel, std::move(request), Clock::now() + limit, kNoStream);
  if (terminal || channel->closed_reason()) co_return terminal;
  if (channel->held_since(mark)) co_return channel->held_error("wait for the agent");
  const std::string what = "no answer within " + seconds_text(limit);
  channel->close(agent_stuck(what));
  co_return Error::of(ErrorKind::timeout,
                      "the agent gave " + what + "; the sandbox is ended (its VM is killed)");
}

// The next event of a file transfer. An agent silent for AgentDeadlines::file_idle
// while the host waits for it is stuck: as in control_call.
asio::awaitable<Result<guest::Event>> next_file_event(ChannelPtr channel, Inbox& inbox) {
  const auto limit = channel->deadlines().file_idle;
  const auto mark = channel->hold_count();
  auto received = co_await inbox.receive(Clock::now() + limit);
  if (received) co_return std::move(*received);
  if (channel->held_since(mark)) co_return channel->held_error("a file transfer");
  const std::string what = "nothing within " + seconds_text(limit) + " of a file transfer";
  if (!channel->closed_reason()) channel->close(agent_stuck(what));
  co_return Error::of(ErrorKind::timeout,
                      "the agent sent " + what + "; the sandbox is ended (its VM is killed)");
}

std::uint64_t output_budget(std::uint64_t asked) {
  return asked != 0 ? asked : kDefaultExecOutputBytes;
}

// An exec on the wire: the agent pinged whenever it ran AgentDeadlines::liveness
// (a stopped agent is found even without a timeout); at most its own
// timeout plus AgentDeadlines::exec_grace, then a
// Cancel (the agent interrupts the cell or kills the command, as on its own
// timeout), then at most AgentDeadlines::cancel_answer for it to end before the
// channel is closed. Either way the caller gets a timeout saying which.
asio::awaitable<Result<guest::Exit>> run_exec(ChannelPtr channel, guest::Request request,
                                              ExecEventSink sink, std::string operation,
                                              std::uint32_t timeout_ms,
                                              std::uint64_t output_bytes) {
  const std::uint64_t id = channel->allocate_id();
  request.set_id(id);
  auto inbox = channel->open(id, Streams::output, output_bytes + kExecOutputSlack);
  ScopeExit forget([&] { channel->forget(id); });
  // A cell queued behind others starts its timeout when they have ended.
  std::shared_ptr<detail::Event> before;
  auto ended = std::make_shared<detail::Event>(channel->executor());
  ScopeExit end([ended] { ended->set(); });
  if (request.has_exec_python()) before = channel->queue_python_cell(ended);
  if (auto sent = co_await channel->send(request); !sent)
    co_return std::move(sent).error().with_context(operation);
  // Each cell before this one has a deadline of its own: this wait is bounded.
  if (before) (void)co_await before->wait();
  const auto& limits = channel->deadlines();
  const auto deadline =
      timeout_ms == 0 ? Clock::time_point::max()
                      : Clock::now() + std::chrono::milliseconds(timeout_ms) + limits.exec_grace;
  std::optional<Result<guest::Event>> terminal;
  for (;;) {
    const auto mark = channel->hold_count();
    terminal =
        co_await await_terminal(*inbox, std::min(deadline, Clock::now() + limits.liveness), sink);
    if (terminal || Clock::now() >= deadline) break;
    // A long exec (or one without a timeout): is the agent still there?
    guest::Request ping;
    ping.mutable_ping();
    auto pong = co_await call(channel, std::move(ping), Clock::now() + limits.control, kNoStream);
    // A guest the host stopped meanwhile is not stuck: the exec waits on.
    if (!pong && !channel->closed_reason() && channel->held_since(mark)) continue;
    if (!pong && !channel->closed_reason()) {
      channel->close(agent_stuck("a ping during an exec went unanswered"));
      co_return Error::of(ErrorKind::timeout,
                          operation + ": the agent did not answer a ping within " +
                              seconds_text(limits.control) +
                              " while the exec ran; the agent is stuck, so the sandbox is ended "
                              "(its VM is killed)");
    }
  }
  std::optional<std::string> overran;
  if (!terminal) {
    overran = "the agent did not end it within its timeout of " +
              seconds_text(std::chrono::milliseconds(timeout_ms)) + " and " +
              seconds_text(limits.exec_grace) + " of grace";
    guest::Request cancel;
    cancel.set_id(channel->allocate_id());
    cancel.mutable_cancel()->set_target(id);
    const auto mark = channel->hold_count();
    (void)co_await channel->send(cancel);
    terminal = co_await await_terminal(*inbox, Clock::now() + limits.cancel_answer, sink);
    if (!terminal && channel->held_since(mark))
      co_return Error::of(ErrorKind::timeout,
                          operation + ": " + *overran + "; " + channel->held_text() +
                              " (the agent gets the cancel when the VM runs again)");
    if (!terminal) {
      if (!channel->closed_reason())
        channel->close(agent_stuck("an exec overran its timeout and a cancel went unanswered"));
      co_return Error::of(ErrorKind::timeout,
                          operation + ": " + *overran + ", nor after a cancel within " +
                              seconds_text(limits.cancel_answer) +
                              "; the agent is stuck, so the sandbox is ended (its VM is killed)");
    }
  }
  if (!*terminal) co_return std::move(*terminal).error().with_context(operation);
  const guest::Event& event = terminal->value();
  if (overran && event.has_exit()) {
    co_return Error::of(ErrorKind::timeout,
                        operation + ": " + *overran + "; hostd cancelled it and " +
                            (event.exit().repl_restarted()
                                 ? "the Python REPL was restarted (its state is lost); "
                                 : "it was interrupted; ") +
                            "the sandbox keeps running");
  }
  if (event.has_exit()) co_return event.exit();
  if (event.has_failure()) co_return failure_error(operation, {}, event.failure());
  co_return unexpected_event(operation, event);
}

// A refresh on the wire: sent under `id`, its answer arriving in `inbox`.
struct SentRefresh {
  std::uint64_t id = 0;
  std::shared_ptr<Inbox> inbox;
};

asio::awaitable<Result<SentRefresh>> send_refresh(ChannelPtr channel, IdentityRefresh identity) {
  guest::Request request;
  request.set_id(channel->allocate_id());
  auto* refresh = request.mutable_refresh_identity();
  refresh->set_entropy(std::move(identity.entropy));
  const auto time = identity.time.value_or(std::chrono::system_clock::now());
  refresh->set_unix_time_ns(
      std::chrono::duration_cast<std::chrono::nanoseconds>(time.time_since_epoch()).count());
  refresh->set_hostname(std::move(identity.hostname));
  refresh->set_machine_id(std::move(identity.machine_id));
  SentRefresh sent{request.id(), channel->open(request.id())};
  if (auto written = co_await channel->send(request); !written) {
    channel->forget(sent.id);
    co_return std::move(written).error().with_context(kRefreshOperation);
  }
  co_return sent;
}

asio::awaitable<Result<void>> await_refresh(ChannelPtr channel, SentRefresh sent) {
  ScopeExit forget([&] { channel->forget(sent.id); });
  const auto deadline = Clock::now() + kRefreshAnswerTimeout;
  auto received = co_await sent.inbox->receive(deadline);
  if (!received) {
    co_return make_error(kRefreshOperation, "the agent did not answer within " +
                                                std::to_string(kRefreshAnswerTimeout.count()) +
                                                " s; it may be stuck");
  }
  if (!*received) co_return std::move(*received).error().with_context(kRefreshOperation);
  const guest::Event& event = received->value();
  if (event.has_done()) co_return Result<void>{};
  if (event.has_failure()) co_return failure_error(kRefreshOperation, {}, event.failure());
  co_return unexpected_event(kRefreshOperation, event);
}

// A detached request's failure goes to its handler, or to the log when
// the caller gave none.
void report_failure(const RefreshFailureHandler& on_failure, const Error& error) {
  if (on_failure)
    on_failure(error);
  else
    log::warn("an agent request failed", {{"error", error.message()}});
}

// The detached half of send_refresh_identity: holds the channel (not the
// client) so it may outlive the client, and stays quiet when the host
// itself closed the channel.
asio::awaitable<void> watch_refresh(ChannelPtr channel, SentRefresh sent,
                                    RefreshFailureHandler on_failure) {
  auto outcome = co_await await_refresh(channel, std::move(sent));
  if (outcome || channel->closed_by_host()) co_return;
  report_failure(on_failure, outcome.error());
}

// The detached half of send_grow_root_fs: the agent's answer, or the
// failure handed to `on_failure`.
asio::awaitable<void> watch_grow_root_fs(ChannelPtr channel, SentRefresh sent,
                                         RefreshFailureHandler on_failure) {
  ScopeExit forget([&] { channel->forget(sent.id); });
  const auto deadline = Clock::now() + kGrowAnswerTimeout;
  auto received = co_await sent.inbox->receive(deadline);
  Result<void> outcome;
  if (!received) {
    outcome =
        make_error("grow the root filesystem", "the agent did not answer in time; it may be stuck");
  } else if (!*received) {
    outcome = std::move(*received).error().with_context("grow the root filesystem");
  } else if (received->value().has_failure()) {
    outcome = failure_error("grow the root filesystem", {}, received->value().failure());
  } else if (!received->value().has_done()) {
    outcome = unexpected_event("grow the root filesystem", received->value());
  }
  if (outcome || channel->closed_by_host()) co_return;
  report_failure(on_failure, outcome.error());
}

// Sends a Cancel of request `target` from a destructor or close(), where
// nobody can wait for the agent's answer.
void send_cancel_detached(const ChannelPtr& channel, std::uint64_t target) {
  guest::Request cancel;
  cancel.set_id(channel->allocate_id());
  cancel.mutable_cancel()->set_target(target);
  asio::co_spawn(
      channel->executor(),
      [channel, cancel]() -> asio::awaitable<void> { (void)co_await channel->send(cancel); },
      asio::detached);
}

class AgentUpload final : public Upload {
public:
  AgentUpload(ChannelPtr channel, std::uint64_t id, std::shared_ptr<Inbox> inbox, std::string path)
      : channel_(std::move(channel)), id_(id), inbox_(std::move(inbox)), path_(std::move(path)) {}

  ~AgentUpload() override {
    if (state_ != State::open) return;
    channel_->forget(id_);
    // Dropped without finish() or abort(): tell the agent to remove its
    // temporary file. Nobody waits for the answer.
    if (channel_->connected()) send_cancel_detached(channel_, id_);
  }

  asio::awaitable<Result<void>> write(std::string_view data) override {
    auto channel = channel_;
    if (auto usable = check_open(); !usable) co_return std::move(usable).error();
    while (!data.empty()) {
      if (auto refused = take_early_failure(); !refused) co_return std::move(refused).error();
      const std::size_t n = std::min(data.size(), wire::kMaxChunkBytes);
      guest::Request request;
      request.set_id(id_);
      request.mutable_write_file()->set_data(data.data(), n);
      data.remove_prefix(n);
      if (auto sent = co_await channel->send(request); !sent) {
        state_ = State::failed;
        co_return std::move(sent).error().with_context("uploading " + path_);
      }
    }
    co_return take_early_failure();
  }

  asio::awaitable<Result<guest::Done>> finish() override {
    auto channel = channel_;
    auto inbox = inbox_;
    if (auto usable = check_open(); !usable) co_return std::move(usable).error();
    state_ = State::finished;
    ScopeExit forget([channel, id = id_] { channel->forget(id); });
    guest::Request request;
    request.set_id(id_);
    request.mutable_write_file()->set_last(true);
    if (auto sent = co_await channel->send(request); !sent) {
      co_return std::move(sent).error().with_context("committing upload of " + path_);
    }
    auto received = co_await next_file_event(channel, *inbox);
    if (!received)
      co_return std::move(received).error().with_context("committing upload of " + path_);
    const guest::Event& event = received.value();
    if (event.has_done()) co_return event.done();
    if (event.has_failure()) co_return failure_error("write file", path_, event.failure());
    co_return unexpected_event("write file " + path_, event);
  }

  asio::awaitable<void> abort() override {
    auto channel = channel_;
    if (state_ != State::open) co_return;
    state_ = State::aborted;
    channel->forget(id_);
    guest::Request cancel;
    cancel.mutable_cancel()->set_target(id_);
    // Waits for the agent's acknowledgement so a caller that aborts and then
    // uploads the same path again does not race the removal.
    (void)co_await control_call(channel, std::move(cancel));
  }

private:
  enum class State { open, failed, finished, aborted };

  Result<void> check_open() const {
    switch (state_) {
    case State::open:
      return {};
    case State::failed:
      return make_error("upload", "an earlier write of this upload failed", path_);
    case State::finished:
      return make_error("upload", "the upload was already committed", path_);
    case State::aborted:
      return make_error("upload", "the upload was aborted", path_);
    }
    return {};
  }

  // Before the last chunk, the agent only ever answers with a Failure.
  Result<void> take_early_failure() {
    auto received = inbox_->try_receive();
    if (!received) return {};
    state_ = State::failed;
    channel_->forget(id_);
    if (!*received) return std::move(*received).error().with_context("uploading " + path_);
    const guest::Event& event = received->value();
    if (event.has_failure()) return failure_error("write file", path_, event.failure());
    return unexpected_event("write file " + path_, event);
  }

  ChannelPtr channel_;
  std::uint64_t id_;
  std::shared_ptr<Inbox> inbox_;
  std::string path_;
  State state_ = State::open;
};

// The host's end of a PortOpen. One pump coroutine takes the request's
// events off its mailbox (port_data into `data`, port_ack as credit for
// write(), the terminal event as the end), so read() and write() can wait
// at the same time without both taking from the mailbox.
class AgentPortStream final : public PortStream {
public:
  // What the agent may send before the host took it: one window waits in
  // memory at most per connection.
  static constexpr std::uint64_t kReadWindow = 256u << 10;
  // What the agent buffers (guest/agent/port_relay.hpp: kPortWindow).
  static constexpr std::uint64_t kWriteWindow = 256u << 10;
  static constexpr std::size_t kWriteChunk = 64u << 10;

  struct State {
    explicit State(const asio::any_io_executor& executor)
        : data_ready(executor), credit_ready(executor) {}
    std::deque<std::string> data;
    std::uint64_t in_flight = 0; // written, not yet port_ack'ed
    std::optional<Result<void>> ended;
    detail::Wakeup data_ready, credit_ready;
    void end(Result<void> outcome) {
      if (!ended) ended = std::move(outcome);
      data_ready.notify();
      credit_ready.notify();
    }
  };

  AgentPortStream(ChannelPtr channel, std::uint64_t id, std::uint16_t port,
                  std::shared_ptr<Inbox> inbox)
      : channel_(std::move(channel)), id_(id), port_(port), inbox_(std::move(inbox)),
        state_(std::make_shared<State>(channel_->executor())) {
    asio::co_spawn(channel_->executor(), pump(channel_, id_, port_, inbox_, state_),
                   asio::detached);
  }

  ~AgentPortStream() override { close(); }

  void close() override {
    const bool open = !state_->ended;
    state_->end(Result<void>{});
    channel_->forget(id_);
    inbox_->close(make_error("port " + std::to_string(port_), "the stream was closed"));
    if (!open || !channel_->connected()) return;
    // Closes the guest's socket.
    send_cancel_detached(channel_, id_);
  }

  asio::awaitable<Result<std::string>> read() override {
    auto state = state_;
    auto channel = channel_;
    for (;;) {
      if (!state->data.empty()) {
        std::string chunk = std::move(state->data.front());
        state->data.pop_front();
        taken_ += chunk.size();
        // Acknowledged in batches: one PortWrite per half window taken.
        if (taken_ >= kReadWindow / 2 && !state->ended) {
          const std::uint64_t ack = std::exchange(taken_, 0);
          channel->grant(id_, ack);
          guest::Request request;
          request.set_id(id_);
          request.mutable_port_write()->set_ack(ack);
          if (auto sent = co_await channel->send(request); !sent)
            co_return std::move(sent).error().with_context(subject());
        }
        co_return chunk;
      }
      if (state->ended) {
        if (!*state->ended) co_return state->ended->error();
        co_return std::string();
      }
      (void)co_await state->data_ready.wait();
    }
  }

  asio::awaitable<Result<void>> write(std::string_view data) override {
    auto state = state_;
    auto channel = channel_;
    while (!data.empty()) {
      const std::size_t n = std::min(data.size(), kWriteChunk);
      while (!state->ended && state->in_flight + n > kWriteWindow)
        (void)co_await state->credit_ready.wait();
      if (state->ended) co_return ended_error(*state);
      state->in_flight += n;
      guest::Request request;
      request.set_id(id_);
      request.mutable_port_write()->set_data(data.data(), n);
      data.remove_prefix(n);
      if (auto sent = co_await channel->send(request); !sent)
        co_return std::move(sent).error().with_context(subject());
    }
    co_return Result<void>{};
  }

  asio::awaitable<Result<void>> close_write() override {
    auto state = state_;
    auto channel = channel_;
    if (state->ended) co_return ended_error(*state);
    guest::Request request;
    request.set_id(id_);
    request.mutable_port_write()->set_close_write(true);
    if (auto sent = co_await channel->send(request); !sent)
      co_return std::move(sent).error().with_context(subject());
    co_return Result<void>{};
  }

private:
  std::string subject() const { return "relaying port " + std::to_string(port_); }

  Error ended_error(const State& state) const {
    if (!*state.ended) return state.ended->error();
    return make_error(subject(), "the sandbox's side closed the connection");
  }

  static asio::awaitable<void> pump(ChannelPtr channel, std::uint64_t id, std::uint16_t port,
                                    std::shared_ptr<Inbox> inbox, std::shared_ptr<State> state) {
    const std::string what = "port " + std::to_string(port);
    for (;;) {
      auto received = co_await inbox->receive();
      if (!received) continue; // no deadline: cannot happen
      if (!*received) {
        state->end(std::move(*received).error());
        co_return;
      }
      guest::Event& event = received->value();
      switch (event.kind_case()) {
      case guest::Event::kPortData:
        state->data.push_back(std::move(*event.mutable_port_data()));
        state->data_ready.notify();
        break;
      case guest::Event::kPortAck:
        if (event.port_ack() > state->in_flight) {
          channel->violate("request " + std::to_string(id) + ": port_ack of " +
                           std::to_string(event.port_ack()) + " bytes, more than the " +
                           std::to_string(state->in_flight) + " the host sent");
          state->end(*channel->closed_reason());
          co_return;
        }
        state->in_flight -= event.port_ack();
        state->credit_ready.notify();
        break;
      case guest::Event::kDone:
        state->end(Result<void>{});
        co_return;
      case guest::Event::kFailure: {
        Error error = failure_error("connect to", what + " in the sandbox", event.failure());
        if (event.failure().errno_value() == ECONNREFUSED) error.kind = ErrorKind::unavailable;
        state->end(std::move(error));
        co_return;
      }
      default:
        state->end(unexpected_event(what, event));
        co_return;
      }
    }
  }

  ChannelPtr channel_;
  std::uint64_t id_;
  std::uint16_t port_;
  std::shared_ptr<Inbox> inbox_;
  std::shared_ptr<State> state_;
  std::uint64_t taken_ = 0; // read, not yet acknowledged
};

class ChannelAgentClient final : public AgentClient {
public:
  explicit ChannelAgentClient(ChannelPtr channel) : channel_(std::move(channel)) {}
  ~ChannelAgentClient() override { channel_->close_by_host(); }

  asio::awaitable<Result<guest::Pong>> ping(std::chrono::milliseconds timeout) override {
    auto channel = channel_;
    guest::Request request;
    request.mutable_ping();
    auto terminal = co_await call(channel, std::move(request), Clock::now() + timeout, kNoStream);
    if (!terminal) co_return std::move(terminal).error().with_context("ping agent");
    if (terminal->has_pong()) co_return terminal->pong();
    if (terminal->has_failure()) co_return failure_error("ping agent", {}, terminal->failure());
    co_return unexpected_event("ping agent", terminal.value());
  }

  asio::awaitable<Result<guest::Pong>> wait_ready(std::chrono::milliseconds timeout,
                                                  std::chrono::milliseconds interval) override {
    auto channel = channel_;
    const auto deadline = Clock::now() + timeout;
    auto inbox = std::make_shared<Inbox>(channel->executor());
    std::vector<std::uint64_t> ids;
    ScopeExit forget([&] {
      for (auto id : ids)
        channel->forget(id);
    });
    for (;;) {
      const auto now = Clock::now();
      if (now >= deadline) {
        co_return make_error("wait for the agent", "no answer to " + std::to_string(ids.size()) +
                                                       " pings within " +
                                                       std::to_string(timeout.count()) + " ms");
      }
      guest::Request request;
      request.set_id(channel->allocate_id());
      request.mutable_ping();
      ids.push_back(request.id());
      channel->route(request.id(), inbox);
      if (auto sent = co_await channel->send(request); !sent) {
        co_return std::move(sent).error().with_context("wait for the agent");
      }
      auto received = co_await inbox->receive(std::min(deadline, now + interval));
      if (!received) continue;
      if (!*received) co_return std::move(*received).error().with_context("wait for the agent");
      const guest::Event& event = received->value();
      if (event.has_pong()) co_return event.pong();
      if (event.has_failure()) co_return failure_error("ping agent", {}, event.failure());
      co_return unexpected_event("ping agent", event);
    }
  }

  asio::awaitable<Result<guest::Info>> info() override {
    auto channel = channel_;
    guest::Request request;
    request.mutable_info();
    auto terminal = co_await control_call(channel, std::move(request));
    if (!terminal) co_return std::move(terminal).error().with_context("query agent info");
    if (terminal->has_info()) co_return terminal->info();
    if (terminal->has_failure())
      co_return failure_error("query agent info", {}, terminal->failure());
    co_return unexpected_event("query agent info", terminal.value());
  }

  asio::awaitable<Result<guest::Exit>> exec_python(guest::ExecPython exec,
                                                   ExecEventSink sink) override {
    const std::uint32_t timeout_ms = exec.timeout_ms();
    const std::uint64_t output_bytes = output_budget(exec.max_output_bytes());
    exec.set_max_output_bytes(output_bytes);
    guest::Request request;
    *request.mutable_exec_python() = std::move(exec);
    return run_exec(channel_, std::move(request), std::move(sink), "exec python", timeout_ms,
                    output_bytes);
  }

  asio::awaitable<Result<guest::Exit>> exec_bash(guest::ExecBash exec,
                                                 ExecEventSink sink) override {
    for (const auto& [name, value] : bash_env_)
      exec.mutable_env()->insert({name, value}); // the request's own value wins
    const std::uint32_t timeout_ms = exec.timeout_ms();
    const std::uint64_t output_bytes = output_budget(exec.max_output_bytes());
    exec.set_max_output_bytes(output_bytes);
    guest::Request request;
    *request.mutable_exec_bash() = std::move(exec);
    return run_exec(channel_, std::move(request), std::move(sink), "exec bash", timeout_ms,
                    output_bytes);
  }

  asio::awaitable<Result<std::unique_ptr<Upload>>>
  begin_upload(std::string path, std::uint32_t mode, bool make_parents) override {
    auto channel = channel_;
    const std::uint64_t id = channel->allocate_id();
    auto inbox = channel->open(id);
    // The opening message carries no data: the agent opens the file now, so
    // a refusal (bad path, no permission) reaches the first write().
    guest::Request request;
    request.set_id(id);
    auto* open = request.mutable_write_file();
    open->set_path(path);
    open->set_mode(mode);
    open->set_make_parents(make_parents);
    if (auto sent = co_await channel->send(request); !sent) {
      channel->forget(id);
      co_return std::move(sent).error().with_context("starting upload of " + path);
    }
    co_return std::unique_ptr<Upload>(
        std::make_unique<AgentUpload>(channel, id, std::move(inbox), std::move(path)));
  }

  asio::awaitable<Result<guest::Done>> download(std::string path, ChunkSink sink) override {
    auto channel = channel_;
    std::uint64_t offset = 0;
    for (;;) {
      const std::uint64_t id = channel->allocate_id();
      // The channel refuses (as a violation) any byte past the range.
      auto inbox = channel->open(id, Streams::file_data, kDownloadRange);
      ScopeExit forget([&channel, id] { channel->forget(id); });
      guest::Request request;
      request.set_id(id);
      auto* read = request.mutable_read_file();
      read->set_path(path);
      read->set_offset(offset);
      read->set_length(kDownloadRange);
      if (auto sent = co_await channel->send(request); !sent) {
        co_return std::move(sent).error().with_context("downloading " + path);
      }
      std::uint64_t received_bytes = 0;
      std::optional<guest::Done> done;
      while (!done) {
        auto received = co_await next_file_event(channel, *inbox);
        if (!received) co_return std::move(received).error().with_context("downloading " + path);
        guest::Event& event = received.value();
        if (event.has_file_data()) {
          received_bytes += event.file_data().size();
          if (auto taken = co_await sink(event.file_data()); !taken) {
            co_return std::move(taken).error().with_context("downloading " + path);
          }
        } else if (event.has_done()) {
          done = event.done();
        } else if (event.has_failure()) {
          co_return failure_error("read file", path, event.failure());
        } else {
          co_return unexpected_event("read file " + path, event);
        }
      }
      offset += received_bytes;
      if (done->eof()) {
        done->set_size(std::max<std::uint64_t>(done->size(), offset));
        co_return *done;
      }
      if (received_bytes == 0) {
        co_return make_error("read file",
                             "the agent sent no data at offset " + std::to_string(offset) +
                                 " but did not report the end of the file",
                             path);
      }
    }
  }

  asio::awaitable<Result<void>> shutdown() override {
    auto channel = channel_;
    guest::Request request;
    request.mutable_shutdown();
    auto terminal = co_await control_call(channel, std::move(request));
    if (!terminal) co_return std::move(terminal).error().with_context("shut down the guest");
    if (terminal->has_done()) co_return Result<void>{};
    if (terminal->has_failure())
      co_return failure_error("shut down the guest", {}, terminal->failure());
    co_return unexpected_event("shut down the guest", terminal.value());
  }

  asio::awaitable<Result<void>> refresh_identity(IdentityRefresh identity) override {
    auto channel = channel_;
    auto sent = co_await send_refresh(channel, std::move(identity));
    if (!sent) co_return std::move(sent).error();
    co_return co_await await_refresh(channel, std::move(sent.value()));
  }

  asio::awaitable<Result<void>> send_refresh_identity(IdentityRefresh identity,
                                                      RefreshFailureHandler on_failure) override {
    auto channel = channel_;
    // Awaited up to the write, so the caller's next request is queued
    // behind this one on the channel's FIFO write lock; a detached
    // coroutine would start later and could be overtaken.
    auto sent = co_await send_refresh(channel, std::move(identity));
    if (!sent) co_return std::move(sent).error();
    asio::co_spawn(channel->executor(),
                   watch_refresh(channel, std::move(sent.value()), std::move(on_failure)),
                   asio::detached);
    co_return Result<void>{};
  }

  asio::awaitable<Result<void>> send_grow_root_fs(std::uint64_t disk_bytes,
                                                  RefreshFailureHandler on_failure) override {
    auto channel = channel_;
    guest::Request request;
    request.set_id(channel->allocate_id());
    request.mutable_grow_root_fs()->set_disk_bytes(disk_bytes);
    SentRefresh sent{request.id(), channel->open(request.id())};
    if (auto written = co_await channel->send(request); !written) {
      channel->forget(sent.id);
      co_return std::move(written).error().with_context("grow the root filesystem");
    }
    asio::co_spawn(channel->executor(),
                   watch_grow_root_fs(channel, std::move(sent), std::move(on_failure)),
                   asio::detached);
    co_return Result<void>{};
  }

  asio::awaitable<Result<std::unique_ptr<PortStream>>> open_port(std::uint16_t port) override {
    auto channel = channel_;
    const std::uint64_t id = channel->allocate_id();
    auto inbox = channel->open(id, Streams::port, AgentPortStream::kReadWindow);
    guest::Request request;
    request.set_id(id);
    request.mutable_port_open()->set_port(port);
    request.mutable_port_open()->set_window(AgentPortStream::kReadWindow);
    if (auto sent = co_await channel->send(request); !sent) {
      channel->forget(id);
      co_return std::move(sent).error().with_context("opening port " + std::to_string(port));
    }
    co_return std::unique_ptr<PortStream>(
        std::make_unique<AgentPortStream>(channel, id, port, std::move(inbox)));
  }

  bool connected() const override { return channel_->connected(); }
  std::optional<Error> closed_reason() const override { return channel_->closed_reason(); }
  void on_disconnect(DisconnectHandler handler) override {
    channel_->on_disconnect(std::move(handler));
  }
  void set_bash_env(std::map<std::string, std::string> env) override { bash_env_ = std::move(env); }
  void hold(std::optional<std::string> why) override { channel_->hold(std::move(why)); }

private:
  ChannelPtr channel_;
  std::map<std::string, std::string> bash_env_;
};

} // namespace

asio::awaitable<Result<std::unique_ptr<PortStream>>> AgentClient::open_port(std::uint16_t port) {
  co_return make_error("open port " + std::to_string(port), "this agent client cannot relay ports");
}

asio::awaitable<Result<void>> AgentClient::send_grow_root_fs(std::uint64_t, RefreshFailureHandler) {
  co_return make_error("grow the root filesystem",
                       "this agent client cannot grow the root filesystem");
}

Result<IdentityRefresh> IdentityRefresh::generate(std::string hostname) {
  IdentityRefresh identity;
  identity.hostname = std::move(hostname);
  std::string random(64 + 16, '\0');
  std::size_t filled = 0;
  while (filled < random.size()) {
    const ssize_t n = ::getrandom(random.data() + filled, random.size() - filled, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sys_error("getrandom", {}).with_context("generating a guest identity");
    filled += static_cast<std::size_t>(n);
  }
  identity.entropy = random.substr(0, 64);
  identity.machine_id =
      to_hex(reinterpret_cast<const unsigned char*>(random.data()) + 64, random.size() - 64);
  // All zeros is reserved (machine-id(5)); 2^-128 odds, but cheap to rule out.
  if (identity.machine_id.find_first_not_of('0') == std::string::npos) identity.machine_id[0] = '1';
  return identity;
}

std::unique_ptr<AgentClient> make_agent_client(asio::local::stream_protocol::socket socket,
                                               AgentDeadlines deadlines) {
  auto channel = std::make_shared<Channel>(std::move(socket), deadlines);
  channel->start();
  return std::make_unique<ChannelAgentClient>(std::move(channel));
}

bool is_channel_closed(const Error& error) {
  return error.kind == ErrorKind::guest_died || error.kind == ErrorKind::guest_protocol_violation;
}

namespace {

// What a refusal by the agent means to the caller: a request it could not
// serve as asked (a bad path, a directory, a name in use), a missing file,
// a full disk, or the guest's own fault.
ErrorKind failure_kind(int err) {
  switch (err) {
  case ENOENT:
    return ErrorKind::not_found;
  case EISDIR:
  case ENOTDIR:
  case ENXIO:
  case ENODEV:
  case EINVAL:
  case ENAMETOOLONG:
  case ELOOP:
  case EACCES:
  case EPERM:
  case EROFS:
  case EEXIST:
  case EBUSY:
    return ErrorKind::invalid_argument;
  case ENOSPC:
  case EDQUOT:
  case EFBIG:
    return ErrorKind::too_large;
  default:
    return ErrorKind::internal;
  }
}

} // namespace

Error failure_error(std::string operation, std::string subject, const guest::Failure& failure) {
  int err = failure.errno_value();
  if (err == 0) {
    switch (failure.code()) {
    case guest::Failure::NOT_FOUND:
      err = ENOENT;
      break;
    case guest::Failure::NOT_A_FILE:
    case guest::Failure::BAD_REQUEST:
      err = EINVAL;
      break;
    case guest::Failure::BUSY:
      err = EBUSY;
      break;
    case guest::Failure::TOO_LARGE:
      err = EFBIG;
      break;
    case guest::Failure::NO_SPACE:
      err = ENOSPC;
      break;
    case guest::Failure::IO:
      err = EIO;
      break;
    default:
      break;
    }
  }
  std::string detail = failure.message();
  if (detail.empty()) {
    detail = "the agent refused the request (" + guest::Failure::Code_Name(failure.code()) + ")";
  }
  auto kind = failure_kind(err);
  return Error{err, std::move(operation), std::move(subject), std::move(detail), {}, kind};
}

} // namespace vesicle::vmm
