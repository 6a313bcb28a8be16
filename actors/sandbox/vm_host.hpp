// VmHost: the asio side of the sandboxes. It owns every VM (the driver's Vm
// objects and their agent clients live on one asio executor) and does the
// work the sandbox actors must not do on CAF threads: booting, watching for
// the VM's exit, destroying. Results go back to the actor as messages.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including it.
#include <utility>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include "actors/bridge/bridge_actor.hpp"
#include "actors/sandbox/launch_plan.hpp"
#include "actors/sandbox/op_gate.hpp"
#include "actors/sandbox/paused_vms.hpp"
#include "actors/sandbox/pool.hpp"
#include "actors/sandbox/sandbox.hpp"
#include "actors/sandbox/space_store.hpp"
#include "messages/caf_types.hpp"
#include "vmm/fork_snapshots.hpp"
#include "vmm/vmm.hpp"

namespace vesicle {

// The cell a restored pool VM runs before it waits (VmHost::run_first_cell):
// one newline straight to the REPL's output pipe, and a value of None.
inline constexpr const char* kPoolFirstCell = "__import__('os').write(1, b'\\n') and None";

// What every VM shares; the per-sandbox part comes from its SandboxSpec.
struct VmSettings {
  std::filesystem::path images_dir;
  // Per-VM dirs (sockets, disk overlays) and fork snapshots: a real disk,
  // one filesystem (snapshots rename overlays into place).
  std::filesystem::path runtime_dir = "/var/lib/vesicle/run";
  std::filesystem::path shm_dir = "/dev/shm";
  std::chrono::milliseconds boot_timeout{90'000};
  std::chrono::milliseconds boot_stall_timeout{20'000}; // vmm::VmConfig's; 0: never
  std::string qemu_binary = "qemu-system-x86_64";
  unsigned tcg_translation_cache_mib = 64;
  bool tcg_single_thread = true; // vmm::VmConfig's
  // Template snapshots: templates_dir/<key>/ holds the manifest, device
  // state and disk; templates_dir/<key>.mem a copy of its RAM for the next
  // start (VMs map a sealed memfd loaded from it).
  std::filesystem::path templates_dir = "/var/lib/vesicle/templates";
  // A pool restore waits this long before it starts: a refill follows every
  // take, and the restore's start-up (its files, spawning QEMU) would
  // otherwise hold this thread while the create that took the VM is still
  // being answered.
  std::chrono::milliseconds pool_restore_delay{25};
  // The egress pool VMs wait with: hostd's default (open where the host
  // has an uplink), so handing one to a create that asks for the default
  // needs no firewall work; any other egress is set at hand-out. A waiting
  // VM runs only the agent and the template's imports, no user code.
  bool pool_egress_open = false;
  // A copy of each template's RAM kept ready for forks (vmm/spare_copy.hpp),
  // for templates without a fork landing (prestarted_vmms 0).
  bool spare_fork_copies = true;
  // QEMUs started ahead, per template forked from, to be the next fork's
  // children (vm_host_prestarted.cpp); 0: none.
  unsigned prestarted_vmms = 1;
  // A fork of a VM restored share=off (a pool sandbox, a fork child) that
  // has written at least this many MiB over its snapshot restarts it on
  // the fork's snapshot, which holds those pages, instead of letting it run
  // on with its own copies of them (vm_host_fork.cpp); negative: never.
  std::int64_t fork_parent_restart_mib = 64;
  // How long a landing waits before it starts, after the fork or template
  // that asked for it: the fork's children and the pool's refills first.
  std::chrono::milliseconds landing_delay{300};
  // This install's egress CA (PEM), which a sandbox with secrets trusts
  // (guest_trust.hpp); empty where hostd has none. Set by attach_network.
  std::string egress_ca_pem;
  // Spaces (frozen sandboxes): on a real disk, see space_store.hpp.
  std::filesystem::path spaces_dir = "/var/lib/vesicle/spaces";
  // How every VM's QEMU is confined; null: not at all.
  std::shared_ptr<const vmm::VmConfinement> confinement;
  // hostd's deadlines on calls to each VM's agent.
  vmm::AgentDeadlines agent_deadlines;
};

// Answers a fork or merge step on the executor: the parent's QEMU pid
// afterwards (0 when it is not known yet), or why the step failed.
using ForkStepDone = std::function<void(Result<std::int32_t> qemu_pid)>;
// Answers a freeze on the executor: the Space written, or why not (and
// whether the sandbox's VM still runs).
using FreezeDone = std::function<void(Result<SpaceInfo> space)>;
// Answers open_space: done, or why the Space cannot be resumed.
using SpaceOpened = std::function<void(Result<void> opened)>;
// Answers save_template on the executor: the template written (its sizes
// filled in), or why not.
using TemplateSaved = std::function<void(Result<TemplateInfo> saved)>;

class VmHost {
public:
  VmHost(boost::asio::any_io_executor executor, vmm::Driver& driver, VmSettings settings);
  VmHost(const VmHost&) = delete;
  VmHost& operator=(const VmHost&) = delete;

  // -- called from actors (any thread): the work is posted to the executor --

  // The sandboxes' operation gates (op_gate.hpp), which need no posting:
  // each sandbox actor adds its own; hostd enters them on its executor.
  const std::shared_ptr<OpGates>& op_gates() const { return op_gates_; }
  // Why sandbox `id`'s VM is paused by the host (paused_vms.hpp); empty
  // while it runs. Any thread.
  std::string paused(const std::string& id) const { return paused_->why(id); }

  // Gives sandbox `id` a VM as `plan` says. Answers `sandbox` with
  // vm_booted (QEMU's pid, and "pool", "restore" or "boot") or
  // vm_boot_failed (why), and later, whenever the VM's process exits for
  // any reason, with vm_exited (how).
  void launch(std::string id, SandboxSpec spec, LaunchPlan plan, sandbox_actor sandbox);

  // The name of a template's files: its name, size and a fingerprint of the
  // guest images it is made from.
  std::string template_key(const TemplateSpec& spec) const;

  // Checks the template's snapshot, or builds it when it is missing or
  // fails its check (which is logged). Answers `pool` with template_atom.
  void prepare_template(TemplateSpec spec, pool_actor pool);

  // Restores one VM for the pool from the template `key`. Answers `pool`
  // with vm_booted / vm_boot_failed (carrying `pool_vm_id`), and with
  // vm_exited if it dies while waiting.
  void restore_for_pool(std::string key, std::string pool_vm_id, pool_actor pool);

  // Destroys a waiting pool VM.
  void discard(std::string pool_vm_id);

  // Fork, step one: makes the running VM of sandbox `parent_id` the
  // immutable fork snapshot `base_id` (its RAM file and disk become the
  // children's shared copy-on-write base) and calls `done` as soon as the
  // snapshot exists, then resumes the parent as one more copy of it while
  // the children are launched. The parent must be idle (no agent call in
  // flight) and held; once resumed, its actor hears vm_replaced (the new
  // pid) and hold(false). If the save fails `done` says why and the parent
  // runs on as before; only if it cannot be resumed from the saved snapshot
  // does it die (its actor hears vm_exited).
  void fork_parent(std::string parent_id, std::string base_id, ForkStepDone done);
  // Fork, step two is launch() with LaunchPlan::fork_base for each child.
  // Then this, once every child's launch has resolved: from here on the
  // snapshot lives exactly as long as a VM restored from it (or a snapshot
  // made from one of those, whose disk it backs).
  void release_fork(std::string base_id);
  // merge_into: the VM of sandbox `winner_id` becomes `parent_id`'s (it
  // answers to the parent's hostname and machine-id from now on) and the
  // parent's old VM is destroyed. Exit notices go to `parent` afterwards.
  void merge(std::string parent_id, sandbox_actor parent, std::string winner_id, ForkStepDone done);

  // Freezes sandbox `id` into the Space `space` (its id, owner, spec,
  // reason filled in): saves the whole VM (device state, every RAM page) and
  // its disk, rebased onto the base image so no fork snapshot or
  // template is needed to resume it, into the spaces directory, and ends
  // the VM (its RAM is freed; its network slot and fork snapshot are let
  // go). The sandbox must be idle and held. On failure no Space is left and
  // the VM runs on as before when it can (resumed from what was saved if
  // the save had already ended it); if it cannot, its actor hears vm_exited.
  void freeze(std::string id, SpaceInfo space, FreezeDone done);
  // A resume, step one: reads the Space's VM snapshot and checks it (sizes,
  // checksums, that it fits this host's images and network), off the
  // executor. On success it is kept for launch() with LaunchPlan::space_id;
  // whoever does not launch it calls forget_space.
  void open_space(SpaceInfo space, SpaceOpened done);
  void forget_space(std::string space_id);

  // Saved templates (template_store.hpp), in saved_templates_dir().
  // Saves the running VM of sandbox `id` as the template `info` (its
  // template_id, name, owner, global, recipe_hash and pool_size filled in):
  // its memory, processes and files, as a fork snapshot (Vm::save_fork_snapshot:
  // the VM is paused only while its state is copied, and runs on as the
  // sandbox's, its record unchanged), with the disk rebased onto the base
  // image and the RAM written to disk so the template stands on its own and
  // outlives hostd, and the `template` file written last. The sandbox must
  // be idle and held; the caller releases the hold. On failure no template
  // is left. The template is restorable at once: pools
  // (TemplateSpec::saved_dir) and launch::FromSavedTemplate find it by id.
  void save_template(std::string id, TemplateInfo info, TemplateSaved done);
  // Drops a deleted template's snapshot (VMs restored from it keep their
  // own hold on its memory).
  void forget_template(std::string template_id);
  std::filesystem::path saved_templates_dir() const { return settings_.templates_dir / "saved"; }

  // Kills the VM of sandbox `id` if it runs and removes its files; answers
  // `sandbox` with vm_reclaimed (if it is set). Safe for an id without a VM.
  void reclaim(std::string id, sandbox_actor sandbox);

  // -- on the executor only ---------------------------------------------------

  // The running VM of a sandbox, or null. Holders keep it alive (but not
  // running) past a reclaim, so an exec in flight fails cleanly.
  std::shared_ptr<vmm::Vm> find(const std::string& id) const;
  std::size_t size() const { return vms_.size(); }
  // Fork snapshots that exist (in use by a VM, or by a fork in progress).
  std::size_t fork_snapshots() const;
  std::size_t pool_size() const { return pool_vms_.size(); }
  // QEMUs waiting (in fork landings and for pool misses), and those being
  // started. Any thread.
  std::size_t prestarted_vmms() const { return prestarted_waiting_; }
  std::size_t landings_starting() const { return landings_starting_; }
  // Destroys every VM now (hostd's shutdown, after the actors are done).
  void destroy_all();

  vmm::Accel accel() const { return driver_.accel(); }
  const std::string& images_fingerprint() const { return images_fingerprint_; }

  // The base image's size in MiB (0 if it cannot be read): the smallest
  // disk_mib, since a sandbox's disk is a qcow2 overlay on it whose virtual
  // size is its disk_mib (vmm/root_disk.hpp). Any thread.
  std::uint32_t root_disk_mib() const;

  // With network leases every VM gets a slot (its egress from the spec)
  // before it boots, released after its process has exited. Without, VMs
  // have no network device. Set once, before the first boot and before
  // template_key() (templates with and without a NIC differ).
  // `egress_ca_pem`: the CA sandboxes with secrets trust (BridgeManager::
  // egress_ca_pem; empty without one).
  void attach_network(std::shared_ptr<net::NetworkLeases> network, std::string egress_ca_pem) {
    network_ = std::move(network);
    settings_.egress_ca_pem = std::move(egress_ca_pem);
  }
  const boost::asio::any_io_executor& executor() const { return executor_; }

private:
  // Who hears of a VM's exit: its sandbox once it has one, else its pool.
  struct ExitTarget {
    sandbox_actor sandbox;
    pool_actor pool;
    std::string pool_vm_id;
  };
  // A sandbox's VM and what it holds: its network slot (released after the
  // VM is destroyed) and the fork snapshot it was restored from.
  struct SandboxVm {
    std::shared_ptr<vmm::Vm> vm;
    std::shared_ptr<ExitTarget> target;
    std::shared_ptr<net::NetworkLease> network;
    std::shared_ptr<vmm::ForkSnapshot> base;
    // The machine-id it was given (empty for a cold-booted VM until its
    // first fork): kept when the parent of a fork is resumed.
    std::string machine_id;
    // The template it was restored from (its forks can use that template's
    // landing); empty for any other VM.
    std::string template_key;
  };
  struct PoolVm {
    std::shared_ptr<vmm::Vm> vm;
    std::shared_ptr<ExitTarget> target;
    std::shared_ptr<net::NetworkLease> network; // null without networking
    std::string template_key;
  };

  // A VM for a new sandbox and what it holds, as acquire() got it.
  struct Acquired {
    std::shared_ptr<vmm::Vm> vm;
    std::shared_ptr<ExitTarget> target; // set only for an adopted pool VM
    std::shared_ptr<net::NetworkLease> network;
    std::shared_ptr<vmm::ForkSnapshot> base;
    std::string machine_id;   // kept from a Space; empty: a new one
    std::string source;       // pool, restore, boot, fork, space
    std::string template_key; // see SandboxVm
  };
  boost::asio::awaitable<Result<Acquired>> acquire(const std::string& id, const SandboxSpec& spec,
                                                   const LaunchPlan& plan);
  boost::asio::awaitable<Result<std::optional<Acquired>>>
  adopt_pool_vm(const std::string& pool_vm_id, const SandboxSpec& spec);
  boost::asio::awaitable<Result<Acquired>> restore_fork_child(const std::string& id,
                                                              const SandboxSpec& spec,
                                                              const std::string& base_id,
                                                              Acquired got);
  boost::asio::awaitable<Result<Acquired>> resume_space(const std::string& id,
                                                        const std::string& space_id, Acquired got);
  // resume_space for a Space frozen from a fork snapshot: its RAM (the
  // sealed memfd open_space loaded) mapped share=off, like a template's.
  boost::asio::awaitable<Result<Acquired>>
  resume_mapped_space(const std::string& id, SpaceInfo space, vmm::Snapshot snapshot, Acquired got);
  boost::asio::awaitable<Result<std::optional<Acquired>>> restore_template(const std::string& id,
                                                                           const SandboxSpec& spec,
                                                                           const std::string& key,
                                                                           Acquired got);
  boost::asio::awaitable<Result<Acquired>> cold_boot(const std::string& id, const SandboxSpec& spec,
                                                     Acquired got);
  boost::asio::awaitable<void> run_sandbox_vm(std::string id, SandboxSpec spec, LaunchPlan plan,
                                              sandbox_actor sandbox);
  boost::asio::awaitable<void> run_template(TemplateSpec spec, pool_actor pool);
  // A saved template's check, as the base template's (run_template).
  boost::asio::awaitable<void> check_saved_template(TemplateSpec spec, pool_actor pool);
  boost::asio::awaitable<Result<std::shared_ptr<const vmm::Snapshot>>>
  open_saved_template(const std::string& template_id);
  boost::asio::awaitable<Result<std::shared_ptr<const vmm::Snapshot>>>
  build_template(const TemplateSpec& spec);
  // A template's snapshot as templates_ keeps it: with a spare copy of its
  // RAM for forks started (VmSettings::spare_fork_copies).
  std::shared_ptr<const vmm::Snapshot> as_template(vmm::Snapshot snapshot, const std::string& key);
  boost::asio::awaitable<void> run_pool_vm(std::string key, std::string pool_vm_id,
                                           pool_actor pool);
  boost::asio::awaitable<void> run_fork_parent(std::string parent_id, std::string base_id,
                                               ForkStepDone done);
  // The fork of a VM restored share=off (a pool sandbox, a fork's child):
  // Vm::save_fork_snapshot copies its RAM and disk while it is paused; it
  // runs on as the parent, its record unchanged, unless it wrote
  // fork_parent_restart_mib or more: then it stays paused until the fork's
  // children are started (release_fork) and is restarted on the snapshot.
  boost::asio::awaitable<void> fork_running_parent(std::string parent_id, std::string base_id,
                                                   SandboxVm before, ForkStepDone done);
  // A fork's parent, its old QEMU ended, goes on as one more VM restored
  // from the fork's snapshot `base`, keeping its network slot, hostname
  // and machine-id; its record and sandbox learn of the new VM, and its
  // hold ends. On failure the sandbox is told its VM exited.
  boost::asio::awaitable<void> resume_parent_from(std::string parent_id, std::string base_id,
                                                  sandbox_actor parent, SandboxVm before,
                                                  std::shared_ptr<vmm::ForkSnapshot> base);
  // Pre-started VMMs (vm_host_prestarted.cpp). Fork landings: QEMUs started
  // for the next fork of a VM restored from a template.
  struct Landing {
    std::unique_ptr<vmm::ForkLanding> landing;
    std::vector<std::shared_ptr<net::NetworkLease>>
        leases; // one per child, null without networking
  };
  // Starts a landing for each template that wants one and has none.
  void refill_landings();
  // Template `key` keeps a landing from now on (it was forked from).
  void want_landing(const std::string& key);
  boost::asio::awaitable<void> make_landing(std::string key,
                                            std::shared_ptr<const vmm::Snapshot> snapshot);
  boost::asio::awaitable<void> landing_steps(std::string key,
                                             std::shared_ptr<const vmm::Snapshot> snapshot);
  // The landing of `parent`'s template, taken out (null: none waits).
  // Whether it fits is the save's own check (Vm::fits_landing, a pagemap
  // read per waiting QEMU), done once on a fork's path.
  std::unique_ptr<Landing> take_landing(const SandboxVm& parent);
  // A filled landing's next waiting child for fork `base_id`, finished into
  // sandbox `id`'s VM; nullopt when none waits or it failed (the caller
  // restores the child the usual way).
  boost::asio::awaitable<std::optional<Acquired>>
  take_landed_child(const std::string& id, const SandboxSpec& spec, const std::string& base_id);
  // The RAM copy of the landing of `vm`'s template, for a save that is not
  // a fork (a freeze, a saved template): the landing is given up (its
  // QEMUs killed) and a new one made. Null when none fits.
  std::shared_ptr<vmm::GuestMemory> take_template_copy(const SandboxVm& vm);
  // Kills a landing's QEMUs, then lets their network slots go.
  boost::asio::awaitable<void> discard_landing(std::unique_ptr<Landing> landing);
  // A QEMU started on a template's snapshot for its next pool miss
  // (vm_host_prestarted.cpp).
  struct WarmRestore {
    std::unique_ptr<vmm::PreparedRestore> vm;
    std::shared_ptr<net::NetworkLease> lease;
    std::shared_ptr<const vmm::Snapshot> snapshot;
  };
  // Starts one for template `key` unless one waits or is being made.
  void refill_warm_restore(const std::string& key);
  boost::asio::awaitable<void> make_warm_restore(std::string key,
                                                 std::shared_ptr<const vmm::Snapshot> snapshot);
  boost::asio::awaitable<void> warm_restore_steps(std::string key,
                                                  std::shared_ptr<const vmm::Snapshot> snapshot);
  // The waiting QEMU of template `key`, finished into sandbox `id`'s VM
  // (source `source`); nullopt when none waits or it failed (the caller
  // restores the usual way).
  boost::asio::awaitable<std::optional<Acquired>> take_warm_restore(const std::string& id,
                                                                    const SandboxSpec& spec,
                                                                    const std::string& key,
                                                                    std::string source);
  boost::asio::awaitable<void> discard_warm_restore(WarmRestore warm);
  boost::asio::awaitable<void> run_merge(std::string parent_id, sandbox_actor parent,
                                         std::string winner_id, ForkStepDone done);
  // Sends `vm` a fresh identity without waiting for the answer; returns the
  // machine-id given (a new one when `machine_id` is empty).
  boost::asio::awaitable<Result<std::string>>
  prepare_handout(std::shared_ptr<vmm::Vm> vm, const std::string& id, const SandboxSpec& spec,
                  const std::string& source, std::string machine_id);
  boost::asio::awaitable<Result<void>> trust_egress_ca(vmm::Vm& vm, const std::string& source);
  boost::asio::awaitable<Result<std::string>> refresh_identity(vmm::Vm& vm, std::string hostname,
                                                               std::string machine_id);
  boost::asio::awaitable<void> run_freeze(std::string id, SpaceInfo space, FreezeDone done);
  // Makes a freeze's saved VM a Space: disk rebased onto the base image,
  // manifest updated, `space` file written, directory moved into place.
  boost::asio::awaitable<Result<void>> finish_space(const vmm::Snapshot& saved, SpaceInfo& space);
  boost::asio::awaitable<void> run_open_space(SpaceInfo space, SpaceOpened done);
  boost::asio::awaitable<void> run_save_template(std::string id, TemplateInfo info,
                                                 TemplateSaved done);
  // Makes a fork snapshot a saved template's: its disk rebased onto the
  // base image, its RAM written to `memory_file` (which `saved` then names),
  // checksums and manifest written; fills in the sizes.
  boost::asio::awaitable<Result<void>> make_standalone(vmm::Snapshot& saved, TemplateInfo& info,
                                                       const std::filesystem::path& memory_file);
  boost::asio::awaitable<Result<std::optional<Acquired>>>
  restore_saved_template(const std::string& id, const SandboxSpec& spec,
                         const std::string& template_id, Acquired got);
  boost::asio::awaitable<void> watch_exit(std::shared_ptr<vmm::Vm> vm,
                                          std::shared_ptr<ExitTarget> target);
  vmm::VmConfig vm_config(const std::string& id, std::uint32_t vcpus, std::uint32_t memory_mib,
                          const net::NetworkLease* network) const;
  // Refreshes a restored pool VM's identity and runs a cell that shows
  // nothing (kPoolFirstCell), so that its sandbox's first exec finds that path
  // translated. An Error when the agent failed (the VM is unusable); else
  // why the cell raised, or "" when it ran.
  boost::asio::awaitable<Result<std::string>> run_first_cell(vmm::Vm& vm,
                                                             const std::string& pool_vm_id);
  // A slot with this egress, or null when hostd runs without networking.
  // When every slot is taken, a pre-started QEMU gives its slot up, unless
  // the slot is `for_prestarted` itself.
  boost::asio::awaitable<Result<std::shared_ptr<net::NetworkLease>>>
  lease_network(bool egress, std::vector<std::string> allow, SecretValues secrets = {},
                bool for_prestarted = false);
  // Ends one waiting pre-started QEMU (a warm restore first, else a
  // landing) and waits until its slot is free; false when none waits.
  boost::asio::awaitable<bool> give_up_a_prestarted_vmm();

  boost::asio::any_io_executor executor_;
  vmm::Driver& driver_;
  VmSettings settings_;
  std::string images_fingerprint_;
  std::map<std::string, SandboxVm> vms_;
  vmm::ForkSnapshots fork_snapshots_;
  std::map<std::string, PoolVm> pool_vms_;
  std::map<std::string, std::shared_ptr<const vmm::Snapshot>> templates_;
  // Spaces checked by open_space and waiting for their launch.
  struct OpenedSpace {
    SpaceInfo info;
    vmm::Snapshot snapshot;
  };
  std::map<std::string, OpenedSpace> opened_spaces_;
  // Templates forks want a landing for; the ready landings, and those being
  // made; the waiting children of filled ones, by fork id.
  std::set<std::string> landing_wanted_;
  std::map<std::string, std::unique_ptr<Landing>> landings_;
  std::set<std::string> landings_making_;
  std::map<std::string, std::unique_ptr<Landing>> landed_;
  // Forks whose parent waits, paused, to be restarted on the snapshot
  // until the fork's children are started (release_fork sets it): its
  // restore would otherwise share the cores with theirs.
  struct ParentRestart {
    explicit ParentRestart(boost::asio::any_io_executor executor) : wakeup(std::move(executor)) {}
    boost::asio::steady_timer wakeup; // cancelled when the children are started
    bool children_started = false;
  };
  std::map<std::string, std::shared_ptr<ParentRestart>> parents_to_restart_;
  // Pool misses' pre-started QEMUs, by template key, and those being made.
  std::map<std::string, WarmRestore> warm_restores_;
  std::set<std::string> warm_making_;
  // The figures above for other threads; count_landings() updates them.
  std::atomic<std::size_t> prestarted_waiting_{0};
  std::atomic<std::size_t> landings_starting_{0};
  void count_landings();
  // Runs the blocking template checks.
  boost::asio::thread_pool checker_{1};
  std::shared_ptr<net::NetworkLeases> network_;
  std::shared_ptr<OpGates> op_gates_ = std::make_shared<OpGates>();
  std::shared_ptr<PausedVms> paused_ = std::make_shared<PausedVms>();
};

} // namespace vesicle
