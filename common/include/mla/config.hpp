/// @file config.hpp
/// @brief The attention fields of a DeepSeek-V2/V3 Hugging Face `config.json`, validated.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "mla/program.hpp"

namespace mla {

/// @addtogroup loaders
/// @{

/// `rope_scaling` of type "yarn" (DeepSeek-V2/V3 extend their context window with it).
struct YarnScaling {
  double factor = 1;                                 ///< context extension factor (> 0)
  std::size_t original_max_position_embeddings = 0;  ///< context length trained without YaRN
  double beta_fast = 32,   ///< ramp bound, in rotations: pairs turning more often are kept
      beta_slow = 1;       ///< ramp bound, in rotations: pairs turning less are interpolated
  double mscale = 1,       ///< temperature m = 0.1 · mscale · ln(factor) + 1
      mscale_all_dim = 0;  ///< Hugging Face's factor; unused (DeepSeek's configs: = mscale)
};

/// The attention fields of a DeepSeek-V2/V3 config.json.
struct MlaConfig {
  std::size_t hidden_size = 0;              ///< d_model
  std::size_t num_attention_heads = 0;      ///< H
  std::size_t num_hidden_layers = 0;        ///< layers of the model, one attention each
  std::size_t kv_lora_rank = 0;             ///< d_c, the KV latent width
  std::size_t qk_nope_head_dim = 0;         ///< per-head query/key features without position
  std::size_t qk_rope_head_dim = 0;         ///< d_r, per-head features that RoPE rotates (even)
  std::size_t v_head_dim = 0;               ///< d_v, per-head value width
  std::size_t max_position_embeddings = 0;  ///< longest context; YaRN acts if above the original
  std::optional<std::size_t> q_lora_rank;   ///< null -> no query compression: the layer has q_proj
  double rope_theta = 10000.0;              ///< > 1
  double rms_norm_eps = 1e-6;               ///< > 0
  std::optional<YarnScaling> yarn;          ///< rope_scaling of type "yarn"

  /// Per-head width of queries and keys: qk_nope_head_dim + qk_rope_head_dim.
  std::size_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }

  /// Read and validate the fields from a parsed config.json. InputError naming `origin` and the
  /// field: a missing field, a size that is not a positive integer, an odd qk_rope_head_dim, a
  /// q_lora_rank that is neither null nor positive, a rope_scaling of another type than "yarn"
  /// (or "default", meaning none), a yarn without factor or original_max_position_embeddings.
  /// Other fields of the file (vocab_size, experts, ...) are ignored.
  static MlaConfig from_json(const nlohmann::json& j, const std::string& origin);
  /// from_json of the text of a config.json; text that is not JSON is an InputError too.
  static MlaConfig parse(const std::string& text, const std::string& origin);
  /// from_json of the file at `path`.
  static MlaConfig load(const std::string& path);
};

/// @}

}  // namespace mla
