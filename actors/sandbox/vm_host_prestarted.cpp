// VmHost, pre-started VMMs: QEMUs started before the request that needs
// them, which then skips QEMU's start-up (~50-100 ms of a core under TCG).
// - Fork landings: for each template that sandboxes are forked from, a
//   vmm::ForkLanding waits: QEMUs started ahead on a copy of the
//   template's RAM, which the next fork of a VM restored from that
//   template fills instead of making its own copy; its first children are
//   then those QEMUs. A landing is made for a base template once it is
//   ready and for a saved template after its first fork (demand, not every
//   template saved), and again after each use, once the fork's children
//   are launched.
// - Warm restores: for each template that had a pool miss (a create that
//   found no pool VM waiting), a QEMU started on its snapshot
//   (Driver::prepare_restore) waits for the next one, and is made again
//   after each use. Unlike a pool VM it runs no guest until then: ~20 MiB
//   and no CPU, against a pool VM's ~55 MiB and its idle guest's ticks.
#include "actors/sandbox/vm_host.hpp"

#include <exception>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/ids.hpp"
#include "common/log.hpp"
#include "vmm/blocking.hpp"
#include "vmm/private_memory.hpp"

namespace vesicle {

namespace asio = boost::asio;

namespace {

asio::awaitable<void> pause(asio::any_io_executor executor, std::chrono::milliseconds duration) {
  asio::steady_timer timer(executor, duration);
  boost::system::error_code ignored;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
}

} // namespace

void VmHost::refill_landings() {
  if (settings_.prestarted_vmms == 0) return;
  for (const auto& key : landing_wanted_) {
    if (landings_.count(key) || landings_making_.count(key)) continue;
    auto found = templates_.find(key);
    if (found == templates_.end() || !found->second->memory) continue;
    landings_making_.insert(key);
    asio::co_spawn(executor_, make_landing(key, found->second), asio::detached);
  }
  count_landings();
}

void VmHost::count_landings() {
  std::size_t waiting = warm_restores_.size();
  for (const auto& [key, landing] : landings_)
    waiting += landing->landing ? landing->landing->children.size() : 0;
  prestarted_waiting_ = waiting;
  landings_starting_ = landings_making_.size() + warm_making_.size();
}

// Not in a destructor: a coroutine still suspended at shutdown has its
// frame destroyed after VmHost is gone, and must not touch it then.
asio::awaitable<void> VmHost::make_landing(std::string key,
                                           std::shared_ptr<const vmm::Snapshot> snapshot) {
  try {
    co_await landing_steps(key, std::move(snapshot));
  } catch (const std::exception& e) {
    log::warn("a fork landing was not made", {{"template", key}, {"error", e.what()}});
  }
  landings_making_.erase(key);
  count_landings();
}

asio::awaitable<void> VmHost::landing_steps(std::string key,
                                            std::shared_ptr<const vmm::Snapshot> snapshot) {
  co_await pause(executor_, settings_.landing_delay);
  const auto started = std::chrono::steady_clock::now();
  auto fail = [&key](const Error& error) {
    log::warn("a fork landing was not made; forks of this template copy its RAM themselves",
              {{"template", key}, {"error", error.message()}});
  };
  // The template's data, copied on the blocking pool (~150 ms for 200 MB).
  // (Named apart from fork snapshots' "vesicle-fork-" until a fork fills it.)
  auto copy = [source = snapshot->memory, name = "vesicle-landing-" + key]() {
    return vmm::copy_memory_data(*source, name);
  };
  auto memory = co_await vmm::run_blocking(copy);
  if (!memory) co_return fail(memory.error());
  auto landing = std::make_unique<Landing>();
  std::vector<vmm::VmConfig> configs;
  for (unsigned i = 0; i < std::min(settings_.prestarted_vmms, 8u); ++i) {
    // Pool VMs' egress: a child asking for another gets it at hand-out.
    auto leased = co_await lease_network(settings_.pool_egress_open, {}, {}, true);
    if (!leased) co_return fail(leased.error());
    landing->leases.push_back(std::move(leased.value()));
    configs.push_back(vm_config(random_id("land-"), snapshot->vcpus, snapshot->memory_mib,
                                landing->leases.back().get()));
  }
  const auto dir = settings_.runtime_dir / random_id("landing-");
  auto made = co_await driver_.prepare_fork_landing(*snapshot, std::move(memory).value(), dir,
                                                    std::move(configs));
  if (!made) co_return fail(made.error());
  landing->landing = std::make_unique<vmm::ForkLanding>(std::move(made).value());
  auto current = templates_.find(key);
  if (current == templates_.end() || current->second != snapshot ||
      settings_.prestarted_vmms == 0) {
    // The template was rebuilt or deleted meanwhile.
    co_await discard_landing(std::move(landing));
    co_return;
  }
  log::info("fork landing ready",
            {{"template", key},
             {"vms", static_cast<long long>(landing->landing->children.size())},
             {"ms", static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                               std::chrono::steady_clock::now() - started)
                                               .count())}});
  landings_[key] = std::move(landing);
  count_landings();
}

