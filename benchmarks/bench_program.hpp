#pragma once
// The benchmarks are subcommands of one program, peft-bench: the library is header-only, so every
// translation unit that includes it compiles the registered methods' code again (about 45 s of a
// benchmark's 60-120 s); one program compiled as two unity translation units pays that twice instead
// of nine times. Each benchmark keeps its own name: the build links `method_bench`, `text_bench`, ...
// to peft-bench, which runs the benchmark its name (argv[0]) or its first argument names:
//   build/benchmarks/method_bench --config bert-base      (as before)
//   build/benchmarks/peft-bench method_bench --config bert-base
// A benchmark's source defines `int run(int argc, char** argv)` in a namespace of its name and
// registers it with PEFT_BENCH_PROGRAM.

#include <map>
#include <string>
#include <utility>

namespace bench {

using ProgramMain = int (*)(int, char**);

/// Every benchmark in this program, by name: its entry point and a line for --help.
inline std::map<std::string, std::pair<ProgramMain, std::string>>& programs() {
  static std::map<std::string, std::pair<ProgramMain, std::string>> all;
  return all;
}

struct RegisterProgram {
  RegisterProgram(const char* name, ProgramMain run, const char* what) { programs()[name] = {run, what}; }
};

}  // namespace bench

/// Registers the benchmark `name` (its source's namespace, holding `int run(int, char**)`).
#define PEFT_BENCH_PROGRAM(name, what) static const ::bench::RegisterProgram name##_program(#name, &name::run, what);
