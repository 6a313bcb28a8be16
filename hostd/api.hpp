// The REST API (api-contract.md): routing, authentication, and one handler
// per call. Handlers ask the registry actor for decisions and state changes
// (ownership, state checks, leases) and do the streaming themselves, on the
// asio executor, with the VM's agent client.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <caf/actor_system.hpp>

#include "actors/sandbox/registry.hpp"
#include "actors/sandbox/vm_host.hpp"
#include "hostd/http_exchange.hpp"
#include "hostd/keys.hpp"
#include "hostd/mcp.hpp"
#include "hostd/metrics.hpp"
#include "hostd/port_proxy.hpp"
#include "hostd/query.hpp"
#include "hostd/rate_limit.hpp"
#include "hostd/rfc3339.hpp"
#include "hostd/runtime_core.hpp"
#include "hostd/vm_lease.hpp"
#include "messages/api.pb.h"
#include "messages/config.pb.h"

namespace vesicle::hostd {

namespace e2b {
class E2b;
}

inline constexpr const char* kVersion = "0.1.0";

struct ApiContext {
  // What the handlers share with the embedding API: leases and death
  // records (runtime_core.hpp).
  RuntimeCore& core;
  caf::actor_system& system;
  registry_actor registry;
  VmHost& vms;
  // Reloaded in place (Api::reload_keys) on the io thread, where every
  // handler runs: a handler holds no entry across a co_await.
  KeyStore& keys;
  const config::HostdConfig& config;
  std::vector<pool_actor> pools;
  // How long a handler waits for an actor's answer (creates wait for the
  // boot: see create_timeout).
  caf::timespan actor_timeout = std::chrono::seconds(30);
  caf::timespan create_timeout = std::chrono::seconds(150);
};

// What a reload of the keys file did (Api::reload_keys).
struct KeysReload {
  std::size_t keys = 0;             // keys in the file now
  std::vector<std::string> removed; // ids no longer in it
  std::size_t sandboxes_destroyed = 0;
  std::size_t sandboxes_kept = 0; // keys.removed_key_sandboxes "keep"
};

class Api {
public:
  explicit Api(ApiContext context) : ctx_(std::move(context)) {}

  asio::awaitable<void> handle(Exchange& exchange);

  // Reads the keys file again; a removed key's sandboxes are destroyed or
  // kept per keys.removed_key_sandboxes (api_admin.cpp). Running sandboxes
  // of the keys that stay are untouched. SIGHUP and POST
  // /v1/admin/keys/reload run it.
  asio::awaitable<Result<KeysReload>> reload_keys();

  // 0 if key `key_id` may make a request now, else the seconds until it
  // may (its tier's max_requests_per_s).
  std::uint32_t rate_limited(const std::string& key_id);

  // hostd stops: E2B's timeout sweep ends (e2b_control.cpp).
  void stop_e2b();

private:
  // E2B's wire protocol (e2b.hpp) translates onto the operations below.
  friend class e2b::E2b;

  // Sets `key_id` once the caller's API key is known (for the request's
  // log line).
  asio::awaitable<void> route(Exchange& exchange, const std::vector<std::string>& path,
                              std::string_view query, std::string& key_id);

