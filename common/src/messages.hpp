// Private to the I/O library (mla_io): how its error messages show names and JSON values that
// come from a file, cut short so that a huge or hostile input never makes a huge message.
#pragma once

#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace mla::detail {

/// A name in quotes, at most 120 characters of it: 'w', or 'aaaa...' (5000 characters).
inline std::string quote_name(const std::string& s) {
  constexpr std::size_t kMax = 120;
  if (s.size() <= kMax) return fmt::format("'{}'", s);
  return fmt::format("'{}...' ({} characters)", s.substr(0, kMax), s.size());
}

/// A JSON value in an error message, cut short (never dumped whole: it may be huge).
inline std::string brief(const nlohmann::json& v) {
  if (v.is_structured()) return v.is_array() ? "an array" : "an object";
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 60) + "...";
  return s;
}

}  // namespace mla::detail
