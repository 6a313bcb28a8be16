# The VMM driver's tests. Unit tests run without a VM (the agent client
# against the real agent binary on the host); integration tests boot real
# VMs from the images in VESICLE_IMAGES_DIR (default: ${CMAKE_BINARY_DIR}/images,
# made by images/build.sh).
find_package(OpenSSL REQUIRED)

vesicle_test(vmm_json_test SOURCES vmm/json_test.cpp LIBS vesicle_vmm)
vesicle_test(qemu_command_test SOURCES vmm/qemu_command_test.cpp LIBS vesicle_vmm)
vesicle_test(root_disk_test SOURCES vmm/root_disk_test.cpp LIBS vesicle_vmm)

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
