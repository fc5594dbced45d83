#pragma once
// Skipping a Catch case that cannot run here (no CUDA device, no downloaded data), so that CTest reports
// it skipped and never hides a failure:
//   TEST_CASE("...") {
//     if (!torch::cuda::is_available()) PEFT_SKIP("no CUDA device, this test needs one");
//     ...
// A skip must come before the case's first assertion: a skip after one is itself a failure (a case
// that checked half its subjects and skipped the rest would otherwise read as skipped). The runner
// (tests/main.cpp) exits 77, which CTest takes as skipped (SKIP_RETURN_CODE), only when no case failed
// and every case that ran was skipped; a failure anywhere is a failure.

#include <catch2/catch.hpp>

#include <sstream>
#include <string>

namespace peft_test {

/// What the runner counts: assertions of the running case, cases run and cases skipped.
struct SkipState {
  long assertions_in_case = 0;
  bool case_skipped = false;
  long cases_run = 0, cases_skipped = 0;
};
inline SkipState& skip_state() {
  static SkipState s;
  return s;
}

/// Marks the running case skipped (a failure instead when it has made assertions already).
inline void skip_case(const std::string& reason) {
  auto& s = skip_state();
  if (s.assertions_in_case > 0) {
    FAIL("PEFT_SKIP after " << s.assertions_in_case << " assertion(s) of this case (a skip belongs at the top of a case): "
                            << reason);
  }
  s.case_skipped = true;
  WARN("PEFT_SKIPPED: " << reason);
}

}  // namespace peft_test

/// Skips the running case (see above) and returns from it.
#define PEFT_SKIP(reason)                                                   \
  do {                                                                      \
    std::ostringstream peft_skip_reason_;                                   \
    peft_skip_reason_ << reason;                                            \
    ::peft_test::skip_case(peft_skip_reason_.str());                        \
    return;                                                                 \
  } while (0)
