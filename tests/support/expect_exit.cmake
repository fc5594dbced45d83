# Runs COMMAND (a '|'-separated list) and fails unless its exit status is EXPECT: a number, or
# "failure" for a failed run (neither 0, passed, nor 77, skipped; Catch exits with the number of
# failed assertions).
#   cmake -DCOMMAND="prog|arg|..." -DEXPECT=77|failure -P expect_exit.cmake
string(REPLACE "|" ";" COMMAND "${COMMAND}")
execute_process(COMMAND ${COMMAND} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
if(EXPECT STREQUAL "failure")
  if(NOT rc MATCHES "^[0-9]+$" OR rc EQUAL 0 OR rc EQUAL 77)
    message(FATAL_ERROR "expected a failure (an exit status other than 0 and 77), got ${rc}:\n${out}${err}")
  endif()
elseif(NOT rc STREQUAL "${EXPECT}")
  message(FATAL_ERROR "expected exit ${EXPECT}, got ${rc}:\n${out}${err}")
endif()
message(STATUS "exit ${rc}, as expected (${EXPECT})")
