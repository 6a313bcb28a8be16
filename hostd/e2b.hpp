// E2B's wire protocol beside vesicle's own (README "E2B compatibility"), so
// that the unmodified E2B SDKs run against hostd with E2B_API_URL and
// E2B_SANDBOX_URL set to hostd's URL and E2B_API_KEY set to a vesicle key.
// Every call is translated onto the operations hostd's own handlers run
// (create_sandbox, freeze_sandbox, resume_space, run_exec, the agent's file
// transfers): nothing here decides what the registry decides.
//
//   e2b_control.cpp      routing, X-API-KEY, the control plane, timeouts
//   e2b_envd.cpp         envd's HTTP (/health, /files) and Connect routing
//   e2b_process.cpp      process.Process on the agent's bash commands
//   e2b_filesystem.cpp   filesystem.Filesystem on small guest scripts
//   e2b_interpreter.cpp  the code interpreter (port 49999): /execute, contexts
//   e2b_ports.cpp        any other port inside the sandbox (port_proxy.hpp)
//   e2b_snapshots.cpp    snapshots onto saved templates
//   e2b_network.cpp      the create's egress options onto egress modes
//   e2b_connect.hpp      the Connect protocol's framing and error codes
//   e2b_multipart.hpp    the multipart/form-data reader for uploads
//
// What E2B calls a sandbox id is hostd's own random 128-bit id for the E2B
// sandbox, not the vesicle sandbox's: pause (a freeze) and connect (a
// resume) put the sandbox on a new vesicle sandbox, and E2B's id must not
// change. The table lives in hostd's memory; its paused sandboxes (whose
// Spaces are on disk) are also saved under the state directory
// (e2b_store.hpp), so a restarted hostd connects to them again. A running
// one is gone after a restart, like its VM.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include "common/result.hpp"
#include "hostd/http_exchange.hpp"
#include "messages/api.pb.h"
#include "messages/e2b.pb.h"

namespace vesicle::hostd {

class Api;

namespace e2b {

// The wire messages (messages/e2b.proto).
using namespace ::vesicle::e2b;

// The envd version hostd claims: >= 0.4.0 so the SDK sends no Basic auth
// header for the default user, below 0.5.7 so uploads stay multipart (the
// form every SDK version sends) and below 0.6.2 (file metadata).
inline constexpr const char* kEnvdVersion = "0.5.4";
inline constexpr unsigned kEnvdPort = 49983;
inline constexpr unsigned kInterpreterPort = 49999;
// The guest's home: E2B's relative paths and default cwd resolve here.
inline constexpr const char* kHome = "/root";

// Envelopes (or NDJSON lines) waiting for one streaming response's writer.
struct Outbox {
  explicit Outbox(asio::any_io_executor executor) : wake(executor) {
    wake.expires_at(asio::steady_timer::time_point::max());
  }
  void push(std::string item) {
    items.push_back(std::move(item));
    wake.cancel();
  }
  void close() {
    closed = true;
    wake.cancel();
  }
  std::deque<std::string> items;
  bool closed = false;
  // Cut off, not ended: the connection drops as it does when an E2B
  // sandbox's VM goes away (see Process::abort).
  bool aborted = false;
  asio::steady_timer wake;
};

// A command started with process.Process/Start, while it runs.
struct Process {
  std::uint32_t pid = 0; // the guest's pid of its process group leader
  ProcessConfig config;
  std::optional<std::string> tag;
  // Started with stdin: true and not closed since (e2b_process.cpp's FIFO).
  bool stdin_open = false;
  // The streams reading its events: Start's own, and any Connect's.
  std::vector<std::weak_ptr<Outbox>> readers;
  // Sends one message envelope to every reader still there.
  void publish(const ProcessEvent& event);
  // The end-of-stream envelope, then closes every reader.
  void finish(const std::string& end_of_stream);
  // Its sandbox was killed: every reader's connection is dropped with no
  // end of stream, so E2B's SDK checks the sandbox's health, finds it gone
  // and raises its TimeoutError ("killed or reached its end of life").
  void abort();
};

struct CodeContext {
  std::string id;
  std::string language; // "python" or "bash"
  std::string cwd;
  std::uint32_t executions = 0;
};

struct Sandbox {
  std::string id; // E2B's
  std::string owner;
  std::string vid;        // the vesicle sandbox running it; "" while paused
  std::string frozen_vid; // while paused: the frozen vesicle sandbox
  std::string space_id;   // while paused: its Space
  std::string token;      // envdAccessToken
  // Ports (e2b_ports.cpp): the e2b-traffic-access-token, and whether the
  // creator made every port public (network.allowPublicTraffic: true).
  std::string traffic_token;
  bool public_traffic = false;
  std::string template_id;
  std::map<std::string, std::string> metadata;
  std::map<std::string, std::string> env_vars; // every command's
  std::int64_t started_ms = 0;
  std::int64_t end_ms = 0;
  std::uint32_t vcpus = 0, memory_mib = 0, disk_mib = 0;
  bool changing = false; // a pause or connect is under way
  std::map<std::uint32_t, std::shared_ptr<Process>> processes;
  std::map<std::string, CodeContext> contexts;
  std::uint32_t default_executions = 0;
  // The templates saved as E2B snapshots of this sandbox (their ids), for
  // GET /snapshots?sandboxID=; not kept across a hostd restart.
  std::vector<std::string> snapshots;
};

class E2b : public std::enable_shared_from_this<E2b> {
public:
  explicit E2b(Api& api) : api_(api) {}

