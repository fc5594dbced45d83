// peft-bench: every benchmark of the project in one program (bench_program.hpp says why). It runs the
// benchmark that its own name names (the build links method_bench, text_bench, ... to it), or the one
// named by its first argument:
//   peft-bench                      the list
//   peft-bench method_bench --help  one benchmark's options
#include "bench_program.hpp"

#include <cstdio>
#include <cstring>
#include <string>

int main(int argc, char** argv) {
  const auto& all = bench::programs();
  const std::string self = argc > 0 ? argv[0] : "peft-bench";
  const auto slash = self.find_last_of('/');
  const std::string base = slash == std::string::npos ? self : self.substr(slash + 1);
  if (auto it = all.find(base); it != all.end()) return it->second.first(argc, argv);
  if (argc > 1) {
    if (auto it = all.find(argv[1]); it != all.end()) return it->second.first(argc - 1, argv + 1);
  }
  const bool help = argc > 1 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"));
  if (argc > 1 && !help) {
    std::fprintf(stderr, "peft-bench: no benchmark named '%s' (peft-bench --help lists them)\n", argv[1]);
    return 2;
  }
  std::FILE* out = help ? stdout : stderr;
  std::fprintf(out, "Usage: peft-bench BENCHMARK [options]   (or BENCHMARK [options]: the build links each name to peft-bench)\n");
  for (const auto& [name, entry] : all) std::fprintf(out, "  %-20s %s\n", name.c_str(), entry.second.c_str());
  return help ? 0 : 2;
}
