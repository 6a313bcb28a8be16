# A cluster on this machine (docs/cluster.md): three real hostd nodes in two
# regions behind the real vesicle-gateway, real VMs.
vesicle_test(cluster_integration_test
             SOURCES cluster/cluster_integration_test.cpp hostd/hostd_process.cpp
                     hostd/http_client.cpp
             LIBS vesicle_hostd LABEL integration TIMEOUT 600)
target_compile_definitions(cluster_integration_test PRIVATE
  HOSTD_BINARY="$<TARGET_FILE:hostd>"
  VESICLE_GATEWAY_BINARY="$<TARGET_FILE:vesicle-gateway>"
  VESICLE_DEFAULT_IMAGES_DIR="${CMAKE_BINARY_DIR}/images")
add_dependencies(cluster_integration_test hostd vesicle-gateway)
