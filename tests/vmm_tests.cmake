# The VMM driver's tests. Unit tests run without a VM (the agent client
# against the real agent binary on the host); integration tests boot real
# VMs from the images in VESICLE_IMAGES_DIR (default: ${CMAKE_BINARY_DIR}/images,
# made by images/build.sh).
find_package(OpenSSL REQUIRED)

vesicle_test(vmm_json_test SOURCES vmm/json_test.cpp LIBS vesicle_vmm)
vesicle_test(vmm_qmp_test SOURCES vmm/qmp_test.cpp LIBS vesicle_vmm)
vesicle_test(qemu_command_test SOURCES vmm/qemu_command_test.cpp LIBS vesicle_vmm)
vesicle_test(root_disk_test SOURCES vmm/root_disk_test.cpp LIBS vesicle_vmm)
vesicle_test(qcow2_overlay_test SOURCES vmm/qcow2_overlay_test.cpp LIBS vesicle_vmm)
vesicle_test(guest_memory_test SOURCES vmm/guest_memory_test.cpp LIBS vesicle_vmm)
vesicle_test(spare_copy_test SOURCES vmm/spare_copy_test.cpp LIBS vesicle_vmm)
vesicle_test(private_memory_test SOURCES vmm/private_memory_test.cpp LIBS vesicle_vmm)
# A child process holds the files as QEMU does; found through the real /proc.
vesicle_test(overlay_usage_test SOURCES vmm/overlay_usage_test.cpp LIBS vesicle_vmm OpenSSL::Crypto)
# A child dropped while running is killed and reaped off the event loop.
vesicle_test(process_test SOURCES vmm/process_test.cpp LIBS vesicle_vmm OpenSSL::Crypto)

# The agent binary and REPL driver come from guest/; a run can point
# elsewhere with VESICLE_AGENT_BIN and VESICLE_REPL_PY.
if(TARGET vesicle-agent)
  set(vmm_agent_binary $<TARGET_FILE:vesicle-agent>)
else()
  set(vmm_agent_binary "")
endif()
vesicle_test(agent_client_test SOURCES vmm/agent_client_test.cpp LIBS vesicle_vmm OpenSSL::Crypto
             TIMEOUT 300)
if(TARGET vesicle-agent)
  add_dependencies(agent_client_test vesicle-agent)
endif()
set_property(TEST agent_client_test APPEND PROPERTY ENVIRONMENT
             "VESICLE_AGENT_BIN_DEFAULT=${vmm_agent_binary}"
             "VESICLE_REPL_PY_DEFAULT=${CMAKE_SOURCE_DIR}/guest/repl/repl.py")

set(vmm_images_env "VESICLE_IMAGES_DIR_DEFAULT=${CMAKE_BINARY_DIR}/images")
vesicle_test(vm_integration_test SOURCES integration/vm_test.cpp LIBS vesicle_vmm OpenSSL::Crypto
             LABEL integration TIMEOUT 900)
set_property(TEST vm_integration_test APPEND PROPERTY ENVIRONMENT ${vmm_images_env})

add_executable(vm_bench bench/vm_bench.cpp)
target_link_libraries(vm_bench PRIVATE vesicle_vmm Boost::program_options OpenSSL::Crypto)

vesicle_test(snapshot_manifest_test SOURCES vmm/snapshot_manifest_test.cpp
             LIBS vesicle_vmm OpenSSL::Crypto)
# One boot, one save, two restores: a few seconds of VM time under TCG.
vesicle_test(snapshot_integration_test SOURCES integration/snapshot_test.cpp
             LIBS vesicle_vmm OpenSSL::Crypto LABEL integration TIMEOUT 600)
set_property(TEST snapshot_integration_test APPEND PROPERTY ENVIRONMENT ${vmm_images_env})

add_executable(snapshot_bench bench/snapshot_bench.cpp)
target_link_libraries(snapshot_bench PRIVATE vesicle_vmm Boost::program_options OpenSSL::Crypto)

# Full-RAM snapshots: five VMs in a chain (boot, save_full, restore_full, fast
# save, share=off restore, save_full, restore_full twice), a minute or two
# of TCG. They write to /var/tmp (full snapshots belong on a real disk).
vesicle_test(full_snapshot_integration_test SOURCES integration/full_snapshot_test.cpp
             LIBS vesicle_vmm OpenSSL::Crypto LABEL integration TIMEOUT 900)
