/// @file model.hpp
/// @brief A whole decoder model in DeepSeek's dense layout: its config.json, the one list of its
///        tensors (for_each_weight, reusing chapter 6's per-layer list), loading, checking,
///        random initialization and saving, and the byte-level vocabulary.
///
/// A layer computes what DeepSeek's reference `Block` computes for a layer without experts
/// (deepseek-ai/DeepSeek-V3, inference/model.py):
///
///     x = x + attn(input_layernorm(x))                 attn: MLA (chapter 6) or MHA/GQA
///     x = x + mlp(post_attention_layernorm(x))         mlp(x) = down(silu(gate(x)) * up(x))
///
/// and the model `Transformer`: embed_tokens -> layers -> norm -> lm_head. The MLA and the
/// MHA/GQA twins of a model differ only in the attention's tensors.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "06_decoupled_rope/mla_weights.hpp"
#include "mla/checkpoint.hpp"
#include "mla/config.hpp"
#include "mla/dtype.hpp"
#include "mla/random.hpp"
#include "mla/tensor.hpp"

namespace mla::ch08 {

/// @defgroup ch08 Chapter 8 — Serving
/// @brief A whole model, a paged cache, many sequences per decode step: MLA's smaller cache
///        turned into throughput.
/// @{

/// Which attention the layers have: DeepSeek's MLA, or Llama-style multi-head / grouped-query
/// attention (MHA is GQA with as many KV heads as query heads).
enum class AttentionKind { MLA, GQA };

/// The attention fields of a Llama-style config.json (q_proj/k_proj/v_proj/o_proj).
struct GqaConfig {
  std::size_t heads = 0;        ///< num_attention_heads
  std::size_t kv_heads = 0;     ///< num_key_value_heads (= heads for MHA); divides heads
  std::size_t head_dim = 0;     ///< head_dim (default hidden_size / heads); even (RoPE pairs)
  double rope_theta = 10000.0;  ///< rope_theta: RoPE's base θ
};

/// The fields of a config.json this chapter reads (DeepSeek-V2/V3 names; Llama names for GQA).
struct ModelConfig {
  AttentionKind attention = AttentionKind::MLA;  ///< MLA when the file has kv_lora_rank
  std::size_t vocab_size = 0;                    ///< V
  std::size_t hidden_size = 0;                   ///< D = d_model
  std::size_t intermediate_size = 0;             ///< I: the SwiGLU MLP's width
  std::size_t num_hidden_layers = 0;             ///< L
  std::size_t max_position_embeddings = 0;       ///< the longest context
  double rms_norm_eps = 1e-6;                    ///< RMSNorm's ε
  std::optional<std::size_t> eos_token_id;       ///< generation stops at it, if set
  MlaConfig mla;                                 ///< the attention of an MLA model
  GqaConfig gqa;                                 ///< the attention of a GQA model

  /// "mla", "mha" (kv_heads = heads) or "gqa".
  std::string variant() const;
  /// Numbers cached per token per layer: d_c + d_rope (MLA), 2·kv_heads·head_dim (GQA).
  std::size_t cache_floats_per_token() const;

