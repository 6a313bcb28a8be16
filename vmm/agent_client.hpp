// The host side of the agent channel: one connection to one guest agent,
// requests multiplexed by id (see messages/guest.proto).
//
// Threading: an AgentClient lives on one asio executor (strand or
// single-threaded io_context); call it only from coroutines running there.
// When the channel breaks (the VM died, the agent exited, a bad frame), every
// pending and later call completes with an Error whose detail says so; no
// call ever hangs on a dead VM.
//
// The guest is not trusted: a guest that breaks the protocol (an oversized
// or unparsable frame, a reply to a request never made, file data beyond
// the range asked for, exec output past its budget, a flood of events) is
// disconnected, and every call gets ErrorKind::guest_protocol_violation.
// Every call has a host-side deadline: an exec its timeout_ms plus a grace
// (then a cancel; an agent that ignores it is disconnected), file calls a
// fixed idle limit, control calls a fixed limit. A call that runs out gets
// ErrorKind::timeout saying whether the exec was interrupted (the sandbox
// runs on) or the agent was disconnected (the sandbox is to be ended).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <utility> // before Boost 1.74's awaitable.hpp, which uses std::exchange without it

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include "common/result.hpp"
#include "messages/guest.pb.h"

namespace vesicle::vmm {

namespace asio = boost::asio;

// Called for each streamed event of an exec (stdout, stderr, display, result, error),
// in order, as it arrives. It must not block.
using ExecEventSink = std::function<void(const guest::Event&)>;

// Called for each chunk of a download; the next chunk is not delivered until
// the returned awaitable completes, which is how a slow consumer slows the
// transfer instead of growing a buffer.
using ChunkSink = std::function<asio::awaitable<Result<void>>(std::string_view)>;

// A fresh identity for a machine restored from a snapshot (see
// RefreshIdentity in messages/guest.proto for what the agent does with it).
struct IdentityRefresh {
  // 32 to 512 bytes from the host's CSPRNG, new for every refresh.
  std::string entropy;
  // The guest's new wall clock; unset: the host's clock as the request is
  // sent (what hostd wants, save tests).
  std::optional<std::chrono::system_clock::time_point> time;
  // RFC 1123 labels, at most 64 characters.
  std::string hostname;
  // 32 lowercase hex digits, not all zero.
  std::string machine_id;

  // `hostname` with 64 bytes of entropy and a machine-id from getrandom(2).
  static Result<IdentityRefresh> generate(std::string hostname);
};

// Called when a refresh sent with send_refresh_identity() fails: the agent
// refused or could not apply it, or no answer came.
using RefreshFailureHandler = std::function<void(const Error&)>;

// A file being streamed into the guest.
class Upload {
public:
  virtual ~Upload() = default;
  // Sends `data` (any size; cut into chunks). Fails early if the agent
  // already refused the file.
  virtual asio::awaitable<Result<void>> write(std::string_view data) = 0;
  // Commits the file (atomic rename in the guest) and returns its size.
  virtual asio::awaitable<Result<guest::Done>> finish() = 0;
  // Abandons the upload; the target path is left as it was.
  virtual asio::awaitable<void> abort() = 0;
};

// A TCP connection to a port inside the guest, relayed over the agent
// channel (PortOpen in messages/guest.proto). Both directions are paced by
// windows: write() waits while the agent holds kPortWindow of unwritten
// bytes, and the agent sends no more than the read window the host has not
// yet taken with read(). Destroying it closes the guest's socket.
class PortStream {
public:
  virtual ~PortStream() = default;
  // The next bytes from the guest's socket, as they come; an empty string
  // once the guest closed it. An Error: nothing listens on the port
  // (ErrorKind::unavailable, saying so), the channel closed, or the
  // stream's idle limit passed.
  virtual asio::awaitable<Result<std::string>> read() = 0;
  // Writes `data` into the guest's socket (any size; cut into chunks).
  virtual asio::awaitable<Result<void>> write(std::string_view data) = 0;
  // After the bytes written so far: shuts the guest socket's write side.
  virtual asio::awaitable<Result<void>> close_write() = 0;
  // Closes the guest's socket now (without waiting); a read() waiting, or
  // any later, returns an empty string.
  virtual void close() = 0;
};

class AgentClient {
public:
  // Closes the channel; calls still pending complete with the
  // channel-closed Error.
  virtual ~AgentClient() = default;

  virtual asio::awaitable<Result<guest::Pong>> ping(std::chrono::milliseconds timeout) = 0;
  // Pings every `interval` until any ping is answered or `timeout` passes.
  // Earlier pings stay outstanding, so a guest that answers slower than
  // `interval` is still seen (used while a VM boots or resumes).
  virtual asio::awaitable<Result<guest::Pong>> wait_ready(std::chrono::milliseconds timeout,
                                                          std::chrono::milliseconds interval) = 0;
  virtual asio::awaitable<Result<guest::Info>> info() = 0;

  // Runs a cell or a command. Streamed events go to `sink`; the result is
  // the terminal Exit. A Failure from the agent becomes an Error (see
  // failure_error below).
  virtual asio::awaitable<Result<guest::Exit>> exec_python(guest::ExecPython request,
                                                           ExecEventSink sink) = 0;
  virtual asio::awaitable<Result<guest::Exit>> exec_bash(guest::ExecBash request,
                                                         ExecEventSink sink) = 0;
  // Variables every later exec_bash gets where its request does not set
  // them (a sandbox with secrets: where its trusted CA bundle is). Not
  // pure: a test fake ignores them.
  virtual void set_bash_env(std::map<std::string, std::string> env) { (void)env; }

  virtual asio::awaitable<Result<std::unique_ptr<Upload>>>
  begin_upload(std::string path, std::uint32_t mode, bool make_parents) = 0;

