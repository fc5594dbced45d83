# Builds and runs a consumer project: MODE=add_subdirectory or find_package (after cmake --install).
file(REMOVE_RECURSE ${WORK})
set(src ${PEFT_SOURCE}/tests/consumers/${MODE})
# No build type (no optimisation): what this proves is the package's CMake interface (targets, include
# folders, links, the C++ standard); the code is compiled optimised everywhere else, and the consumer's
# one translation unit compiles in about half the time of a Release build.
set(args -S ${src} -B ${WORK}/build -G ${GENERATOR} -DCMAKE_BUILD_TYPE=)
# PREFIX_PATH is the parent build's CMAKE_PREFIX_PATH with '|' for ';' (a list cannot travel as one
# argument); it reaches the consumer through the environment, where CMake reads ':'-separated paths.
string(REPLACE "|" ":" prefix_env "${PREFIX_PATH}")
if(MODE STREQUAL "find_package")
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${PEFT_BUILD} --prefix ${WORK}/prefix RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "cmake --install failed: ${rc}")
  endif()
  set(prefix_env "${WORK}/prefix:${prefix_env}")
else()
  list(APPEND args -DPEFT_SOURCE=${PEFT_SOURCE})
endif()
set(ENV{CMAKE_PREFIX_PATH} "${prefix_env}")
foreach(step IN ITEMS configure build run)
  if(step STREQUAL "configure")
    set(cmd ${CMAKE_COMMAND} ${args})
  elseif(step STREQUAL "build")
    set(cmd ${CMAKE_COMMAND} --build ${WORK}/build -j 2)
  else()
    set(cmd ${WORK}/build/consumer)
  endif()
  execute_process(COMMAND ${cmd} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc)
    message(FATAL_ERROR "${MODE} consumer: ${step} failed (${rc})\n${out}\n${err}")
  endif()
endforeach()
message(STATUS "${out}")