void VmHost::want_landing(const std::string& key) {
  if (!key.empty() && landing_wanted_.insert(key).second) refill_landings();
}

std::unique_ptr<VmHost::Landing> VmHost::take_landing(const SandboxVm& parent) {
  if (parent.template_key.empty()) return nullptr;
  auto found = landings_.find(parent.template_key);
  if (found == landings_.end()) return nullptr;
  auto landing = std::move(found->second);
  landings_.erase(found);
  count_landings();
  return landing;
}

std::shared_ptr<vmm::GuestMemory> VmHost::take_template_copy(const SandboxVm& vm) {
  auto landing = take_landing(vm);
  if (!landing) return nullptr;
  std::shared_ptr<vmm::GuestMemory> memory;
  if (vm.vm->fits_landing(*landing->landing))
    memory = landing->landing->snapshot.memory;
  else // a QEMU of the landing died or wrote its memory
    log::warn("a fork landing is discarded: it no longer fits a VM of its template",
              {{"template", vm.template_key}});
  asio::co_spawn(executor_, discard_landing(std::move(landing)), asio::detached);
  refill_landings();
  return memory;
}

asio::awaitable<std::optional<VmHost::Acquired>>
VmHost::take_landed_child(const std::string& id, const SandboxSpec& spec,
                          const std::string& base_id) {
  auto found = landed_.find(base_id);
  if (found == landed_.end()) co_return std::nullopt;
  Landing& landed = *found->second;
  auto& children = landed.landing->children;
  if (children.empty()) co_return std::nullopt;
  auto child = std::move(children.front());
  children.erase(children.begin());
  auto network = std::move(landed.leases.front());
  landed.leases.erase(landed.leases.begin());
  Acquired got;
  got.base = fork_snapshots_.find(base_id);
  auto give_up = [&](const Error& error) -> asio::awaitable<std::optional<Acquired>> {
    log::warn("a fork child started ahead was not used; it is restored instead",
              {{"sandbox", id}, {"fork", base_id}, {"error", error.message()}});
    co_await child->discard();
    co_return std::nullopt;
  };
  if (!got.base) co_return co_await give_up(Error::of(ErrorKind::conflict, "the fork is gone"));
  if (network && !network->has_egress(spec.egress, spec.egress_allow, spec.secrets)) {
    auto egress = co_await network->set_egress(network_->system(), spec.egress, spec.egress_allow,
                                               spec.secrets);
    if (!egress) co_return co_await give_up(egress.error());
  }
  auto finished = co_await child->finish();
  if (!finished) co_return co_await give_up(finished.error());
  got.vm = std::move(finished).value();
  got.vm->label(id);
  got.network = std::move(network);
  got.source = "fork";
  co_return got;
}

asio::awaitable<void> VmHost::discard_landing(std::unique_ptr<Landing> landing) {
  if (!landing) co_return;
  if (landing->landing) {
    for (auto& child : landing->landing->children)
      co_await child->discard();
  }
  // The QEMUs are gone: now their slots, then the landing's files.
  landing->leases.clear();
  landing.reset();
}

void VmHost::refill_warm_restore(const std::string& key) {
  if (settings_.prestarted_vmms == 0 || warm_restores_.count(key) || warm_making_.count(key))
    return;
  auto found = templates_.find(key);
  if (found == templates_.end()) return;
  warm_making_.insert(key);
  count_landings();
  asio::co_spawn(executor_, make_warm_restore(key, found->second), asio::detached);
}