  // Streams the whole file to `sink` in order; returns its size and mode.
  virtual asio::awaitable<Result<guest::Done>> download(std::string path, ChunkSink sink) = 0;

  // Gives the guest a fresh identity (after every restore or fork) and
  // returns once the agent applied it. A Failure becomes an Error
  // (BAD_REQUEST: EINVAL, naming the field).
  virtual asio::awaitable<Result<void>> refresh_identity(IdentityRefresh identity) = 0;
  // The same without waiting for the agent: returns once the request is
  // written to the channel (an Error only if the channel is closed), and a
  // failure reported later goes to `on_failure` (default: a line on
  // stderr). The agent handles requests in arrival order and applies the
  // refresh before it reads the next one, so any request sent after this
  // returns (an exec, an upload) already sees the new identity.
  virtual asio::awaitable<Result<void>>
  send_refresh_identity(IdentityRefresh identity, RefreshFailureHandler on_failure = {}) = 0;

  // Has the agent grow the root filesystem to fill its disk once the disk
  // is `disk_bytes` large (GrowRootFs in messages/guest.proto); the disk
  // itself grows with Vm::grow_disk, before or after. Like
  // send_refresh_identity: returns
  // once the request is written (the agent grows the filesystem before it
  // reads the next request, so whatever is sent after already sees the
  // room), and a failure reported later goes to `on_failure`. Not pure: a
  // client that cannot (a test fake) answers with an Error.
  virtual asio::awaitable<Result<void>> send_grow_root_fs(std::uint64_t disk_bytes,
                                                          RefreshFailureHandler on_failure);

  // Opens a TCP connection to 127.0.0.1:`port` inside the guest. Returns
  // at once: a refused connection is the first read()'s Error. Not pure: a
  // client that cannot (a test fake) answers with an Error.
  virtual asio::awaitable<Result<std::unique_ptr<PortStream>>> open_port(std::uint16_t port);

  // Asks the agent to sync and power off; returns once it acknowledged.
  virtual asio::awaitable<Result<void>> shutdown() = 0;

  // False once the channel has broken.
  virtual bool connected() const = 0;
  // Why the channel broke, once it has: ErrorKind::guest_protocol_violation
  // when the guest broke the protocol, ErrorKind::timeout when the agent
  // stopped answering (in both cases this client disconnected it, the VM
  // still runs, and hostd ends the sandbox and says why),
  // ErrorKind::guest_died otherwise. Nullopt while connected (and for a
  // client that cannot tell).
  virtual std::optional<Error> closed_reason() const { return std::nullopt; }

  // Called once, on the client's executor, when this client disconnects
  // the guest itself (closed_reason() is a protocol violation or a
  // timeout), with that reason; at once if it already has. The VM still
  // runs then, so no exit tells its owner the sandbox is over; this does.
  // (A client that cannot tell never calls it.)
  using DisconnectHandler = std::function<void(const Error&)>;
  virtual void on_disconnect(DisconnectHandler handler) { (void)handler; }

  // The host has stopped the guest (`why`: QEMU paused it because its disk
  // found the host's filesystem full), or let it run again (nullopt). The
  // agent cannot answer meanwhile, and that does not make it stuck: new
  // requests fail at once with ErrorKind::unavailable and `why` (nothing is
  // sent), a call that runs out of time fails the same way, and the
  // channel stays open; an exec already running waits on, up to its own
  // timeout. Not pure: a client without deadlines (a test fake) has nothing
  // to hold.
  virtual void hold(std::optional<std::string> why) { (void)why; }
};

// The host-side deadlines of a client: hostd's defaults; tests shorten them.
struct AgentDeadlines {
  // An exec may run its own timeout_ms plus this (the agent enforces the
  // timeout; the grace covers its interrupt and a REPL restart), then the
  // host cancels it ...
  std::chrono::milliseconds exec_grace{15'000};
  // ... and an agent that has not ended it this long after the cancel is
  // stuck: the channel is closed.
  std::chrono::milliseconds cancel_answer{15'000};
  // A file transfer: no event from the agent for this long while the host
  // waits for one.
  std::chrono::milliseconds file_idle{60'000};
  // An exec running this long (and every such span after) has the host
  // ping the agent: one that does not answer within `control` is stuck and
  // the channel is closed, whatever the exec's own timeout.
  std::chrono::milliseconds liveness{60'000};
  // Info, shutdown, a ping during an exec, a cancel's acknowledgement: answered at once by a
  // working agent.
  std::chrono::milliseconds control{30'000};
  // A request the guest does not take off the channel for this long (its
  // end full): the channel is closed.
  std::chrono::milliseconds send{30'000};
};

// Builds a client on an already connected stream socket (QEMU's chardev
// socket, or one end of a socketpair in tests). The client lives on the
// socket's executor.
std::unique_ptr<AgentClient> make_agent_client(asio::local::stream_protocol::socket socket,
                                               AgentDeadlines deadlines = {});

// True when `error` is the one every call gets once the channel broke (the
// VM died, the agent exited or stopped answering, or the guest broke the
// protocol): the VM is gone or unusable, as opposed to a request the agent
// refused.
bool is_channel_closed(const Error& error);

// How an agent's Failure becomes an Error: operation and subject say what
// the host asked for, detail is the agent's message, errno_value the agent's
// errno or, when it sent none, the closest errno to its code (NOT_FOUND:
// ENOENT, NOT_A_FILE and BAD_REQUEST: EINVAL, BUSY: EBUSY, TOO_LARGE: EFBIG,
// NO_SPACE: ENOSPC, IO: EIO), so the HTTP layer can map it to a status.
Error failure_error(std::string operation, std::string subject, const guest::Failure& failure);

} // namespace vesicle::vmm
