# Guest agent tests: the real vesicle-agent binary on the host in its test
# mode (--channel-fd --no-init), with guest/repl/repl.py from the source tree
# and the system python3.
vesicle_test(agent_parts_test
  SOURCES guest/agent_parts_test.cpp
  LIBS vesicle_agent_parts vesicle_wire
  LABEL unit)

vesicle_test(agent_test
  SOURCES guest/agent_test.cpp guest/agent_harness.cpp
  LIBS vesicle_agent_parts vesicle_wire
  LABEL unit
  TIMEOUT 300)
target_compile_definitions(agent_test PRIVATE
  VESICLE_AGENT_BINARY="$<TARGET_FILE:vesicle-agent>"
  VESICLE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
add_dependencies(agent_test vesicle-agent)

# The agent as PID 1 of a real microVM. Needs the images: run
# images/build.sh --build-dir <build> (default output <build>/images) or set
# VESICLE_IMAGES to a folder holding vmlinuz, initrd.img and rootfs.ext4.
vesicle_test(agent_vm_test
  SOURCES guest/agent_vm_test.cpp guest/agent_harness.cpp
  LIBS vesicle_agent_parts vesicle_wire
  LABEL integration
  TIMEOUT 600)
target_compile_definitions(agent_vm_test PRIVATE
  VESICLE_AGENT_BINARY="$<TARGET_FILE:vesicle-agent>"
  VESICLE_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
  VESICLE_DEFAULT_IMAGES="${CMAKE_BINARY_DIR}/images")

# The identity refresh (RefreshIdentity) in the host test mode.
vesicle_test(agent_identity_test
  SOURCES guest/identity_test.cpp guest/agent_harness.cpp
  LIBS vesicle_agent_parts vesicle_wire
  LABEL unit
  TIMEOUT 300)
target_compile_definitions(agent_identity_test PRIVATE
  VESICLE_AGENT_BINARY="$<TARGET_FILE:vesicle-agent>"
  VESICLE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
add_dependencies(agent_identity_test vesicle-agent)

# The identity refresh in a real microVM booted through the QEMU driver,
# from images built with this tree's agent (images/build.sh --build-dir
# <build>, default output <build>/images) or VESICLE_IMAGES_DIR.
find_package(OpenSSL REQUIRED)
vesicle_test(identity_vm_test
  SOURCES guest/identity_vm_test.cpp
  LIBS vesicle_vmm OpenSSL::Crypto
  LABEL integration
  TIMEOUT 600)
set_property(TEST identity_vm_test APPEND PROPERTY ENVIRONMENT
  "VESICLE_IMAGES_DIR_DEFAULT=${CMAKE_BINARY_DIR}/images")

vesicle_test(grow_fs_test SOURCES guest/grow_fs_test.cpp LIBS vesicle_agent_parts
             LABEL unit)