set_property(TEST full_snapshot_integration_test APPEND PROPERTY ENVIRONMENT ${vmm_images_env})

add_executable(full_snapshot_bench bench/full_snapshot_bench.cpp)
target_link_libraries(full_snapshot_bench PRIVATE vesicle_vmm Boost::program_options OpenSSL::Crypto)

# cgroup leaves: the v2 writer against a directory tree, detection from
# sample mountinfo, and (as root, on a cgroup v1 host like these) real leaves
# whose memory and pids limits stop the probe; no VM.
add_executable(cgroup_probe vmm/cgroup_probe.cpp)
vesicle_test(cgroup_test SOURCES vmm/cgroup_test.cpp LIBS vesicle_vmm)
target_compile_definitions(cgroup_test PRIVATE VESICLE_CGROUP_PROBE="$<TARGET_FILE:cgroup_probe>")
add_dependencies(cgroup_test cgroup_probe)

# A real TCG VM in a cgroup v1 leaf: it lives under Limits::for_qemu and is
# OOM-killed (and reported so) under its guest RAM alone. Two boots.
vesicle_test(cgroup_vm_integration_test SOURCES integration/cgroup_vm_test.cpp LIBS vesicle_vmm
             LABEL integration TIMEOUT 600)
target_compile_definitions(cgroup_vm_integration_test PRIVATE
                           VESICLE_VM_BIN="$<TARGET_FILE:vesicle-vm>")
add_dependencies(cgroup_vm_integration_test vesicle-vm)
set_property(TEST cgroup_vm_integration_test APPEND PROPERTY ENVIRONMENT ${vmm_images_env})

# The jail launcher and the uid pool: a probe started confined, checked from
# outside and from inside, and a real QEMU (stopped at -S, no guest) in a
# jail. Needs root and cgroup v1's pids controller.
add_executable(jail_check vmm/jail_check.cpp)
# Not sanitized: LeakSanitizer cannot run in the jail (no ptrace, no /proc of
# its parent), and the probe checks the jail, not itself.
target_compile_options(jail_check PRIVATE -fno-sanitize=all)
target_link_options(jail_check PRIVATE -fno-sanitize=all)
vesicle_test(jail_test SOURCES vmm/jail_test.cpp LIBS vesicle_vmm OpenSSL::Crypto TIMEOUT 120)
target_compile_definitions(jail_test PRIVATE JAIL_CHECK_PATH="$<TARGET_FILE:jail_check>")
add_dependencies(jail_test jail_check)
# A jailed QEMU boots the guest to its agent (one TCG boot).
vesicle_test(jail_boot_integration_test SOURCES integration/jail_boot_test.cpp
             LIBS vesicle_vmm OpenSSL::Crypto LABEL integration TIMEOUT 300)
set_property(TEST jail_boot_integration_test APPEND PROPERTY ENVIRONMENT ${vmm_images_env})

# The jail-escape probe: a real VM booted the normal way is the target; the
# probe, started through the launcher exactly as a VM's QEMU (vm_jail, a
# leased uid, a cgroup v1 leaf of 64 MiB, a sealed memfd), tries to reach it
# and the host, and must be blocked every time and OOM-killed at the end.
# One TCG boot; needs root and cgroup v1.
add_executable(jail_probe vmm/jail_probe.cpp)
vesicle_test(jail_escape_integration_test SOURCES vmm/jail_escape_test.cpp
             LIBS vesicle_vmm OpenSSL::Crypto LABEL integration TIMEOUT 400)
target_compile_definitions(jail_escape_integration_test PRIVATE
                           JAIL_PROBE_PATH="$<TARGET_FILE:jail_probe>")
add_dependencies(jail_escape_integration_test jail_probe)
set_property(TEST jail_escape_integration_test APPEND PROPERTY ENVIRONMENT ${vmm_images_env})

# Fork snapshots of running VMs (Vm::save_fork_snapshot): a template, a
# share=off parent, two children, a grandchild; six confined QEMU starts.
vesicle_test(fork_snapshot_integration_test SOURCES integration/fork_snapshot_test.cpp
             LIBS vesicle_vmm OpenSSL::Crypto LABEL integration TIMEOUT 600)
set_property(TEST fork_snapshot_integration_test APPEND PROPERTY ENVIRONMENT ${vmm_images_env})
