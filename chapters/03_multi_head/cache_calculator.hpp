/// @file cache_calculator.hpp
/// @brief Chapter 3: the KV-cache calculator — what a real model caches per token, read from its
///        Hugging Face `config.json`, and what it would cache with plain multi-head attention.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mla::ch03 {

/// @addtogroup ch03
/// @{

/// How a model's attention layers share their keys and values.
enum class AttentionKind {
  MHA,  ///< every head its own key and value (n_kv = n_h)
  GQA,  ///< n_g groups of heads share one key/value head each (1 < n_g < n_h)
  MQA,  ///< all heads share one key/value head (n_kv = 1)
  MLA,  ///< one latent of kv_lora_rank plus a rope key of qk_rope_head_dim, shared by all heads
};

/// "MHA", "GQA", "MQA" or "MLA".
const char* kind_name(AttentionKind kind);

/// The fields of a Hugging Face `config.json` that decide the size of the KV cache.
struct ModelShape {
  std::string name;        ///< the file name without ".config.json" / ".json"
  std::string model_type;  ///< "llama", "deepseek_v2", ... ("" if absent)
  /// MLA if kv_lora_rank is set, else MHA, GQA or MQA by kv_heads: what decides the cache formula
  AttentionKind kind = AttentionKind::MHA;
  std::size_t layers = 0;    ///< l: num_hidden_layers
  std::size_t heads = 0;     ///< n_h: num_attention_heads
  std::size_t kv_heads = 0;  ///< n_kv: num_key_value_heads (absent: n_h); not used by MLA
  /// d_h: `head_dim`, else hidden_size / n_h; for MLA the non-rope key width qk_nope_head_dim
  std::size_t head_dim = 0;
  std::size_t kv_lora_rank = 0;             ///< MLA: d_c, the latent cached per token (0 otherwise)
  std::size_t qk_rope_head_dim = 0;         ///< MLA: d_h^R, the rope key cached per token
  std::size_t v_head_dim = 0;               ///< MLA: width of a value head (otherwise = head_dim)
  std::size_t max_position_embeddings = 0;  ///< the longest context (0 if absent)
  std::size_t hidden_size = 0;              ///< MLA: d_model (0 if absent)
  std::size_t q_lora_rank = 0;              ///< MLA: d_c' of the query (0: no compression, q_proj)
};

/// Read a ModelShape from a parsed `config.json`.
///
/// A config is MLA if it has a non-null `kv_lora_rank`; otherwise MHA, GQA or MQA by
/// `num_key_value_heads`. Throws mla::InputError naming `origin` and the field when a field is
/// missing, of the wrong type, zero where it must be positive (`num_hidden_layers`,
/// `num_attention_heads`, ...), or inconsistent (`num_attention_heads` not a multiple of
/// `num_key_value_heads`; `hidden_size` not a multiple of `num_attention_heads` when there is no
/// `head_dim`).
ModelShape model_shape_from_json(const nlohmann::json& config, const std::string& origin,
                                 const std::string& name);

/// Load one `config.json` file (name = file name without ".config.json" or ".json").
ModelShape load_model_shape(const std::string& path);

/// Load every `*.json` file of a folder, sorted by file name. InputError if the folder cannot be
/// read or holds no `.json` file, or if any file is invalid (the error names it).
std::vector<ModelShape> load_model_shapes(const std::string& dir);

/// Numbers cached per token per layer by the model as it is:
/// MHA/GQA/MQA \f$2 n_{kv} d_h\f$ (a key and a value per key/value head);
/// MLA \f$d_c + d_h^R\f$ (one latent and one rope key, shared by all heads).
std::size_t cache_elements_per_layer(const ModelShape& m);

/// Numbers per token per layer if the same model used plain MHA: a key and a value for every
/// head, \f$n_h (d_k + d_v)\f$ = \f$2 n_h d_h\f$ (for MLA: d_k = qk_nope_head_dim, d_v =
/// v_head_dim).
std::size_t mha_elements_per_layer(const ModelShape& m);

/// MLA only: numbers per token per layer of a per-head cache whose keys keep the rope dims,
/// \f$n_h (d_h + d_h^R + d_v)\f$ — what DeepSeek's non-absorbed reference code caches.
/// For other kinds, the same as mha_elements_per_layer.
std::size_t per_head_rope_elements_per_layer(const ModelShape& m);

/// What one model caches, per token.
struct CacheCost {
  std::size_t elements_per_layer = 0;      ///< cache_elements_per_layer
  std::size_t elements_per_token = 0;      ///< × layers
  double bytes_per_token = 0;              ///< × bits / 8
  std::size_t mha_elements_per_token = 0;  ///< mha_elements_per_layer × layers
  double mha_bytes_per_token = 0;          ///< × bits / 8
  double ratio = 0;                        ///< mha_bytes_per_token / bytes_per_token
};

/// The cache of model `m` at `bits` per number (16 for bf16/fp16).
CacheCost cache_cost(const ModelShape& m, double bits = 16);

