# What `cmake --install` puts where, and the CMake package it exports:
#   bin/hostd, bin/vesicle-vm
#   include/vesicle/runtime.hpp and the headers it includes (common/,
#     messages/ with the generated .pb.h), under include/vesicle
#   lib/vesicle/*.a, the static libraries behind vesicle::runtime
#   lib/cmake/vesicle/, for find_package(vesicle) -> vesicle::runtime
#   share/vesicle/images/, the guest images' recipes and, in guest/, what
#     they put into the images (images/build.sh builds vmlinuz, initrd.img
#     and rootfs.ext4 from them)
include(CMakePackageConfigHelpers)

set(VESICLE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/vesicle)

install(TARGETS hostd vesicle-vm RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# vesicle::runtime and every library it links, lowest layer last: static
# libraries, so each must be installed for the one above it to link.
install(TARGETS
          vesicle_runtime vesicle_hostd vesicle_sandbox vesicle_bridge vesicle_net
          vesicle_net_logic vesicle_vmm vesicle_api vesicle_wire vesicle_caf_types
          vesicle_common
        EXPORT vesicleTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}/vesicle)
install(EXPORT vesicleTargets NAMESPACE vesicle:: DESTINATION ${VESICLE_CMAKE_DIR})

# The public headers, and those they include (by the same relative paths
# they use in this tree).
set(VESICLE_HEADER_DIR ${CMAKE_INSTALL_INCLUDEDIR}/vesicle)
install(FILES include/vesicle/runtime.hpp DESTINATION ${VESICLE_HEADER_DIR})
file(GLOB common_headers ${PROJECT_SOURCE_DIR}/common/*.hpp)
install(FILES ${common_headers} DESTINATION ${VESICLE_HEADER_DIR}/common)
install(FILES messages/caf_types.hpp ${PROJECT_BINARY_DIR}/messages/api.pb.h
              ${PROJECT_BINARY_DIR}/messages/config.pb.h
        DESTINATION ${VESICLE_HEADER_DIR}/messages)

configure_package_config_file(cmake/vesicleConfig.cmake.in
  ${PROJECT_BINARY_DIR}/vesicleConfig.cmake INSTALL_DESTINATION ${VESICLE_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/vesicleConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/vesicleConfig.cmake
              ${PROJECT_BINARY_DIR}/vesicleConfigVersion.cmake
        DESTINATION ${VESICLE_CMAKE_DIR})

file(GLOB image_recipes ${PROJECT_SOURCE_DIR}/images/*.sh)
install(PROGRAMS ${image_recipes} DESTINATION ${CMAKE_INSTALL_DATADIR}/vesicle/images)
install(FILES images/packages.txt DESTINATION ${CMAKE_INSTALL_DATADIR}/vesicle/images)
# What the recipes put into the images, so the installed recipes can build
# them (README, "Embedding"): the static guest agent and init, the REPL.
set(VESICLE_GUEST_DIR ${CMAKE_INSTALL_DATADIR}/vesicle/images/guest)
foreach(guest_binary vesicle-agent vesicle-init)
  if(TARGET ${guest_binary})
    install(TARGETS ${guest_binary} RUNTIME DESTINATION ${VESICLE_GUEST_DIR})
  endif()
endforeach()
install(FILES guest/repl/repl.py DESTINATION ${VESICLE_GUEST_DIR})
