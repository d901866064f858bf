#include "09_sparse_attention/dsa_config.hpp"

#include <fmt/format.h>

#include "mla/json.hpp"

namespace mla::ch09 {

namespace {

constexpr std::size_t kMaxSize = std::size_t{1} << 31;

bool names(const nlohmann::json& j, const char* key, const char* value) {
  if (!j.is_object() || !j.contains(key)) return false;
  const nlohmann::json& v = j[key];
  if (v.is_string()) return v.get<std::string>() == value;
  if (v.is_array()) {
    for (const auto& e : v) {
      if (e.is_string() && e.get<std::string>() == value) return true;
    }
  }
  return false;
}

}  // namespace

bool is_dsa_config(const nlohmann::json& j) {
  return (j.is_object() && j.contains("index_topk")) ||
         names(j, "architectures", "DeepseekV32ForCausalLM") ||
         names(j, "model_type", "deepseek_v32");
}

DsaConfig DsaConfig::from_json(const nlohmann::json& j, const std::string& origin) {
  DsaConfig c;
  c.mla = MlaConfig::from_json(j, origin);
  c.index_n_heads = json_field<std::size_t>(j, "index_n_heads", origin);
  c.index_head_dim = json_field<std::size_t>(j, "index_head_dim", origin);
  c.index_topk = json_field<std::size_t>(j, "index_topk", origin);
  check_dsa_config(c, origin);
  return c;
}

DsaConfig DsaConfig::load(const std::string& path) {
  return from_json(load_json_file(path), path);
}

void check_dsa_config(const DsaConfig& cfg, const std::string& origin) {
  check_mla_config(cfg.mla, origin);
  if (!cfg.mla.q_lora_rank) {
    throw InputError(fmt::format(
        "{}: field 'q_lora_rank' is null, but a DSA layer needs a query latent (the indexer's "
        "queries come from it)",
        origin));
  }
  if (cfg.index_n_heads == 0 || cfg.index_n_heads > kMaxSize) {
    throw InputError(fmt::format("{}: field 'index_n_heads' must be in 1 .. 2^31, got {}", origin,
                                 cfg.index_n_heads));
  }
  if (cfg.index_topk == 0 || cfg.index_topk > kMaxSize) {
    throw InputError(
        fmt::format("{}: field 'index_topk' must be in 1 .. 2^31 (tokens kept per query), got {}",
                    origin, cfg.index_topk));
  }
  const std::size_t DI = cfg.index_head_dim, r = cfg.mla.qk_rope_head_dim;
  if (DI < r) {
    throw InputError(fmt::format(
        "{}: field 'index_head_dim' = {} is smaller than qk_rope_head_dim = {} (the first "
        "qk_rope_head_dim features of every indexer head are rotated)",
        origin, DI, r));
  }
  if (DI > kMaxSize || (DI & (DI - 1)) != 0) {
    throw InputError(fmt::format(
        "{}: field 'index_head_dim' = {} is not a power of two (the indexer's Hadamard rotation "
        "needs one)",
        origin, DI));
  }
}

}  // namespace mla::ch09
