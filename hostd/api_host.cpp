// GET /v1/healthz, GET /v1/capacity, GET /metrics
#include "actors/ask.hpp"
#include "hostd/api.hpp"
#include "hostd/json.hpp"
#include "hostd/smaps_rollup.hpp"
#include "vmm/blocking.hpp"
#include "vmm/qemu.hpp"

namespace vesicle::hostd {

namespace {
const char* accel_name(vmm::Accel accel) {
  return accel == vmm::Accel::kvm ? "kvm" : "tcg";
}
} // namespace

asio::awaitable<void> Api::healthz(Exchange& exchange) {
  api::Health health;
  health.set_status("ok");
  health.set_accel(accel_name(ctx_.vms.accel()));
  health.set_version(kVersion);
  const auto& config = ctx_.config;
  health.set_default_egress(
      config.has_network() && config.network().default_egress() == "open" ? "open" : "off");
  co_await exchange.respond(200, to_json(health));
}

asio::awaitable<std::vector<PoolInfo>> Api::pool_infos() {
  std::vector<PoolInfo> infos;
  for (const auto& pool : ctx_.pools) {
    auto info =
        co_await ask<PoolInfo>(ctx_.system, pool, ctx_.actor_timeout, pool_info_atom::value);
    // A pool that does not answer is shutting down: leave it out.
    if (info) infos.push_back(std::move(*info));
  }
  co_return infos;
}

asio::awaitable<void> Api::capacity(Exchange& exchange) {
  auto room = co_await ask<CapacityInfo>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                         capacity_atom::value);
  if (!room) co_return co_await exchange.respond_error(to_error(room.error()));
  auto pools = co_await pool_infos();
  api::Capacity out;
  out.set_max_sandboxes(room->max_sandboxes);
  out.set_running(room->ready);
  out.set_booting(room->booting);
  out.set_available(room->available());
  out.set_accel(accel_name(ctx_.vms.accel()));
  for (const auto& pool : pools) {
    auto* entry = out.add_pools();
    entry->set_template_(pool.template_name);
    entry->set_vcpus(pool.vcpus);
    entry->set_memory_mib(pool.memory_mib);
    entry->set_template_state(pool.template_state);
    entry->set_ready(pool.ready);
    entry->set_booting(pool.restoring);
    entry->set_in_use(pool.in_use);
    entry->set_min_ready(pool.min_ready);
    entry->set_max(pool.max);
  }
  co_await exchange.respond(200, to_json(out));
}

