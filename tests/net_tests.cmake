# The network layer's tests (net/). Unit: parsing, policy and rule
# text, no root needed. Integration: real namespaces, links and nftables
# against a "test internet" of namespaces the tests make and remove (needs
# root; never sends a packet anywhere else). The integration binaries share
# one resource lock: they use the same test addresses on the host.

find_package(OpenSSL REQUIRED)

vesicle_test(net_logic_test
  SOURCES net/dns_test.cpp net/peek_test.cpp net/allowlist_test.cpp net/dns_policy_test.cpp
          net/ruleset_test.cpp net/http_gate_test.cpp net/secrets_test.cpp
  LIBS vesicle_net_logic OpenSSL::SSL OpenSSL::Crypto
  LABEL unit)

add_library(vesicle_testnet STATIC net/testnet.cpp net/probe.cpp)
target_link_libraries(vesicle_testnet PUBLIC vesicle_net OpenSSL::SSL OpenSSL::Crypto GTest::gtest)
target_compile_definitions(vesicle_testnet PUBLIC
  VESICLE_TESTNET_SERVERS="${CMAKE_SOURCE_DIR}/scripts/testnet/servers.py"
  VESICLE_TESTNET_MAKE_PACKAGES="${CMAKE_SOURCE_DIR}/scripts/testnet/make_packages.py")

vesicle_test(net_slot_test SOURCES net/slot_test.cpp LIBS vesicle_testnet
  LABEL integration TIMEOUT 600)
vesicle_test(net_egress_test SOURCES net/egress_test.cpp LIBS vesicle_testnet
  LABEL integration TIMEOUT 600)
set_tests_properties(net_slot_test net_egress_test PROPERTIES RESOURCE_LOCK vesicle_netns)

# Not a test: run by hand or scripts/bench.sh (needs root).
add_executable(net_bench bench/net_bench.cpp)
target_link_libraries(net_bench PRIVATE vesicle_testnet)

# Egress end to end: the real hostd with real VMs, its network section
# pointed at the test internet (needs root and the guest images).
vesicle_test(net_hostd_egress_test
  SOURCES net/hostd_egress_test.cpp hostd/hostd_process.cpp hostd/http_client.cpp
  LIBS vesicle_testnet vesicle_api Boost::headers
  LABEL integration TIMEOUT 900)
target_compile_definitions(net_hostd_egress_test PRIVATE
  HOSTD_BINARY="$<TARGET_FILE:hostd>"
  VESICLE_DEFAULT_IMAGES_DIR="${CMAKE_BINARY_DIR}/images")
add_dependencies(net_hostd_egress_test hostd)
set_tests_properties(net_hostd_egress_test PROPERTIES RESOURCE_LOCK vesicle_netns)

vesicle_test(net_hostd_config_test SOURCES net/network_config_test.cpp LIBS vesicle_hostd
  LABEL unit)

# The script hostd runs in a sandbox with secrets (actors/sandbox/
# guest_trust.cpp, built here alone so the test needs none of the actors).
vesicle_test(net_guest_trust_test
  SOURCES net/guest_trust_test.cpp ${PROJECT_SOURCE_DIR}/actors/sandbox/guest_trust.cpp
  LIBS vesicle_net_logic LABEL unit)

# Not a test: real-VM throughput through NAT and the allowlist proxy
# (scripts/bench.sh runs it; needs root and the guest images).
add_executable(net_vm_bench bench/net_vm_bench.cpp hostd/hostd_process.cpp hostd/http_client.cpp)
target_link_libraries(net_vm_bench PRIVATE vesicle_testnet vesicle_api Boost::headers)

vesicle_test(net_bridge_actor_test SOURCES net/bridge_actor_test.cpp
  LIBS vesicle_bridge vesicle_testnet LABEL integration TIMEOUT 300)
set_tests_properties(net_bridge_actor_test PROPERTIES RESOURCE_LOCK vesicle_netns)
