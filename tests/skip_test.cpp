// The skip rule's own proof (support/skip.hpp), in hidden cases that CTest runs through
// support/expect_exit.cmake: a failure next to a skip fails the run, whatever the order.

#include "support/test_support.hpp"

namespace peft_tests_skip {

TEST_CASE("skip proof: skipped at the top", "[.][skip-proof]") { PEFT_SKIP("deliberately, at the top"); }

TEST_CASE("skip proof: a deliberately broken assertion and then a skip", "[.][skip-proof]") {
  CHECK(1 + 1 == 3);  // deliberately broken
  PEFT_SKIP("deliberately, after a failed assertion");
}

TEST_CASE("skip proof: a passing assertion and then a skip", "[.][skip-proof]") {
  CHECK(1 + 1 == 2);
  PEFT_SKIP("deliberately, after a passed assertion");
}

TEST_CASE("skip proof: a deliberately broken assertion", "[.][skip-proof]") {
  CHECK_THROWS(static_cast<void>(0));  // deliberately broken: nothing throws
}

TEST_CASE("skip proof: passes", "[.][skip-proof]") { CHECK(1 + 1 == 2); }

}  // namespace peft_tests_skip