  // e2b_control.cpp: serves the request if it is E2B's (true).
  asio::awaitable<bool> e2b(Exchange& exchange, const std::vector<std::string>& path,
                            std::string_view query, std::string& key_id);
  // api_host.cpp
  asio::awaitable<void> healthz(Exchange& exchange);
  asio::awaitable<void> capacity(Exchange& exchange);
  asio::awaitable<void> metrics(Exchange& exchange);
  asio::awaitable<std::vector<PoolInfo>> pool_infos();
  // api_sandboxes.cpp
  asio::awaitable<void> create(Exchange& exchange, const std::string& owner);
  asio::awaitable<void> list(Exchange& exchange, const std::string& owner);
  asio::awaitable<void> get(Exchange& exchange, const std::string& owner, const std::string& id);
  asio::awaitable<void> fork(Exchange& exchange, const std::string& owner, const std::string& id);
  asio::awaitable<void> merge_into(Exchange& exchange, const std::string& owner,
                                   const std::string& parent, const std::string& winner);
  asio::awaitable<void> destroy(Exchange& exchange, const std::string& owner,
                                const std::string& id);
  // api_spaces.cpp
  asio::awaitable<void> freeze(Exchange& exchange, const std::string& owner, const std::string& id);
  asio::awaitable<void> list_spaces(Exchange& exchange, const std::string& owner);
  asio::awaitable<void> get_space(Exchange& exchange, const std::string& owner,
                                  const std::string& space_id);
  asio::awaitable<void> delete_space(Exchange& exchange, const std::string& owner,
                                     const std::string& space_id);
  asio::awaitable<void> resume(Exchange& exchange, const std::string& owner,
                               const std::string& space_id);
  // api_templates.cpp
  asio::awaitable<void> create_template(Exchange& exchange, const std::string& owner);
  asio::awaitable<void> list_templates(Exchange& exchange, const std::string& owner);
  asio::awaitable<void> get_template(Exchange& exchange, const std::string& owner,
                                     const std::string& name);
  asio::awaitable<void> delete_template(Exchange& exchange, const std::string& owner,
                                        const std::string& name);
  // api_admin.cpp (an admin key's calls) and api_ui.cpp (the page)
  enum class AdminAction { destroy, exec };
  asio::awaitable<Result<SandboxInfoList>> all_sandboxes();
  asio::awaitable<Result<std::string>> owner_of(const std::string& id);
  asio::awaitable<void> admin_list(Exchange& exchange, const std::string& admin);
  asio::awaitable<void> admin_act(Exchange& exchange, const std::string& admin,
                                  const std::string& id, AdminAction action);
  asio::awaitable<void> admin_reload_keys(Exchange& exchange, const std::string& admin);
  asio::awaitable<void> ui(Exchange& exchange, const std::vector<std::string>& path);
  // api_exec.cpp
  asio::awaitable<void> exec(Exchange& exchange, const std::string& owner, const std::string& id);
  // api_files.cpp
  asio::awaitable<void> upload(Exchange& exchange, const std::string& owner, const std::string& id,
                               std::string_view query);
  asio::awaitable<void> download(Exchange& exchange, const std::string& owner,
                                 const std::string& id, std::string_view query);