/// DeepSeek-V3.2's deployed cache, in bytes: per token and layer, the FP8 latent (d_c e4m3 codes,
/// one float scale per 128 of them, the rope key in bf16) and the FP8 indexer key of chapter 9
/// (index_head_dim e4m3 codes, one float scale per 128).
struct V32CacheBytes {
  std::size_t latent_per_layer = 0;   ///< d_c + 4·ceil(d_c/128) + 2·d_r: 656 at 512 + 64
  std::size_t indexer_per_layer = 0;  ///< DI + 4·ceil(DI/128): 132 at DI = 128
  std::size_t layers = 0;             ///< 61 in V3.2
  /// Both caches, all layers: (656 + 132) · 61 = 48,068 bytes per token in V3.2.
  std::size_t per_token() const { return (latent_per_layer + indexer_per_layer) * layers; }
};

/// V3.2's cache for the given sizes (defaults: V3.2's own).
V32CacheBytes v32_cache_bytes(std::size_t d_c = 512, std::size_t d_r = 64,
                              std::size_t index_head_dim = 128, std::size_t layers = 61);

/// One weight matrix of an attention layer: its checkpoint name and shape [rows, cols] = [out, in].
struct WeightMatrix {
  std::string name;      ///< e.g. "kv_a_proj_with_mqa"
  std::size_t rows = 0;  ///< output features
  std::size_t cols = 0;  ///< input features
};

/// The sizes of one MLA attention layer that decide its weights (a config's fields).
struct MlaLayerSizes {
  std::size_t hidden = 0;        ///< hidden_size (d_model)
  std::size_t heads = 0;         ///< num_attention_heads (n_h)
  std::size_t q_lora_rank = 0;   ///< 0: no query compression (the layer has q_proj)
  std::size_t kv_lora_rank = 0;  ///< d_c
  std::size_t nope = 0;          ///< qk_nope_head_dim
  std::size_t rope = 0;          ///< qk_rope_head_dim (d_h^R)
  std::size_t v = 0;             ///< v_head_dim
};

/// The sizes of an MLA model's attention layer (InputError if m is not MLA or has no hidden_size).
MlaLayerSizes mla_layer_sizes(const ModelShape& m);

/// The linear weights of one MLA attention layer, as DeepSeek's checkpoints name them:
/// q_a_proj [q_lora, hidden] and q_b_proj [n_h (nope + rope), q_lora] (or q_proj
/// [n_h (nope + rope), hidden]), kv_a_proj_with_mqa [d_c + rope, hidden], kv_b_proj
/// [n_h (nope + v), d_c], o_proj [hidden, n_h v]. The norms are not in the list (norm_numbers).
std::vector<WeightMatrix> mla_layer_matrices(const MlaLayerSizes& s);

/// Numbers in the layer's RMSNorm weights: q_a_layernorm (q_lora_rank) + kv_a_layernorm (d_c).
/// The FP8 release keeps them in BF16.
std::size_t norm_numbers(const MlaLayerSizes& s);

/// Blocks of a block-scaled FP8 weight [rows, cols] with blocks [br, bc]: the shape of its
/// `weight_scale_inv`, ceil(rows/br) × ceil(cols/bc) (edge blocks may be partial).
std::size_t fp8_scale_blocks(std::size_t rows, std::size_t cols, std::size_t br = 128,
                             std::size_t bc = 128);

/// Bytes of a block-scaled FP8 weight: one byte per number plus a 4-byte (fp32) scale per block.
std::size_t fp8_weight_bytes(std::size_t rows, std::size_t cols, std::size_t br = 128,
                             std::size_t bc = 128);

/// One attention layer's weight bytes stored two ways.
struct LayerWeightBytes {
  std::size_t numbers = 0;  ///< numbers in the linear weights (norms not counted)
  std::size_t bf16 = 0;     ///< everything in BF16: 2 bytes per number, norms included
  std::size_t fp8 = 0;      ///< FP8 + scales as DeepSeek-V3's release: fp8_weight_bytes, BF16 norms
};

/// The layer's weight bytes in BF16 and in FP8 with [br, bc] blocks.
LayerWeightBytes mla_layer_weight_bytes(const MlaLayerSizes& s, std::size_t br = 128,
                                        std::size_t bc = 128);

/// The DeepSeek-V2 paper's Table 1, "KV cache per token (# element)":
/// MHA \f$2 n_h d_h l\f$, GQA \f$2 n_g d_h l\f$, MQA \f$2 d_h l\f$, MLA \f$(d_c + d_h^R) l\f$.
/// @param n_g key/value groups (used by GQA only)
std::size_t table1_elements(AttentionKind kind, std::size_t n_h, std::size_t n_g, std::size_t d_h,
                            std::size_t l, std::size_t d_c, std::size_t d_h_rope);

/// How much smaller `ours` is than `theirs`: \f$1 - \mathrm{ours}/\mathrm{theirs}\f$.
double reduction(double ours, double theirs);

/// @}

}  // namespace mla::ch03
