#pragma once
// Number checks for the programs' command lines, with messages a person can read: CLI11's own
// PositiveNumber prints its range as "0.000000 to 1797693134862315708145...".

#include <CLI/CLI.hpp>

#include <cmath>
#include <string>

namespace cli_checks {

namespace detail {
inline CLI::Validator number_check(bool strict, const char* what) {
  return CLI::Validator(
      [strict, what](std::string& s) -> std::string {
        double v = 0;
        std::size_t used = 0;
        try {
          v = std::stod(s, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used != s.size() || s.empty() || !std::isfinite(v)) return "expected a number, received '" + s + "'";
        if (strict ? !(v > 0) : !(v >= 0)) return std::string("expected ") + what + ", received " + s;
        return {};
      },
      what);
}
}  // namespace detail

/// > 0
inline const CLI::Validator Positive = detail::number_check(true, "a positive number");
/// >= 0
inline const CLI::Validator NonNegative = detail::number_check(false, "a number >= 0");

}  // namespace cli_checks
