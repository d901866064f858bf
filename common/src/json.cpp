#include "mla/json.hpp"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <type_traits>
#include <vector>

#include <fmt/format.h>

#include "messages.hpp"

namespace mla {

nlohmann::json parse_json(const std::string& text, const std::string& origin,
                          const JsonOptions& options) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  // Called by nlohmann for every token: it tracks the keys of each open object.
  auto watch_keys = [&](int /*depth*/, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (ev == E::object_start) {
      keys.emplace_back();
    } else if (ev == E::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == E::key && !keys.empty() && duplicate.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second) duplicate = k;
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = options.unique_keys ? nlohmann::json::parse(text, watch_keys) : nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // parse_error for bad syntax, out_of_range for numbers like 1e999: both are bad input.
    std::string detail = e.what();
    if (detail.size() > 200) detail = detail.substr(0, 200) + "...";
    const std::string what = options.what.empty() ? "" : options.what + " is ";
    throw InputError(fmt::format("{}: {}not well-formed JSON ({})", origin, what, detail));
  }
  if (!duplicate.empty()) {
    throw InputError(
        fmt::format("{}: {} names {} twice", origin, options.what, detail::quote_name(duplicate)));
  }
  return j;
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError(fmt::format("{}: cannot open file", path));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::json load_json_file(const std::string& path, const JsonOptions& options) {
  return parse_json(read_text_file(path), path, options);
}

namespace {

template <class T>
T convert(const nlohmann::json& v, const std::string& key, const std::string& origin) {
  auto bad = [&](const char* kind) {
    std::string got = v.dump();
    if (got.size() > 80)
      got = got.substr(0, 77) + "...";  // a huge token must not make a huge message
    return InputError(fmt::format("{}: field '{}' is not {} (got {})", origin, key, kind, got));
  };
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) throw bad("a boolean");
    return v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    using lim = std::numeric_limits<T>;
    const char* kind =
        std::is_unsigned_v<T> ? "a non-negative integer in range" : "an integer in range";
    if (v.is_number_unsigned()) {
      const auto u = v.get<std::uint64_t>();
      if (u > static_cast<std::uint64_t>(lim::max())) throw bad(kind);
      return static_cast<T>(u);
    }
    if (v.is_number_integer()) {
      const auto i = v.get<std::int64_t>();
      if (i < 0 && std::is_unsigned_v<T>) throw bad(kind);
      if (i < static_cast<std::int64_t>(lim::min())) throw bad(kind);
      if (i > 0 && static_cast<std::uint64_t>(i) > static_cast<std::uint64_t>(lim::max()))
        throw bad(kind);
      return static_cast<T>(i);
    }
    // 4096.0 is an integer written as a float; 4096.5 is not. Range-check before casting:
    // casting an out-of-range double to an integer is undefined behaviour.
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (std::floor(d) != d) throw bad("an integer");
      if (!(d >= static_cast<double>(lim::min()) && d <= static_cast<double>(lim::max()) * 0.999))
        throw bad(kind);
      return static_cast<T>(d);
    }
    throw bad("an integer");
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) throw bad("a number");
    return v.get<T>();
  } else {
    static_assert(std::is_same_v<T, std::string>, "json_field: unsupported type");
    if (!v.is_string()) throw bad("a string");
    return v.get<std::string>();
  }
}

}  // namespace

template <class T>
T json_field(const nlohmann::json& j, const std::string& key, const std::string& origin) {
  if (!j.is_object()) throw InputError(fmt::format("{}: expected a JSON object", origin));
  auto it = j.find(key);
  if (it == j.end() || it->is_null())
    throw InputError(fmt::format("{}: field '{}' is missing", origin, key));
  return convert<T>(*it, key, origin);
}

template <class T>
std::optional<T> json_optional(const nlohmann::json& j, const std::string& key,
                               const std::string& origin) {
  if (!j.is_object()) throw InputError(fmt::format("{}: expected a JSON object", origin));
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  return convert<T>(*it, key, origin);
}

#define MLA_JSON_INSTANTIATE(T)                                                            \
  template T json_field<T>(const nlohmann::json&, const std::string&, const std::string&); \
  template std::optional<T> json_optional<T>(const nlohmann::json&, const std::string&,    \
                                             const std::string&);
MLA_JSON_INSTANTIATE(bool)
MLA_JSON_INSTANTIATE(int)
MLA_JSON_INSTANTIATE(long)
MLA_JSON_INSTANTIATE(unsigned long)
MLA_JSON_INSTANTIATE(double)
MLA_JSON_INSTANTIATE(float)
MLA_JSON_INSTANTIATE(std::string)
#undef MLA_JSON_INSTANTIATE

}  // namespace mla
