# Builds a fuzzer with clang (libFuzzer + ASan + UBSan), replays its committed corpus and fuzzes for
# SECONDS more. New interesting inputs go to WORK/new (copy them into the corpus to keep them).
#   cmake -DCLANGXX=clang++ -DPEFT_SOURCE=<repo> -DWORK=<dir> -DSECONDS=20 -DSOURCE=<fuzz .cpp>
#         -DCORPUS=<dir> [-DMAX_LEN=4096] [-DFLAGS="-I..|-L..|-l.."] -P run_fuzz.cmake
# FLAGS ('|'-separated) carry LibTorch's include folders and libraries for targets that need them.
if(NOT MAX_LEN)
  set(MAX_LEN 4096)
endif()
string(REPLACE "|" ";" FLAGS "${FLAGS}")
file(MAKE_DIRECTORY ${WORK}/new)
string(TIMESTAMP t0 "%s")
execute_process(COMMAND ${CLANGXX} -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
                        -DFMT_HEADER_ONLY=1 -Wno-deprecated-declarations -I${PEFT_SOURCE}/include ${SOURCE} ${FLAGS}
                        -o ${WORK}/fuzz
                RESULT_VARIABLE rc ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "building the fuzzer failed:\n${err}")
endif()
string(TIMESTAMP t1 "%s")
math(EXPR build_s "${t1} - ${t0}")
execute_process(COMMAND ${WORK}/fuzz ${WORK}/new ${CORPUS} -max_total_time=${SECONDS} -max_len=${MAX_LEN}
                        -artifact_prefix=${WORK}/
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "the fuzzer found a failure:\n${err}")
endif()
string(REGEX MATCH "Done [0-9]+ runs[^\n]*" summary "${err}")
message(STATUS "fuzz: built in ${build_s} s; ${summary}")