// As make_landing.
asio::awaitable<void> VmHost::make_warm_restore(std::string key,
                                                std::shared_ptr<const vmm::Snapshot> snapshot) {
  try {
    co_await warm_restore_steps(key, std::move(snapshot));
  } catch (const std::exception& e) {
    log::warn("no QEMU was started ahead for pool misses",
              {{"template", key}, {"error", e.what()}});
  }
  warm_making_.erase(key);
  count_landings();
}

asio::awaitable<void> VmHost::warm_restore_steps(std::string key,
                                                 std::shared_ptr<const vmm::Snapshot> snapshot) {
  // As a pool refill: after the create that used the last one is answered.
  co_await pause(executor_, settings_.pool_restore_delay);
  WarmRestore warm;
  warm.snapshot = snapshot;
  auto leased = co_await lease_network(settings_.pool_egress_open, {}, {}, true);
  if (!leased) {
    log::warn("no QEMU was started ahead for pool misses",
              {{"template", key}, {"error", leased.error().message()}});
    co_return;
  }
  warm.lease = std::move(leased.value());
  auto config =
      vm_config(random_id("warm-"), snapshot->vcpus, snapshot->memory_mib, warm.lease.get());
  auto prepared = co_await driver_.prepare_restore(*snapshot, std::move(config));
  if (!prepared) {
    log::warn("no QEMU was started ahead for pool misses",
              {{"template", key}, {"error", prepared.error().message()}});
    co_return;
  }
  warm.vm = std::move(prepared.value());
  auto current = templates_.find(key);
  if (current == templates_.end() || current->second != snapshot ||
      settings_.prestarted_vmms == 0) {
    co_await discard_warm_restore(std::move(warm));
    co_return;
  }
  warm_restores_[key] = std::move(warm);
}

asio::awaitable<std::optional<VmHost::Acquired>> VmHost::take_warm_restore(const std::string& id,
                                                                           const SandboxSpec& spec,
                                                                           const std::string& key,
                                                                           std::string source) {
  // A template that had a miss keeps a QEMU waiting for the next.
  auto found = warm_restores_.find(key);
  if (found == warm_restores_.end()) {
    refill_warm_restore(key);
    co_return std::nullopt;
  }
  WarmRestore warm = std::move(found->second);
  warm_restores_.erase(found);
  count_landings();
  refill_warm_restore(key);
  auto give_up = [&](const Error& error) -> asio::awaitable<std::optional<Acquired>> {
    log::warn("a QEMU started ahead was not used; the sandbox is restored instead",
              {{"sandbox", id}, {"template", key}, {"error", error.message()}});
    co_await discard_warm_restore(std::move(warm));
    co_return std::nullopt;
  };
  auto current = templates_.find(key);
  if (current == templates_.end() || current->second != warm.snapshot)
    co_return co_await give_up(Error::of(ErrorKind::conflict, "the template changed"));
  if (warm.lease && !warm.lease->has_egress(spec.egress, spec.egress_allow, spec.secrets)) {
    auto egress = co_await warm.lease->set_egress(network_->system(), spec.egress,
                                                  spec.egress_allow, spec.secrets);
    if (!egress) co_return co_await give_up(egress.error());
  }
  auto finished = co_await warm.vm->finish();
  if (!finished) co_return co_await give_up(finished.error());
  Acquired got;
  got.vm = std::move(finished).value();
  got.vm->label(id);
  got.network = std::move(warm.lease);
  got.source = std::move(source);
  got.template_key = key;
  co_return got;
}

asio::awaitable<bool> VmHost::give_up_a_prestarted_vmm() {
  if (!warm_restores_.empty()) {
    auto warm = std::move(warm_restores_.begin()->second);
    warm_restores_.erase(warm_restores_.begin());
    count_landings();
    co_await discard_warm_restore(std::move(warm));
    co_return true;
  }
  if (!landings_.empty()) {
    auto landing = std::move(landings_.begin()->second);
    landings_.erase(landings_.begin());
    count_landings();
    co_await discard_landing(std::move(landing));
    co_return true;
  }
  co_return false;
}

asio::awaitable<void> VmHost::discard_warm_restore(WarmRestore warm) {
  if (warm.vm) co_await warm.vm->discard();
  warm.lease.reset(); // after its QEMU is gone
}

} // namespace vesicle