  // The operations behind those handlers that /mcp runs too, answering
  // with the outcome instead of writing it (api_sandboxes.cpp,
  // api_spaces.cpp).
  asio::awaitable<Result<SandboxInfo>> create_sandbox(const std::string& owner,
                                                      api::CreateSandboxRequest request);
  asio::awaitable<Result<SandboxInfoList>> fork_sandbox(const std::string& owner,
                                                        const std::string& id, std::uint32_t n);
  asio::awaitable<Result<SpaceInfo>> freeze_sandbox(const std::string& owner,
                                                    const std::string& id);
  // What a storage quota check is about to add to the key's stored bytes.
  enum class Stored { space, template_ };
  // A Space or template of about `memory_mib` more fits the key's tier
  // (max_spaces counts Spaces; max_spaces_mib Spaces and templates
  // together), else a quota error saying which (api_spaces.cpp). Checked
  // before a freeze, a persistent create (which may be frozen when idle) and
  // a template save, so a key holds at most max_spaces Spaces plus one per
  // persistent sandbox it runs.
  asio::awaitable<Result<void>> check_storage_quota(const std::string& owner,
                                                    std::uint32_t memory_mib,
                                                    const std::string& doing, Stored adding);
  // `secrets`: the values for the Space's secret_hosts (none when it has none).
  asio::awaitable<Result<SandboxInfo>> resume_space(const std::string& owner,
                                                    const std::string& space_id, bool persistent,
                                                    SecretValues secrets = {});
  // Saves sandbox `sandbox_id` (owner's) as a template owned by `owner`
  // (api_templates.cpp); the sandbox runs on. A create from it is
  // create_sandbox with request.template = its name.
  asio::awaitable<Result<TemplateInfo>> save_template(const std::string& owner,
                                                      const std::string& sandbox_id,
                                                      api::CreateTemplateRequest request);
  // Runs a cell or command to its end, events to `sink` (api_exec.cpp).
  asio::awaitable<Result<guest::Exit>> run_exec(const std::string& owner, const std::string& id,
                                                const api::ExecRequest& request,
                                                vmm::ExecEventSink sink);
  // A whole file in or out of the guest, held in memory: for /mcp, whose
  // files travel inside JSON anyway (api_files.cpp). read_file refuses a
  // file over `max_bytes`.
  asio::awaitable<Result<guest::Done>> write_file(const std::string& owner, const std::string& id,
                                                  const std::string& path, std::string_view data);
  asio::awaitable<Result<std::string>> read_file(const std::string& owner, const std::string& id,
                                                 const std::string& path, std::size_t max_bytes);
  // api_ports.cpp: ANY /v1/sandboxes/{id}/ports/{port}/..., and the relay
  // under an operation lease that E2B's ports use too (port_proxy.hpp).
  asio::awaitable<void> port(Exchange& exchange, const std::string& owner,
                             const std::vector<std::string>& path);
  asio::awaitable<Result<void>> relay_port(Exchange& exchange, const std::string& owner,
                                           const std::string& id, PortRequest request);
  // api_mcp.cpp: the MCP streamable HTTP transport at /mcp.
  asio::awaitable<void> mcp(Exchange& exchange, const std::string& owner);
  // mcp_tools.cpp: one tool call, run against the runtime.
  asio::awaitable<mcp::ToolResult> mcp_tool(const std::string& owner, const mcp::ToolCall& call);

  // Shared by the VM operations (api_ops.cpp).
  asio::awaitable<Result<VmLease>> begin_op(const std::string& owner, const std::string& id);
  asio::awaitable<Error> sandbox_died(const std::string& owner, const std::string& id,
                                      std::shared_ptr<vmm::Vm> vm);
  asio::awaitable<Error> agent_failure(const VmLease& lease, const Error& error,
                                       const std::string& doing);

  ApiContext ctx_;
  Metrics metrics_;
  RateLimiter rate_limiter_;
  mcp::Sessions mcp_sessions_;
  std::shared_ptr<e2b::E2b> e2b_;
};

// A sandbox as the API shows it; `vms` says the accelerator and whether its
// VM is paused.
api::Sandbox to_api(const SandboxInfo& info, const VmHost& vms);
api::Space to_api(const SpaceInfo& space);
// A create request with the configuration's defaults, checked: what POST
// /v1/sandboxes and the embedding API's create admit (api_sandboxes.cpp).
Result<SandboxSpec> sandbox_spec(const api::CreateSandboxRequest& request,
                                 const config::HostdConfig& config);
// A sandbox's disk is a qcow2 overlay on the guest image whose virtual size
// is its disk_mib (vmm/root_disk.hpp), so disk_mib below the image's size
// (`image_mib`; 0: unknown, nothing checked) is refused, naming the minimum.
Result<void> check_disk_fits_image(std::uint32_t disk_mib, std::uint32_t image_mib);
// The 429 of a key past its requests per second.
Error requests_quota(const std::string& key_id, std::uint32_t retry_after_s);
// The pool size of a template saved without one (api_templates.cpp).
std::uint32_t default_template_pool_size(const config::HostdConfig& config);
// The caps of the key `owner`'s tier (api_sandboxes.cpp).
const config::TierCaps& tier_caps(const KeyStore& keys, const config::HostdConfig& config,
                                  const std::string& owner);

} // namespace vesicle::hostd
