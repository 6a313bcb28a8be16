# The fuzz targets in the normal build and the ASan build: every seed and
# every input that once crashed a target (tests/fuzz/regressions) is fed
# to it again by one GoogleTest binary. Each target's entry point is renamed
# (fuzz_check.hpp), so all of them link into it.
include(${CMAKE_CURRENT_LIST_DIR}/targets.cmake)
set(fuzz_replay_sources ${CMAKE_CURRENT_LIST_DIR}/replay_test.cpp)
foreach(target ${vesicle_fuzz_targets})
  set(source ${CMAKE_CURRENT_LIST_DIR}/${target}.cpp)
  set_source_files_properties(${source} PROPERTIES COMPILE_DEFINITIONS
                              VESICLE_FUZZ_ENTRY=${target}_one_input)
  list(APPEND fuzz_replay_sources ${source})
endforeach()
vesicle_test(fuzz_replay_test SOURCES ${fuzz_replay_sources} LIBS vesicle_hostd)
target_compile_definitions(fuzz_replay_test
                           PRIVATE VESICLE_FUZZ_DIR="${CMAKE_CURRENT_LIST_DIR}")