  /// Read and check a parsed config.json. InputError naming `origin` and the field for: a
  /// missing or malformed field, hidden_act other than silu, tie_word_embeddings = true, and
  /// experts in a layer it would load (n_routed_experts with first_k_dense_replace and
  /// moe_layer_freq, as DeepSeek's layers choose MoE; num_local_experts for Mixtral-style files).
  static ModelConfig from_json(const nlohmann::json& j, const std::string& origin);
  /// from_json of the file at `path`.
  static ModelConfig load(const std::string& path);
  /// The config.json that from_json reads back to this config.
  nlohmann::json to_json() const;
};

/// Check a config made in code with the rules from_json applies (sizes, heads, eos).
void check_model_config(const ModelConfig& cfg, const std::string& origin = "model config");

/// Llama-style attention weights, Linear layout (out, in).
struct GqaWeights {
  Mat q_proj;  ///< (H·d_h, D)
  Mat k_proj;  ///< (H_kv·d_h, D)
  Mat v_proj;  ///< (H_kv·d_h, D)
  Mat o_proj;  ///< (D, H·d_h)
};

/// One decoder layer's weights.
struct LayerWeights {
  Vec input_layernorm;                    ///< (D): RMSNorm before attention
  std::shared_ptr<ch06::MlaWeights> mla;  ///< MLA attention (chapter 6's tensors); null for GQA
  GqaWeights gqa;                         ///< GQA attention; empty for MLA
  Vec post_attention_layernorm;           ///< (D): RMSNorm before the MLP
  Mat gate_proj;                          ///< (I, D): W1, through SiLU
  Mat up_proj;                            ///< (I, D): W3, the gate's partner
  Mat down_proj;                          ///< (D, I): W2
};

/// The whole model's weights.
struct ModelWeights {
  Mat embed_tokens;                  ///< (V, D)
  std::vector<LayerWeights> layers;  ///< L
  Vec norm;                          ///< (D): the final RMSNorm
  Mat lm_head;                       ///< (V, D)
};

using ch06::WeightShape;

namespace detail {

/// THE list of a model's tensors, in checkpoint order; W is ModelWeights or const ModelWeights.
/// The attention of layer i is chapter 6's list under "model.layers.i." (with_prefix).
template <class W, class Fn>
void for_each_model_weight(W& w, const ModelConfig& c, Fn& fn) {
  const std::size_t V = c.vocab_size, D = c.hidden_size, I = c.intermediate_size;
  auto ref = [&fn](const std::string& n, auto& t, const WeightShape& s) { fn(n, t, s); };
  fn("model.embed_tokens.weight", w.embed_tokens, WeightShape{V, D});
  for (std::size_t i = 0; i < w.layers.size(); ++i) {
    auto& l = w.layers[i];
    const std::string p = ch06::layer_prefix(i);
    fn(p + "input_layernorm.weight", l.input_layernorm, WeightShape{D});
    if (c.attention == AttentionKind::MLA) {
      if constexpr (std::is_const_v<W>) {
        ch06::for_each_weight(std::as_const(*l.mla), c.mla, ch06::with_prefix(p, ref));
      } else {
        ch06::for_each_weight(*l.mla, c.mla, ch06::with_prefix(p, ref));
      }
    } else {
      const std::size_t q = c.gqa.heads * c.gqa.head_dim, kv = c.gqa.kv_heads * c.gqa.head_dim;
      fn(p + "self_attn.q_proj.weight", l.gqa.q_proj, WeightShape{q, D});
      fn(p + "self_attn.k_proj.weight", l.gqa.k_proj, WeightShape{kv, D});
      fn(p + "self_attn.v_proj.weight", l.gqa.v_proj, WeightShape{kv, D});
      fn(p + "self_attn.o_proj.weight", l.gqa.o_proj, WeightShape{D, q});
    }
    fn(p + "post_attention_layernorm.weight", l.post_attention_layernorm, WeightShape{D});
    fn(p + "mlp.gate_proj.weight", l.gate_proj, WeightShape{I, D});
    fn(p + "mlp.up_proj.weight", l.up_proj, WeightShape{I, D});
    fn(p + "mlp.down_proj.weight", l.down_proj, WeightShape{D, I});
  }
  fn("model.norm.weight", w.norm, WeightShape{D});
  fn("lm_head.weight", w.lm_head, WeightShape{V, D});
}

}  // namespace detail

/// Call `fn(name, tensor, shape)` for every tensor of the model, full checkpoint names. The
/// layers must exist (w.layers.size() == cfg.num_hidden_layers, each MLA layer's `mla` set):
/// empty_weights() makes such a skeleton.
template <class Fn>
void for_each_weight(ModelWeights& w, const ModelConfig& cfg, Fn&& fn) {
  detail::for_each_model_weight(w, cfg, fn);
}
/// The same over weights that are only read.
template <class Fn>
void for_each_weight(const ModelWeights& w, const ModelConfig& cfg, Fn&& fn) {
  detail::for_each_model_weight(w, cfg, fn);
}

/// A model: its config and its weights, shapes checked against each other.
struct Model {
  ModelConfig config;    ///< its config.json
  ModelWeights weights;  ///< its tensors, shaped by config
};

/// The skeleton for_each_weight walks: num_hidden_layers layers, MLA ones with their MlaWeights.
ModelWeights empty_weights(const ModelConfig& cfg);
/// InputError "<name>: expected shape [r, c], found [r', c']" for the first weight whose shape is
/// not the config's (or a layer count that is not num_hidden_layers).
void check_model_weights(const ModelWeights& w, const ModelConfig& cfg);
/// Random weights (Linear N(0, 1/fan_in), norms near 1; embeddings N(0, 1)), repeatable.
Model random_model(const ModelConfig& cfg, std::uint64_t seed);
/// Load a model folder: config.json and model.safetensors or a sharded index (mla::Checkpoint).
/// InputError naming the tensor that is missing, mis-shaped or not finite, or the config field.
Model load_model(const std::string& dir);
/// Write config.json and model.safetensors (values stored as `dtype`) into `dir` (created).
void save_model(const Model& m, const std::string& dir, DType dtype = DType::F32);

/// The byte-level vocabulary: token = byte value, so V must be 256.
inline constexpr std::size_t kByteVocab = 256;
/// InputError "vocab_size N: the byte-level tokenizer has 256 symbols" unless V = 256.
void check_byte_vocabulary(const ModelConfig& cfg, const std::string& origin);
/// Text -> tokens, one per byte.
std::vector<int> encode_bytes(const std::string& text);
/// Token -> its byte.
std::string decode_byte(int token);

/// A small config for tests and demonstrations: V = 256, the given sizes, MLA attention shaped
/// by `mla` (its hidden_size and num_hidden_layers are overwritten).
ModelConfig make_mla_model_config(std::size_t layers, std::size_t intermediate, MlaConfig mla);
/// The same with GQA attention shaped by `gqa`: D = `d_model`, a 4096-token context.
ModelConfig make_gqa_model_config(std::size_t d_model, std::size_t layers, std::size_t intermediate,
                                  GqaConfig gqa);

/// @}

}  // namespace mla::ch08
