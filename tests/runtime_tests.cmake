# The embedding API (vesicle::runtime) with real VMs, in-process. The
# installed package and the example are tested by scripts/test-embed.sh.
vesicle_test(runtime_integration_test SOURCES runtime/runtime_integration_test.cpp
             LIBS vesicle_runtime LABEL integration TIMEOUT 600)
target_compile_definitions(runtime_integration_test PRIVATE
  VESICLE_DEFAULT_IMAGES_DIR="${CMAKE_BINARY_DIR}/images")
target_compile_options(runtime_integration_test PRIVATE -Wno-mismatched-new-delete)
