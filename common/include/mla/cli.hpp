/// @file cli.hpp
/// @brief Option validators with short messages, shared by every program (CLI11).
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace mla {

/// @addtogroup core
/// @{

/// Accepts a number greater than zero. (CLI11 2.1's PositiveNumber prints its range as a
/// 300-digit number; this says what is wrong in words.)
inline const CLI::Validator kPositive(
    [](std::string& s) -> std::string {
      double v = 0;
      if (!CLI::detail::lexical_cast(s, v)) return "must be a number, got '" + s + "'";
      return v > 0 ? std::string() : "must be positive, got " + s;
    },
    "POSITIVE");

/// Accepts a number greater than or equal to zero.
inline const CLI::Validator kNonNegative(
    [](std::string& s) -> std::string {
      double v = 0;
      if (!CLI::detail::lexical_cast(s, v)) return "must be a number, got '" + s + "'";
      return v >= 0 ? std::string() : "must not be negative, got " + s;
    },
    "NON-NEGATIVE");

/// @}

}  // namespace mla
