// The test runner. Tests run with one intra-op thread (Debian's LibTorch 1.13 default; set
// PEFT_TEST_THREADS to change it): their tensors are tiny, and LibTorch 2.x's default of one thread per
// core makes them up to 25x slower when CTest runs several test processes at once.
//
// Exit status: Catch's (the number of failed cases) when anything failed; 77 (CTest's SKIP_RETURN_CODE)
// when nothing failed and every case that ran was skipped by PEFT_SKIP (support/skip.hpp); else 0.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <ATen/Parallel.h>

#include "support/skip.hpp"

#include <algorithm>
#include <cstdlib>

namespace {

/// Counts the assertions of the running case (a PEFT_SKIP after one fails) and the skipped cases.
struct SkipListener : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(const Catch::TestCaseInfo&) override {
    auto& s = peft_test::skip_state();
    s.assertions_in_case = 0;
    s.case_skipped = false;
  }
  // An expression assertion (CHECK, REQUIRE), passing or not, and a message (WARN: not an assertion,
  // left out) start here; the exception assertions (CHECK_THROWS...) only end, below.
  void assertionStarting(const Catch::AssertionInfo& info) override {
    if (info.macroName != Catch::StringRef("WARN")) ++peft_test::skip_state().assertions_in_case;
  }
  bool assertionEnded(const Catch::AssertionStats& stats) override {
    const auto type = stats.assertionResult.getResultType();
    if (type != Catch::ResultWas::Warning && type != Catch::ResultWas::Info) ++peft_test::skip_state().assertions_in_case;
    return true;
  }
  void testCaseEnded(const Catch::TestCaseStats&) override {
    auto& s = peft_test::skip_state();
    ++(s.case_skipped ? s.cases_skipped : s.cases_run);
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(SkipListener)

int main(int argc, char* argv[]) {
  const char* t = std::getenv("PEFT_TEST_THREADS");
  at::set_num_threads(t && *t ? std::max(1, std::atoi(t)) : 1);
  const int failed = Catch::Session().run(argc, argv);
  const auto& s = peft_test::skip_state();
  if (failed != 0) return failed;
  return s.cases_skipped > 0 && s.cases_run == 0 ? 77 : 0;
}
