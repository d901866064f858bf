#include "mla/config.hpp"

#include <cmath>

#include "mla/json.hpp"

namespace mla {

namespace {

/// Sizes above this are not a model anyone can run here; refusing them keeps later products of
/// sizes (heads × head_dim × ...) far from overflowing.
constexpr std::size_t kMaxSize = std::size_t(1) << 31;

/// A nested value is reported by kind, not dumped: json_field's message prints the value, and a
/// huge or deeply nested one would make that message (or its recursion) unreasonable.
void reject_structured(const nlohmann::json& j, const std::string& key, const std::string& origin,
                       const char* kind) {
  auto it = j.find(key);
  if (it != j.end() && it->is_structured())
    throw InputError(origin + ": field '" + key + "' is " +
                     (it->is_array() ? "an array" : "an object") + ", not " + kind);
}

std::size_t positive_size(const nlohmann::json& j, const std::string& key,
                          const std::string& origin) {
  reject_structured(j, key, origin, "a positive integer");
  // An integer written as a float (4096.0) is converted by json_field with a cast, which is
  // undefined behaviour beyond the integer's range (found by fuzz_config: "hidden_size": 38e46;
  // tests/fuzz/regressions/config-float-size-overflow.bin). Refuse those here first.
  if (auto it = j.find(key); it != j.end() && it->is_number_float()) {
    const double d = it->get<double>();
    if (d > double(kMaxSize))
      throw InputError(origin + ": field '" + key + "' = " + it->dump() +
                       " is implausibly large (limit " + std::to_string(kMaxSize) + ")");
  }
  const auto v = json_field<unsigned long>(j, key, origin);
  if (v == 0) throw InputError(origin + ": field '" + key + "' must be positive (got 0)");
  if (v > kMaxSize)
    throw InputError(origin + ": field '" + key + "' = " + std::to_string(v) +
                     " is implausibly large (limit " + std::to_string(kMaxSize) + ")");
  return std::size_t(v);
}

double finite_number(const nlohmann::json& j, const std::string& key, const std::string& origin) {
  reject_structured(j, key, origin, "a number");
  const double v = json_field<double>(j, key, origin);
  if (!std::isfinite(v)) throw InputError(origin + ": field '" + key + "' is not finite");
  return v;
}

double optional_number(const nlohmann::json& j, const std::string& key, const std::string& origin,
                       double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return finite_number(j, key, origin);
}

YarnScaling parse_yarn(const nlohmann::json& rs, const std::string& origin) {
  const std::string o = origin + ": rope_scaling";
  YarnScaling y;
  y.factor = finite_number(rs, "factor", o);
  if (!(y.factor > 0))
    throw InputError(o + ": field 'factor' must be positive (got " + std::to_string(y.factor) +
                     ")");
  y.original_max_position_embeddings = positive_size(rs, "original_max_position_embeddings", o);
  y.beta_fast = optional_number(rs, "beta_fast", o, 32.0);
  y.beta_slow = optional_number(rs, "beta_slow", o, 1.0);
  y.mscale = optional_number(rs, "mscale", o, 1.0);
  y.mscale_all_dim = optional_number(rs, "mscale_all_dim", o, 0.0);
  // YaRN interpolates fully below beta_slow rotations and not at all above beta_fast; the
  // ramp between them needs beta_fast > beta_slow > 0 (both feed a logarithm).
  if (!(y.beta_slow > 0)) throw InputError(o + ": field 'beta_slow' must be positive");
  if (!(y.beta_fast > y.beta_slow))
    throw InputError(o + ": field 'beta_fast' (" + std::to_string(y.beta_fast) +
                     ") must be larger than 'beta_slow' (" + std::to_string(y.beta_slow) + ")");
  if (y.mscale < 0) throw InputError(o + ": field 'mscale' must not be negative");
  if (y.mscale_all_dim < 0) throw InputError(o + ": field 'mscale_all_dim' must not be negative");
  return y;
}

}  // namespace

MlaConfig MlaConfig::from_json(const nlohmann::json& j, const std::string& origin) {
  if (!j.is_object()) throw InputError(origin + ": config is not a JSON object");
  MlaConfig c;
  c.hidden_size = positive_size(j, "hidden_size", origin);
  c.num_attention_heads = positive_size(j, "num_attention_heads", origin);
  c.num_hidden_layers = positive_size(j, "num_hidden_layers", origin);
  c.kv_lora_rank = positive_size(j, "kv_lora_rank", origin);
  c.qk_nope_head_dim = positive_size(j, "qk_nope_head_dim", origin);
  c.qk_rope_head_dim = positive_size(j, "qk_rope_head_dim", origin);
  c.v_head_dim = positive_size(j, "v_head_dim", origin);
  c.max_position_embeddings = positive_size(j, "max_position_embeddings", origin);

  // RoPE rotates pairs of features, so the rotated part has an even width.
  if (c.qk_rope_head_dim % 2 != 0)
    throw InputError(origin + ": field 'qk_rope_head_dim' must be even (got " +
                     std::to_string(c.qk_rope_head_dim) + "): RoPE rotates pairs of features");

  // q_lora_rank must be written out: null means "no query compression", which is a real choice
  // (DeepSeek-V2-Lite), not a default to guess.
  if (!j.contains("q_lora_rank"))
    throw InputError(origin +
                     ": field 'q_lora_rank' is missing (null for a layer without query "
                     "compression, else a positive integer)");
  if (!j.at("q_lora_rank").is_null()) c.q_lora_rank = positive_size(j, "q_lora_rank", origin);

  c.rope_theta = finite_number(j, "rope_theta", origin);
  if (!(c.rope_theta > 1))
    throw InputError(origin + ": field 'rope_theta' must be larger than 1 (got " +
                     std::to_string(c.rope_theta) + ")");
  c.rms_norm_eps = finite_number(j, "rms_norm_eps", origin);
  if (!(c.rms_norm_eps > 0))
    throw InputError(origin + ": field 'rms_norm_eps' must be positive (got " +
                     std::to_string(c.rms_norm_eps) + ")");

  if (auto rs = j.find("rope_scaling"); rs != j.end() && !rs->is_null()) {
    if (!rs->is_object()) throw InputError(origin + ": field 'rope_scaling' is not an object");
    // Older configs say "type", newer ones "rope_type"; if both are there they must agree.
    const std::string o = origin + ": rope_scaling";
    reject_structured(*rs, "type", o, "a string");
    reject_structured(*rs, "rope_type", o, "a string");
    const auto type = json_optional<std::string>(*rs, "type", o);
    const auto rope_type = json_optional<std::string>(*rs, "rope_type", o);
    if (type && rope_type && *type != *rope_type)
      throw InputError(o + ": fields 'type' (" + *type + ") and 'rope_type' (" + *rope_type +
                       ") disagree");
    if (!type && !rope_type) throw InputError(o + ": field 'type' is missing");
    const std::string t = type ? *type : *rope_type;
    if (t == "yarn") {
      c.yarn = parse_yarn(*rs, origin);
    } else if (t != "default") {  // "default" is Hugging Face's name for plain RoPE
      std::string shown = t.size() > 40 ? t.substr(0, 40) + "..." : t;
      throw InputError(o + ": type '" + shown + "' is not supported (only 'yarn')");
    }
  }
  return c;
}

namespace {

/// Run a JSON parse, turning every nlohmann exception into an InputError. mla::parse_json only
/// converts parse_error, but a number too large for a double ("1e999") throws out_of_range
/// (found by fuzz_config; tests/fuzz/regressions/config-number-overflow.bin).
template <class F>
nlohmann::json guarded_parse(F&& parse, const std::string& origin) {
  try {
    return parse();
  } catch (const nlohmann::json::exception& e) {
    std::string detail = e.what();
    if (detail.size() > 200) detail = detail.substr(0, 200) + "...";
    throw InputError(origin + ": not well-formed JSON (" + detail + ")");
  }
}

}  // namespace

MlaConfig MlaConfig::parse(const std::string& text, const std::string& origin) {
  return from_json(guarded_parse([&] { return parse_json(text, origin); }, origin), origin);
}

MlaConfig MlaConfig::load(const std::string& path) {
  return from_json(guarded_parse([&] { return load_json_file(path); }, path), path);
}

}  // namespace mla
