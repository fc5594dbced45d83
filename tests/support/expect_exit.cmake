# Runs COMMAND (a '|'-separated list) and fails unless its exit status is EXPECT.
#   cmake -DCOMMAND="prog|arg|..." -DEXPECT=77 -P expect_exit.cmake
string(REPLACE "|" ";" COMMAND "${COMMAND}")
execute_process(COMMAND ${COMMAND} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
if(NOT rc STREQUAL "${EXPECT}")
  message(FATAL_ERROR "expected exit ${EXPECT}, got ${rc}:\n${out}${err}")
endif()
message(STATUS "exit ${rc}, as expected")