  // Serves the request when it is E2B's (true): sandbox traffic (an
  // E2b-Sandbox-Id header) or the control plane (/sandboxes, /v2/...).
  // Anything else is left to vesicle's own routes (false).
  asio::awaitable<bool> handle(Exchange& exchange, const std::vector<std::string>& path,
                               std::string_view query, std::string& key_id);

  // hostd stops: the timeout sweep ends at its next tick. Its timer would
  // otherwise keep the io_context running for as long as the longest E2B
  // timeout left (a test's io_context that should run dry hung on it).
  void stop() { stopped_ = true; }

private:
  // e2b_control.cpp
  asio::awaitable<void> control(Exchange& exchange, const std::vector<std::string>& path,
                                std::string_view query, const std::string& owner);
  asio::awaitable<void> create(Exchange& exchange, const std::string& owner);
  asio::awaitable<void> get(Exchange& exchange, const std::string& owner, const std::string& id);
  asio::awaitable<void> list(Exchange& exchange, const std::string& owner, std::string_view query,
                             bool paged);
  asio::awaitable<void> set_timeout(Exchange& exchange, const std::string& owner,
                                    const std::string& id);
  asio::awaitable<void> pause(Exchange& exchange, const std::string& owner, const std::string& id);
  asio::awaitable<void> connect(Exchange& exchange, const std::string& owner,
                                const std::string& id);
  asio::awaitable<void> kill(Exchange& exchange, const std::string& owner, const std::string& id);
  asio::awaitable<void> fork(Exchange& exchange, const std::string& owner, const std::string& id);
  asio::awaitable<Result<void>> destroy(Sandbox& sandbox);
  // e2b_snapshots.cpp: snapshots onto saved templates.
  asio::awaitable<void> snapshot(Exchange& exchange, const std::string& owner,
                                 const std::string& id);
  asio::awaitable<void> list_snapshots(Exchange& exchange, const std::string& owner,
                                       std::string_view query);
  asio::awaitable<void> delete_snapshot(Exchange& exchange, const std::string& owner,
                                        const std::string& id);
  asio::awaitable<void> sweep();
  void start_sweep();
  // e2b_store.hpp: the paused sandboxes saved after each change, loaded
  // once at the first E2B request after a start.
  void persist();
  void load();
  // The caller's sandbox, or null (another key's is as unknown as none).
  std::shared_ptr<Sandbox> owned(const std::string& owner, const std::string& id);

  // e2b_envd.cpp: sandbox traffic, after the access token was checked.
  asio::awaitable<void> envd(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                             const std::vector<std::string>& path, std::string_view query);
  asio::awaitable<void> download(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                 std::string_view query);
  asio::awaitable<void> upload(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                               std::string_view query);

