# Every program answers --help and refuses a bad flag or a bad number with one readable line (no
# stack trace, no abort, no 300-digit range).
#   cmake -DPROGRAMS="name=path|..." -DNUMBER_FLAGS="name=--flag|..." -P check_cli.cmake
string(REPLACE "|" ";" PROGRAMS "${PROGRAMS}")
string(REPLACE "|" ";" NUMBER_FLAGS "${NUMBER_FLAGS}")
set(problems "")

# Runs `path args...` and expects a refusal: non-zero exit, `named` in the output, one readable line or
# three (CLI11's message and its hint), no stack trace.
function(expect_refusal name path named)
  execute_process(COMMAND ${path} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
  set(all "${out}${err}")
  string(REGEX MATCHALL "\n" lines "${all}")
  list(LENGTH lines n)
  set(bad "")
  if(rc EQUAL 0 OR NOT all MATCHES "${named}")
    set(bad "exit ${rc}, '${named}' not named")
  elseif(all MATCHES "terminate called|Aborted|Exception raised from|frame #|179769313")
    set(bad "a stack trace or an unreadable message")
  elseif(n GREATER 3)
    set(bad "${n} lines")
  endif()
  if(bad)
    set(problems "${problems}\n  - ${name} ${ARGN}: ${bad}:\n${all}" PARENT_SCOPE)
  else()
    message(STATUS "${name} ${ARGN}: refused (exit ${rc}): ${all}")
  endif()
endfunction()

foreach(entry IN LISTS PROGRAMS)
  string(REPLACE "=" ";" kv "${entry}")
  list(GET kv 0 name)
  list(GET kv 1 path)
  set(path_${name} "${path}")
  execute_process(COMMAND ${path} --help RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
  if(NOT rc EQUAL 0 OR NOT "${out}${err}" MATCHES "Usage:")
    set(problems "${problems}\n  - ${name} --help: exit ${rc}, no usage:\n${out}${err}")
  else()
    message(STATUS "${name} --help: usage, exit 0")
  endif()
  expect_refusal(${name} ${path} "no-such-flag" --no-such-flag)
endforeach()

foreach(entry IN LISTS NUMBER_FLAGS)
  string(REPLACE "=" ";" kv "${entry}")
  list(GET kv 0 name)
  list(GET kv 1 flag)
  foreach(value -3 abc)
    expect_refusal(${name} ${path_${name}} "${flag}" ${flag} ${value})
  endforeach()
endforeach()

# peft-cli without a subcommand says what it expects.
if(DEFINED path_peft-cli)
  expect_refusal(peft-cli ${path_peft-cli} "expected a subcommand")
endif()

# peft-bench (every benchmark in one program) runs the benchmark its first argument names, and
# without one lists them.
if(DEFINED path_peft-bench)
  execute_process(COMMAND ${path_peft-bench} lora_forward_bench --help RESULT_VARIABLE rc OUTPUT_VARIABLE out
                  ERROR_VARIABLE err TIMEOUT 60)
  if(NOT rc EQUAL 0 OR NOT "${out}${err}" MATCHES "Usage:.*--hidden")
    set(problems "${problems}\n  - peft-bench lora_forward_bench --help: exit ${rc}, not that benchmark's usage:\n${out}${err}")
  endif()
  execute_process(COMMAND ${path_peft-bench} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
  if(rc EQUAL 0 OR NOT "${out}${err}" MATCHES "BENCHMARK.*method_bench")
    set(problems "${problems}\n  - peft-bench without a benchmark: exit ${rc}, no list:\n${out}${err}")
  endif()
endif()

if(problems)
  message(FATAL_ERROR "command lines:${problems}")
endif()
