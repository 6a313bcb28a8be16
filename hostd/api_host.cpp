// GET /v1/healthz, GET /v1/capacity, GET /metrics
#include "hostd/api.hpp"
#include "hostd/caf_bridge.hpp"
#include "hostd/json.hpp"

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
  co_await exchange.respond(200, to_json(health));
}

asio::awaitable<void> Api::capacity(Exchange& exchange) {
  auto room = co_await ask<CapacityInfo>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                         capacity_atom::value);
  if (!room) co_return co_await exchange.respond_error(api_error(room.error(), ctx_.system));
  api::Capacity out;
  out.set_max_sandboxes(room->max_sandboxes);
  out.set_running(room->ready);
  out.set_booting(room->booting);
  out.set_available(room->available());
  out.set_accel(accel_name(ctx_.vms.accel()));
  co_await exchange.respond(200, to_json(out));
}

asio::awaitable<void> Api::metrics(Exchange& exchange) {
  auto room = co_await ask<CapacityInfo>(ctx_.system, ctx_.registry, ctx_.actor_timeout,
                                         capacity_atom::value);
  if (!room) co_return co_await exchange.respond_error(api_error(room.error(), ctx_.system));
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
  text += "# HELP vesicle_max_sandboxes Sandboxes this host may run at once.\n";
  text += "# TYPE vesicle_max_sandboxes gauge\n";
  text += "vesicle_max_sandboxes " + std::to_string(room->max_sandboxes) + "\n";
  text += "# HELP vesicle_vms VMs hostd holds right now.\n";
  text += "# TYPE vesicle_vms gauge\n";
  text += "vesicle_vms " + std::to_string(ctx_.vms.size()) + "\n";
  co_await exchange.respond_text(200, "text/plain; version=0.0.4", std::move(text));
}

} // namespace vesicle::hostd
