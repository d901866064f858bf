/// @file config.hpp
/// @brief The attention fields of a DeepSeek-V2/V3 Hugging Face `config.json`, validated.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "mla/errors.hpp"

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

/// `quantization_config` of a block-quantized FP8 checkpoint, as DeepSeek-V3's release writes it:
/// `{"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128], "activation_scheme":
/// "dynamic"}`. Each Linear weight `X.weight` is stored as F8_E4M3 with a companion
/// `X.weight_scale_inv` (F32, [ceil(out/block_rows), ceil(in/block_cols)]); the real weight is
/// the code's value times its block's entry (Checkpoint::load_weight). The activation scheme is
/// how DeepSeek's own FP8 GEMMs quantize activations at run time; this project computes in
/// float, so it is read, checked for kind, and otherwise not used.
struct Fp8Quantization {
  std::size_t block_rows = 128;               ///< weight_block_size[0]: output rows per block
  std::size_t block_cols = 128;               ///< weight_block_size[1]: input columns per block
  std::string activation_scheme = "dynamic";  ///< "dynamic" or "static" (not used here)
};

/// The attention fields of a DeepSeek-V2/V3 config.json.
struct MlaConfig {
  std::size_t hidden_size = 0;          ///< d_model
  std::size_t num_attention_heads = 0;  ///< H
  std::size_t num_hidden_layers = 0;    ///< layers of the model, one attention each
  std::size_t kv_lora_rank = 0;         ///< d_c, the KV latent width
  std::size_t qk_nope_head_dim = 0;     ///< per-head query/key features without position
  std::size_t qk_rope_head_dim = 0;     ///< d_r, per-head features that RoPE rotates (even)
  std::size_t v_head_dim = 0;           ///< d_v, per-head value width
  /// The longest context the layer is built for. It plays the part of DeepSeek's
  /// `ModelArgs.max_seq_len`: DeepSeek's reference (inference/model.py) applies YaRN, both its
  /// frequencies and its softmax temperature, only when `max_seq_len > original_seq_len`, and so
  /// does this project when max_position_embeddings > yarn->original_max_position_embeddings
  /// (ch06::yarn_active). A `rope_scaling` block alone does not turn YaRN on.
  std::size_t max_position_embeddings = 0;
  std::optional<std::size_t> q_lora_rank;  ///< null -> no query compression: the layer has q_proj
  double rope_theta = 10000.0;             ///< > 1
  double rms_norm_eps = 1e-6;              ///< > 0
  std::optional<YarnScaling> yarn;         ///< rope_scaling of type "yarn"
  /// quantization_config: the checkpoint's Linear weights are block-scaled FP8.
  std::optional<Fp8Quantization> quantization;

  /// Per-head width of queries and keys: qk_nope_head_dim + qk_rope_head_dim.
  std::size_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }

  /// Read the fields from a parsed config.json and validate them with check_mla_config.
  /// InputError naming `origin` and the field: a missing field, a value of the wrong kind (a
  /// size that is not an integer, an object where a number belongs), a q_lora_rank that is
  /// absent (it must be written out, null or a number), a rope_scaling of another type than
  /// "yarn" (or "default", meaning none), a yarn without factor or
  /// original_max_position_embeddings; then every rule of check_mla_config. Other fields of the
  /// file (vocab_size, experts, ...) are ignored.
  static MlaConfig from_json(const nlohmann::json& j, const std::string& origin);
  /// from_json of the text of a config.json; text that is not JSON is an InputError too.
  static MlaConfig parse(const std::string& text, const std::string& origin);
  /// from_json of the file at `path`.
  static MlaConfig load(const std::string& path);
};

/// The one validation of an MlaConfig, whether it was read from a file (from_json calls it) or
/// made in code (ch06::make_mla_config; every MlaLayer checks its config with it). InputError
/// "<origin>: field '<name>' ..." for: a size that is zero or above 2^31 (hidden_size,
/// num_attention_heads, num_hidden_layers, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim,
/// v_head_dim, max_position_embeddings, and q_lora_rank when set), an odd qk_rope_head_dim
/// (RoPE rotates pairs), a rope_theta that is not finite and > 1, an rms_norm_eps that is not
/// finite and > 0; and, with a yarn block (`<origin>: rope_scaling: field ...`): a factor that
/// is not finite and > 0, an original_max_position_embeddings of 0, beta values that are not
/// finite or not beta_fast > beta_slow > 0, a negative mscale or mscale_all_dim.
void check_mla_config(const MlaConfig& cfg, const std::string& origin = "MLA config");

/// @}

}  // namespace mla
