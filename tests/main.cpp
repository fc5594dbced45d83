// The test runner. Tests run with one intra-op thread (Debian's LibTorch 1.13 default; set
// PEFT_TEST_THREADS to change it): their tensors are tiny, and LibTorch 2.x's default of one thread per
// core makes them up to 25x slower when CTest runs several test processes at once.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>

int main(int argc, char* argv[]) {
  const char* t = std::getenv("PEFT_TEST_THREADS");
  at::set_num_threads(t && *t ? std::max(1, std::atoi(t)) : 1);
  return Catch::Session().run(argc, argv);
}
