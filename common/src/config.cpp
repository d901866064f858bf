#include "mla/config.hpp"

#include <cmath>

#include <fmt/format.h>

#include "mla/json.hpp"

namespace mla {

namespace {

/// Sizes above this are not a model anyone can run here; refusing them keeps later products of
/// sizes (heads × head_dim × ...) far from overflowing.
constexpr std::size_t kMaxSize = std::size_t(1) << 31;

// ---------------------------------------------------------------------------------------------
// Reading: each field present and of the right kind. What its value must be is checked after,
// by check_mla_config, the same for a config read here and one made in code.
// ---------------------------------------------------------------------------------------------

/// A nested value is reported by kind, not dumped: json_field's message prints the value, and a
/// huge or deeply nested one would make that message (or its recursion) unreasonable.
void reject_structured(const nlohmann::json& j, const std::string& key, const std::string& origin,
                       const char* kind) {
  auto it = j.find(key);
  if (it != j.end() && it->is_structured())
    throw InputError(fmt::format("{}: field '{}' is {}, not {}", origin, key,
                                 it->is_array() ? "an array" : "an object", kind));
}

std::size_t read_size(const nlohmann::json& j, const std::string& key, const std::string& origin) {
  reject_structured(j, key, origin, "a positive integer");
  // An integer written as a float (4096.0) is converted by json_field with a cast, which is
  // undefined behaviour beyond the integer's range (found by fuzz_config: "hidden_size": 38e46;
  // tests/fuzz/regressions/config-float-size-overflow.bin). Refuse those here first.
  if (auto it = j.find(key); it != j.end() && it->is_number_float()) {
    const double d = it->get<double>();
    if (d > double(kMaxSize))
      throw InputError(fmt::format("{}: field '{}' = {} is implausibly large (limit {})", origin,
                                   key, it->dump(), kMaxSize));
  }
  return std::size_t(json_field<unsigned long>(j, key, origin));
}

double read_number(const nlohmann::json& j, const std::string& key, const std::string& origin) {
  reject_structured(j, key, origin, "a number");
  return json_field<double>(j, key, origin);
}

double read_optional_number(const nlohmann::json& j, const std::string& key,
                            const std::string& origin, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return read_number(j, key, origin);
}

YarnScaling read_yarn(const nlohmann::json& rs, const std::string& origin) {
  const std::string o = origin + ": rope_scaling";
  YarnScaling y;
  y.factor = read_number(rs, "factor", o);
  y.original_max_position_embeddings = read_size(rs, "original_max_position_embeddings", o);
  y.beta_fast = read_optional_number(rs, "beta_fast", o, 32.0);
  y.beta_slow = read_optional_number(rs, "beta_slow", o, 1.0);
  y.mscale = read_optional_number(rs, "mscale", o, 1.0);
  y.mscale_all_dim = read_optional_number(rs, "mscale_all_dim", o, 0.0);
  return y;
}

// ---------------------------------------------------------------------------------------------
// Validating
// ---------------------------------------------------------------------------------------------

void require_size(std::size_t v, const char* key, const std::string& origin) {
  if (v == 0) throw InputError(fmt::format("{}: field '{}' must be positive (got 0)", origin, key));
  if (v > kMaxSize)
    throw InputError(fmt::format("{}: field '{}' = {} is implausibly large (limit {})", origin, key,
                                 v, kMaxSize));
}

void require_finite(double v, const char* key, const std::string& origin) {
  if (!std::isfinite(v)) throw InputError(fmt::format("{}: field '{}' is not finite", origin, key));
}

void check_yarn(const YarnScaling& y, const std::string& origin) {
  const std::string o = origin + ": rope_scaling";
  require_finite(y.factor, "factor", o);
  // std::to_string's "%f" spelling ({:f}), which the messages have always had.
  if (!(y.factor > 0))
    throw InputError(fmt::format("{}: field 'factor' must be positive (got {:f})", o, y.factor));
  require_size(y.original_max_position_embeddings, "original_max_position_embeddings", o);
  require_finite(y.beta_fast, "beta_fast", o);
  require_finite(y.beta_slow, "beta_slow", o);
  require_finite(y.mscale, "mscale", o);
  require_finite(y.mscale_all_dim, "mscale_all_dim", o);
  // YaRN interpolates fully below beta_slow rotations and not at all above beta_fast; the
  // ramp between them needs beta_fast > beta_slow > 0 (both feed a logarithm).
  if (!(y.beta_slow > 0))
    throw InputError(fmt::format("{}: field 'beta_slow' must be positive", o));
  if (!(y.beta_fast > y.beta_slow))
    throw InputError(
        fmt::format("{}: field 'beta_fast' ({:f}) must be larger than 'beta_slow' ({:f})", o,
                    y.beta_fast, y.beta_slow));
  if (y.mscale < 0) throw InputError(fmt::format("{}: field 'mscale' must not be negative", o));
  if (y.mscale_all_dim < 0)
    throw InputError(fmt::format("{}: field 'mscale_all_dim' must not be negative", o));
}

/// quantization_config: only what DeepSeek's release uses is known; anything else is refused by
/// name rather than loaded as something it is not.
Fp8Quantization read_quantization(const nlohmann::json& q, const std::string& origin) {
  const std::string o = origin + ": quantization_config";
  if (!q.is_object())
    throw InputError(fmt::format("{}: field 'quantization_config' is not an object", origin));
  reject_structured(q, "quant_method", o, "a string");
  const auto method = json_optional<std::string>(q, "quant_method", o);
  if (!method) throw InputError(fmt::format("{}: field 'quant_method' is missing", o));
  const auto shown = [](const std::string& t) {
    return t.size() > 40 ? t.substr(0, 40) + "..." : t;
  };
  if (*method != "fp8")
    throw InputError(fmt::format(
        "{}: quant_method '{}' is not one this loader knows (only 'fp8': block-scaled e4m3 "
        "weights, as DeepSeek-V3 ships them)",
        o, shown(*method)));
  reject_structured(q, "fmt", o, "a string");
  if (const auto f = json_optional<std::string>(q, "fmt", o); f && *f != "e4m3")
    throw InputError(
        fmt::format("{}: fmt '{}' is not one this loader knows (only 'e4m3')", o, shown(*f)));
  Fp8Quantization r;
  reject_structured(q, "activation_scheme", o, "a string");
  if (const auto a = json_optional<std::string>(q, "activation_scheme", o)) {
    if (*a != "dynamic" && *a != "static")
      throw InputError(fmt::format(
          "{}: activation_scheme '{}' is not one this loader knows ('dynamic' or 'static')", o,
          shown(*a)));
    r.activation_scheme = *a;
  }
  const auto bs = q.find("weight_block_size");
  if (bs == q.end() || bs->is_null())
    throw InputError(fmt::format(
        "{}: field 'weight_block_size' is missing (the [rows, cols] of one scale's block)", o));
  if (!bs->is_array() || bs->size() != 2)
    throw InputError(
        fmt::format("{}: field 'weight_block_size' must be an array of two positive integers", o));
  std::size_t sizes[2];
  for (std::size_t i = 0; i < 2; ++i) {
    const nlohmann::json& v = (*bs)[i];
    if (!v.is_number_integer() || v.get<long long>() < 1 || v.get<long long>() > (1 << 20))
      throw InputError(fmt::format(
          "{}: weight_block_size[{}] = {} must be a positive integer (at most 1048576)", o, i,
          v.is_structured() ? std::string(v.is_array() ? "an array" : "an object") : v.dump()));
    sizes[i] = std::size_t(v.get<long long>());
  }
  r.block_rows = sizes[0];
  r.block_cols = sizes[1];
  return r;
}

}  // namespace

void check_mla_config(const MlaConfig& c, const std::string& origin) {
  require_size(c.hidden_size, "hidden_size", origin);
  require_size(c.num_attention_heads, "num_attention_heads", origin);
  require_size(c.num_hidden_layers, "num_hidden_layers", origin);
  require_size(c.kv_lora_rank, "kv_lora_rank", origin);
  require_size(c.qk_nope_head_dim, "qk_nope_head_dim", origin);
  require_size(c.qk_rope_head_dim, "qk_rope_head_dim", origin);
  require_size(c.v_head_dim, "v_head_dim", origin);
  require_size(c.max_position_embeddings, "max_position_embeddings", origin);

  // RoPE rotates pairs of features, so the rotated part has an even width.
  if (c.qk_rope_head_dim % 2 != 0)
    throw InputError(
        fmt::format("{}: field 'qk_rope_head_dim' must be even (got {}): RoPE rotates pairs of "
                    "features",
                    origin, c.qk_rope_head_dim));
  if (c.q_lora_rank) require_size(*c.q_lora_rank, "q_lora_rank", origin);

  require_finite(c.rope_theta, "rope_theta", origin);
  if (!(c.rope_theta > 1))
    throw InputError(fmt::format("{}: field 'rope_theta' must be larger than 1 (got {:f})", origin,
                                 c.rope_theta));
  require_finite(c.rms_norm_eps, "rms_norm_eps", origin);
  if (!(c.rms_norm_eps > 0))
    throw InputError(fmt::format("{}: field 'rms_norm_eps' must be positive (got {:f})", origin,
                                 c.rms_norm_eps));

  // Checked whenever the block is there, active or not (a config is one whole, and the same
  // file with a longer max_position_embeddings would turn it on).
  if (c.yarn) check_yarn(*c.yarn, origin);
  if (c.quantization && (c.quantization->block_rows == 0 || c.quantization->block_cols == 0))
    throw InputError(
        fmt::format("{}: quantization_config: weight_block_size must be positive (got [{}, {}])",
                    origin, c.quantization->block_rows, c.quantization->block_cols));
}

MlaConfig MlaConfig::from_json(const nlohmann::json& j, const std::string& origin) {
  if (!j.is_object()) throw InputError(fmt::format("{}: config is not a JSON object", origin));
  MlaConfig c;
  c.hidden_size = read_size(j, "hidden_size", origin);
  c.num_attention_heads = read_size(j, "num_attention_heads", origin);
  c.num_hidden_layers = read_size(j, "num_hidden_layers", origin);
  c.kv_lora_rank = read_size(j, "kv_lora_rank", origin);
  c.qk_nope_head_dim = read_size(j, "qk_nope_head_dim", origin);
  c.qk_rope_head_dim = read_size(j, "qk_rope_head_dim", origin);
  c.v_head_dim = read_size(j, "v_head_dim", origin);
  c.max_position_embeddings = read_size(j, "max_position_embeddings", origin);

  // q_lora_rank must be written out: null means "no query compression", which is a real choice
  // (DeepSeek-V2-Lite), not a default to guess.
  if (!j.contains("q_lora_rank"))
    throw InputError(fmt::format(
        "{}: field 'q_lora_rank' is missing (null for a layer without query compression, else a "
        "positive integer)",
        origin));
  if (!j.at("q_lora_rank").is_null()) c.q_lora_rank = read_size(j, "q_lora_rank", origin);

  c.rope_theta = read_number(j, "rope_theta", origin);
  c.rms_norm_eps = read_number(j, "rms_norm_eps", origin);

  if (auto rs = j.find("rope_scaling"); rs != j.end() && !rs->is_null()) {
    if (!rs->is_object())
      throw InputError(fmt::format("{}: field 'rope_scaling' is not an object", origin));
    // Older configs say "type", newer ones "rope_type"; if both are there they must agree.
    const std::string o = origin + ": rope_scaling";
    reject_structured(*rs, "type", o, "a string");
    reject_structured(*rs, "rope_type", o, "a string");
    const auto type = json_optional<std::string>(*rs, "type", o);
    const auto rope_type = json_optional<std::string>(*rs, "rope_type", o);
    if (type && rope_type && *type != *rope_type)
      throw InputError(fmt::format("{}: fields 'type' ({}) and 'rope_type' ({}) disagree", o, *type,
                                   *rope_type));
    if (!type && !rope_type) throw InputError(fmt::format("{}: field 'type' is missing", o));
    const std::string t = type ? *type : *rope_type;
    // Reading the block does not switch YaRN on: it acts only when max_position_embeddings
    // exceeds its original_max_position_embeddings, as in DeepSeek's reference (see
    // MlaConfig::max_position_embeddings and ch06::yarn_active).
    if (t == "yarn") {
      c.yarn = read_yarn(*rs, origin);
    } else if (t != "default") {  // "default" is Hugging Face's name for plain RoPE
      const std::string shown = t.size() > 40 ? t.substr(0, 40) + "..." : t;
      throw InputError(fmt::format("{}: type '{}' is not supported (only 'yarn')", o, shown));
    }
  }
  if (auto q = j.find("quantization_config"); q != j.end() && !q->is_null())
    c.quantization = read_quantization(*q, origin);
  check_mla_config(c, origin);
  return c;
}

MlaConfig MlaConfig::parse(const std::string& text, const std::string& origin) {
  return from_json(parse_json(text, origin), origin);
}

MlaConfig MlaConfig::load(const std::string& path) {
  return from_json(load_json_file(path), path);
}

}  // namespace mla
