# Builds the fuzzer with clang (libFuzzer + ASan + UBSan), replays the committed corpus and fuzzes for
# SECONDS more. New interesting inputs go to WORK/new (copy them into tests/fuzz/corpus to keep them).
file(MAKE_DIRECTORY ${WORK}/new)
execute_process(COMMAND ${CLANGXX} -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
                        -I${PEFT_SOURCE}/include ${PEFT_SOURCE}/tests/fuzz/safetensors_header_fuzz.cpp -o ${WORK}/fuzz
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "building the fuzzer failed:\n${err}")
endif()
execute_process(COMMAND ${WORK}/fuzz ${WORK}/new ${PEFT_SOURCE}/tests/fuzz/corpus -max_total_time=${SECONDS}
                        -max_len=4096 -artifact_prefix=${WORK}/
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "the fuzzer found a failure:\n${err}")
endif()
string(REGEX MATCH "Done [0-9]+ runs[^\n]*" summary "${err}")
message(STATUS "fuzz: ${summary}")
