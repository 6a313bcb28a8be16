# A cluster on this machine (docs/cluster.md): three real hostd nodes in two
# regions behind the real vesicle-gateway, real VMs.
vesicle_test(cluster_integration_test
             SOURCES cluster/cluster_integration_test.cpp cluster/gateway_process.cpp
                     hostd/hostd_process.cpp
                     hostd/http_client.cpp
             LIBS vesicle_hostd LABEL integration TIMEOUT 600)
target_compile_definitions(cluster_integration_test PRIVATE
  HOSTD_BINARY="$<TARGET_FILE:hostd>"
  VESICLE_GATEWAY_BINARY="$<TARGET_FILE:vesicle-gateway>"
  VESICLE_DEFAULT_IMAGES_DIR="${CMAKE_BINARY_DIR}/images")
add_dependencies(cluster_integration_test hostd vesicle-gateway)

# What the gateway adds to a pool-hit create and an exec (not run in CI).
add_executable(cluster_bench bench/cluster_bench.cpp cluster/gateway_process.cpp
                             hostd/hostd_process.cpp hostd/http_client.cpp)
target_link_libraries(cluster_bench PRIVATE Boost::program_options Threads::Threads)

vesicle_test(cluster_unit_test SOURCES cluster/cluster_unit_test.cpp LIBS vesicle_hostd)