asio::awaitable<void> Api::metrics(Exchange& exchange) {
  auto room = co_await ask<CapacityInfo>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                         capacity_atom::value);
  if (!room) co_return co_await exchange.respond_error(to_error(room.error()));
  std::string text;
  text += "# HELP vesicle_sandboxes Sandboxes on this host by state.\n";
  text += "# TYPE vesicle_sandboxes gauge\n";
  auto line = [&](const char* state, std::uint32_t value) {
    text +=
        "vesicle_sandboxes{state=\"" + std::string(state) + "\"} " + std::to_string(value) + "\n";
  };
  line("booting", room->booting);
  line("ready", room->ready);
  line("destroying", room->destroying);
  line("dead", room->dead);
  line("frozen", room->frozen);
  text += "# HELP vesicle_max_sandboxes Sandboxes this host may run at once.\n";
  text += "# TYPE vesicle_max_sandboxes gauge\n";
  text += "vesicle_max_sandboxes " + std::to_string(room->max_sandboxes) + "\n";
  text += "# HELP vesicle_vms VMs hostd holds right now.\n";
  text += "# TYPE vesicle_vms gauge\n";
  text += "vesicle_vms " + std::to_string(ctx_.vms.size()) + "\n";
  text += "# HELP vesicle_pool_vms Warm pool VMs hostd holds (waiting or being handed over).\n";
  text += "# TYPE vesicle_pool_vms gauge\n";
  text += "vesicle_pool_vms " + std::to_string(ctx_.vms.pool_size()) + "\n";
  text += "# HELP vesicle_prestarted_vmms QEMUs started ahead for the next fork of a template's "
          "sandboxes (fork landings) or its next pool miss: waiting, or being made.\n";
  text += "# TYPE vesicle_prestarted_vmms gauge\n";
  text += "vesicle_prestarted_vmms{state=\"waiting\"} " +
          std::to_string(ctx_.vms.prestarted_vmms()) + "\n";
  text += "vesicle_prestarted_vmms{state=\"starting\"} " +
          std::to_string(ctx_.vms.landings_starting()) + "\n";
  text += "# HELP vesicle_boot_retries_total Cold boots booted again because their guest's "
          "agent had not answered within boot_stall_timeout_s (RELIABILITY.md).\n";
  text += "# TYPE vesicle_boot_retries_total counter\n";
  text += "vesicle_boot_retries_total " + std::to_string(vmm::qemu::boot_retries()) + "\n";

  auto pools = co_await pool_infos();
  auto per_pool = [&](const char* name, const char* type, const char* help, auto value) {
    text += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    for (const auto& pool : pools)
      text += std::string(name) + "{template=\"" + pool.template_name + "\",vcpus=\"" +
              std::to_string(pool.vcpus) + "\",memory_mib=\"" + std::to_string(pool.memory_mib) +
              "\"} " + std::to_string(value(pool)) + "\n";
  };
  per_pool("vesicle_pool_hits_total", "counter", "Creates served by a waiting pool VM.",
           [](const PoolInfo& p) { return p.hits; });
  per_pool("vesicle_pool_misses_total", "counter",
           "Creates of a pooled size that found no VM waiting.",
           [](const PoolInfo& p) { return p.misses; });
  per_pool("vesicle_pool_replaced_total", "counter",
           "Waiting pool VMs that died and were replaced.",
           [](const PoolInfo& p) { return p.replaced; });
  per_pool("vesicle_pool_ready", "gauge", "Pool VMs waiting for a create.",
           [](const PoolInfo& p) { return p.ready; });
  per_pool("vesicle_pool_restoring", "gauge", "Pool restores in flight.",
           [](const PoolInfo& p) { return p.restoring; });
  per_pool("vesicle_pool_in_use", "gauge", "Live sandboxes that came from the pool's template.",
           [](const PoolInfo& p) { return p.in_use; });
  per_pool("vesicle_pool_template_ready", "gauge", "1 when the template snapshot is usable.",
           [](const PoolInfo& p) { return p.template_state == "ready" ? 1 : 0; });
  text += metrics_.create_seconds.render(
      "vesicle_create_seconds",
      "Time to answer POST /v1/sandboxes, by where the VM came from (pool, restore, boot) "
      "or failed.",
      "source");
  text += metrics_.fork_seconds.render(
      "vesicle_fork_seconds",
      "Time to answer POST /v1/sandboxes/{id}/fork (until every child is ready), by outcome.",
      "outcome");
  text += metrics_.freeze_seconds.render(
      "vesicle_freeze_seconds",
      "Time to answer POST /v1/sandboxes/{id}/freeze (until the Space is on disk), by outcome.",
      "outcome");
  text += metrics_.resume_seconds.render(
      "vesicle_resume_seconds",
      "Time to answer POST /v1/spaces/{id}/resume (until the sandbox is ready), by outcome.",
      "outcome");
  // Each live sandbox's QEMU memory. smaps_rollup walks a VM's page tables
  // (milliseconds each): read them on the blocking pool, not this thread.
  auto sandboxes = co_await all_sandboxes();
  if (!sandboxes) co_return co_await exchange.respond_error(sandboxes.error());
  std::vector<std::pair<std::string, pid_t>> running;
  for (const auto& info : *sandboxes)
    if (info.qemu_pid > 0) running.emplace_back(info.id, info.qemu_pid);
  // A named lambda that copies: built as a temporary inside the co_await
  // with a moved capture, it crashed hostd in free() when the frame
  // destroyed that capture (g++ 12's handling of coroutine temporaries).
  auto read = [running] {
    std::vector<std::pair<std::string, MemoryFootprint>> out;
    for (const auto& [id, pid] : running)
      if (auto footprint = memory_footprint(pid)) out.emplace_back(id, *footprint);
    return out;
  };
  auto footprints = co_await vmm::run_blocking(read);
  text += render_sandbox_memory(footprints);
  text += "# HELP vesicle_api_errors_total Error answers of the REST API, by kind.\n"
          "# TYPE vesicle_api_errors_total counter\n";
  for (const auto& [kind, count] : metrics_.errors)
    text += "vesicle_api_errors_total{kind=\"" + kind + "\"} " + std::to_string(count) + "\n";
  co_await exchange.respond_text(200, "text/plain; version=0.0.4", std::move(text));
}

} // namespace vesicle::hostd
