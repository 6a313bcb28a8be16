// E2B's persistent snapshots onto vesicle's saved templates: a snapshot is
// a template saved from the E2B sandbox's running VM (memory, disk and
// processes), named by the snapshot's id, owned by the caller's key.
//
//   POST /sandboxes/{id}/snapshots {name?}  save_template; the sandbox runs on
//   GET /snapshots?sandboxID&name&limit&nextToken   the key's own templates
//   DELETE /templates/{snapshotID}           delete the template (404 if none)
//   POST /v2/sandboxes {templateID: snapshotID}   e2b_control.cpp's create
//
// Like E2B's, a snapshot is reusable (any number of sandboxes from one) and
// outlives its sandbox; another key cannot see or use it (its creates get
// the template's not-found). E2B's ids carry a tag ("name:default"); vesicle
// templates have none, so ":default" is dropped wherever an id arrives and
// the id handed out is the bare template name.
// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <algorithm>

#include "actors/ask.hpp"
#include "common/ids.hpp"
#include "common/log.hpp"
#include "hostd/api.hpp"
#include "hostd/e2b.hpp"

namespace vesicle::hostd::e2b {

namespace {

constexpr std::string_view kDefaultTag = ":default";

std::string respond_json(const SnapshotInfo& info) {
  return print(info, true);
}

asio::awaitable<void> respond_error(Exchange& exchange, const Error& error) {
  co_await exchange.respond(status_of(error), error_body(status_of(error), error.message()));
}

SnapshotInfo snapshot_info(const std::string& name) {
  SnapshotInfo out;
  out.set_snapshotid(name);
  out.add_names(name);
  return out;
}

} // namespace

std::string template_name(std::string_view id) {
  if (id.size() > kDefaultTag.size() && id.substr(id.size() - kDefaultTag.size()) == kDefaultTag)
    id.remove_suffix(kDefaultTag.size());
  return std::string(id);
}

asio::awaitable<void> E2b::snapshot(Exchange& exchange, const std::string& owner,
                                    const std::string& id) {
  auto body = co_await exchange.read_json_body();
  if (!body) co_return co_await respond_error(exchange, body.error());
  SnapshotBody request;
  if (auto parsed = parse(*body, request); !parsed)
    co_return co_await respond_error(exchange, parsed.error());
  auto sandbox = owned(owner, id);
  if (!sandbox)
    co_return co_await exchange.respond(404, error_body(404, "sandbox \"" + id + "\" not found"));
  if (sandbox->vid.empty() || sandbox->changing)
    co_return co_await exchange.respond(
        409, error_body(409, "sandbox \"" + id +
                                 "\" is paused (or being paused or resumed); connect to it "
                                 "before snapshotting it"));
  // An unnamed snapshot gets a name of its own: templates are found by name.
  api::CreateTemplateRequest spec;
  spec.set_name(request.has_name() ? template_name(request.name())
                                   : "snapshot-" + random_id("", 16));
  auto saved = co_await api_.save_template(owner, sandbox->vid, std::move(spec));
  if (!saved) co_return co_await respond_error(exchange, saved.error());
  sandbox->snapshots.push_back(saved->template_id);
  log::info("e2b snapshot saved",
            {{"e2b", sandbox->id}, {"template", saved->template_id}, {"name", saved->name}});
  co_await exchange.respond(201, respond_json(snapshot_info(saved->name)));
}

asio::awaitable<void> E2b::list_snapshots(Exchange& exchange, const std::string& owner,
                                          std::string_view query) {
  const auto& ctx = api_.ctx_;
  auto templates = co_await ask<TemplateInfoList>(ctx.system, ctx.registry, ctx.actor_timeout,
                                                  templates_atom::value, owner);
  if (!templates) co_return co_await respond_error(exchange, to_error(templates.error()));
  // ?sandboxID=: the snapshots taken of that E2B sandbox (its vesicle
  // sandbox changes at each pause and connect, so hostd keeps the list).
  std::optional<std::vector<std::string>> from;
  if (auto wanted = query_param(query, "sandboxID"); wanted && !wanted->empty()) {
    auto sandbox = owned(owner, *wanted);
    from = sandbox ? sandbox->snapshots : std::vector<std::string>{};
  }
  std::optional<std::string> name;
  if (auto wanted = query_param(query, "name"); wanted && !wanted->empty())
    name = template_name(*wanted);
  std::vector<const TemplateInfo*> matches;
  for (const auto& info : *templates) {
    // Snapshots are this key's own templates saved from a sandbox.
    if (info.owner != owner || info.from_sandbox.empty()) continue;
    if (from && std::find(from->begin(), from->end(), info.template_id) == from->end()) continue;
    if (name && info.name != *name) continue;
    matches.push_back(&info);
  }
  auto page = page_of(query);
  if (!page) co_return co_await respond_error(exchange, page.error());
  std::string out = page_json(exchange, matches.size(), *page, [&](std::size_t i) {
    return respond_json(snapshot_info(matches[i]->name));
  });
  co_await exchange.respond(200, std::move(out));
}

asio::awaitable<void> E2b::delete_snapshot(Exchange& exchange, const std::string& owner,
                                           const std::string& id) {
  const auto& ctx = api_.ctx_;
  const auto name = template_name(id);
  auto done = co_await ask<done_atom>(ctx.system, ctx.registry, ctx.actor_timeout,
                                      delete_template_atom::value, owner, name);
  if (!done) co_return co_await respond_error(exchange, to_error(done.error()));
  co_await exchange.respond_no_content();
}

} // namespace vesicle::hostd::e2b