  // e2b_process.cpp
  asio::awaitable<void> process_call(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                     const std::string& method);
  asio::awaitable<void> start(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                              std::string_view request);
  asio::awaitable<void> attach(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                               std::string_view request);
  // Writes `outbox` as a Connect server stream until it closes or the
  // client goes away (the process runs on either way).
  asio::awaitable<void> stream_out(Exchange& exchange, std::shared_ptr<Outbox> outbox,
                                   bool keepalives);

  // e2b_ports.cpp: a port other than envd's and the interpreter's, by
  // E2B's headers or the host-name form; authenticated here.
  asio::awaitable<void> port(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                             std::string_view port);

  // e2b_filesystem.cpp
  asio::awaitable<void> filesystem_call(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                        const std::string& method);

  // e2b_interpreter.cpp
  asio::awaitable<void> interpreter(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox,
                                    const std::vector<std::string>& path, bool token_checked);
  asio::awaitable<void> execute(Exchange& exchange, const std::shared_ptr<Sandbox>& sandbox);

  // A bash script run in the sandbox to its end (the filesystem calls and
  // signals use these): its exit status and output.
  struct ScriptRun {
    int exit_code = 0;
    std::string out, err;
  };
  asio::awaitable<Result<ScriptRun>> run_script(const Sandbox& sandbox, std::string script,
                                                std::map<std::string, std::string> env);

  Api& api_;
  std::map<std::string, std::shared_ptr<Sandbox>> sandboxes_;
  bool sweeping_ = false;
  bool stopped_ = false;
  bool loaded_ = false;
  asio::any_io_executor executor_;
};

// An E2B control-plane error body: {"code": <status>, "message": ...}.
std::string error_body(unsigned status, std::string_view message);
// The E2B answer status for a vesicle error.
unsigned status_of(const Error& error);
// Parses a JSON body, ignoring fields hostd does not know (the SDKs grow).
Result<void> parse(std::string_view json, google::protobuf::Message& message);
// proto3 JSON with E2B's camelCase names; fields at their default left out
// unless `all_fields`.
std::string print(const google::protobuf::Message& message, bool all_fields = false);
// The vesicle key an X-API-KEY names. E2B's SDKs after 2.51 refuse, by
// default (E2B_VALIDATE_API_KEY), any key not of the form "e2b_<hex>"; a
// vesicle key is "vsk_" and 64 hex digits, so "e2b_<the same digits>" is
// accepted as its other spelling.
std::string vesicle_key(std::string_view presented);
// Compares secrets in time independent of where they differ.
bool same_secret(std::string_view a, std::string_view b);
// A page of an E2B list: ?limit (100 when absent) and ?nextToken (an
// offset this host handed out, 0 when absent); invalid_argument naming a
// bad one (e2b_control.cpp).
struct Page {
  std::size_t offset = 0;
  std::size_t limit = 0;
};
Result<Page> page_of(std::string_view query);
// `count` items, of which `page` shows some, `render(i)` the JSON of item
// i: the page's JSON array; x-next-token set on `exchange` when more remain.
template <class Render>
std::string page_json(Exchange& exchange, std::size_t count, Page page, Render render) {
  std::string out = "[";
  std::size_t i = page.offset;
  for (; i < count && i < page.offset + page.limit; ++i) {
    if (out.size() > 1) out += ",";
    out += render(i);
  }
  if (i < count) exchange.add_response_header("x-next-token", std::to_string(i));
  return out + "]";
}
// The vesicle template an E2B template or snapshot id names: the id without
// E2B's ":default" tag (e2b_snapshots.cpp).
std::string template_name(std::string_view id);
// Puts a create's allow_internet_access and `network` onto `spec`'s egress
// and secrets (e2b_network.cpp); whether its ports are public. What cannot
// be mapped exactly is an invalid_argument naming the field.
Result<bool> apply_network(const NewSandbox& request, api::CreateSandboxRequest& spec);
// An absolute guest path: a relative one is taken from kHome.
std::string absolute(std::string_view path);

} // namespace e2b
} // namespace vesicle::hostd
