/// @file mla_weights.hpp
/// @brief The weights of one MLA layer and their bookkeeping: the one list of the layer's
///        tensors (for_each_weight), and what is done through it: shape checks, loading from a
///        checkpoint, the finite check, random initialization, and the tensors a test writes.
///
/// gemma.cpp's `ForEachTensor` idea: the tensors are listed once, with their checkpoint names
/// and the shapes the config gives them, and every job that touches all of them walks that list.
/// Adding a tensor means adding one line to the list, not one to each job. A whole model lists
/// its own tensors (embeddings, norms, MLP) and calls the layer's list once per layer with the
/// prefix "model.layers.N." (with_prefix): the same mechanism, one level up.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mla/checkpoint.hpp"
#include "mla/config.hpp"
#include "mla/dtype.hpp"
#include "mla/random.hpp"
#include "mla/safetensors_writer.hpp"
#include "mla/tensor.hpp"

namespace mla::ch06 {

/// @addtogroup ch06
/// @{

/// The weights of one MLA layer, named and laid out as a DeepSeek checkpoint stores them
/// (`model.layers.N.self_attn.<name>.weight`, Linear weights as (out_features, in_features)).
/// H = num_attention_heads, d_qk = qk_nope_head_dim + qk_rope_head_dim.
struct MlaWeights {
  Mat q_proj;              ///< (H·d_qk, d_model); empty when the layer compresses queries
  Mat q_a_proj;            ///< (q_lora_rank, d_model): W_DQ, the query latent; empty without one
  Vec q_a_layernorm;       ///< (q_lora_rank)
  Mat q_b_proj;            ///< (H·d_qk, q_lora_rank): W_UQ and W_QR, stacked per head
  Mat kv_a_proj_with_mqa;  ///< (d_c + d_rope, d_model): W_DKV (d_c rows) then W_KR (d_rope rows)
  Vec kv_a_layernorm;      ///< (d_c)
  Mat kv_b_proj;           ///< (H·(d_nope + d_v), d_c): per head, W_UK (d_nope rows), W_UV (d_v)
  Mat o_proj;              ///< (d_model, H·d_v)

  /// True if queries go through a latent (q_a_proj -> q_a_layernorm -> q_b_proj).
  bool compressed_query() const { return q_a_proj.size() > 0; }
};

/// The shape a weight must have: [rows, cols] for a Linear weight, [n] for a norm's.
using WeightShape = std::vector<std::size_t>;

namespace detail {

/// THE list of an MLA layer's tensors, in checkpoint order; W is MlaWeights or const MlaWeights.
/// Which tensors exist is the config's choice: q_proj without a query latent (q_lora_rank null),
/// else q_a_proj, q_a_layernorm and q_b_proj.
template <class W, class Fn>
void for_each_mla_weight(W& w, const MlaConfig& cfg, Fn& fn) {
  const std::size_t H = cfg.num_attention_heads, D = cfg.hidden_size, d_c = cfg.kv_lora_rank;
  const std::size_t d_qk = cfg.qk_head_dim(), d_nope = cfg.qk_nope_head_dim;
  const std::size_t d_rope = cfg.qk_rope_head_dim, d_v = cfg.v_head_dim;
  if (cfg.q_lora_rank) {
    const std::size_t r = *cfg.q_lora_rank;
    fn("self_attn.q_a_proj.weight", w.q_a_proj, WeightShape{r, D});
    fn("self_attn.q_a_layernorm.weight", w.q_a_layernorm, WeightShape{r});
    fn("self_attn.q_b_proj.weight", w.q_b_proj, WeightShape{H * d_qk, r});
  } else {
    fn("self_attn.q_proj.weight", w.q_proj, WeightShape{H * d_qk, D});
  }
  fn("self_attn.kv_a_proj_with_mqa.weight", w.kv_a_proj_with_mqa, WeightShape{d_c + d_rope, D});
  fn("self_attn.kv_a_layernorm.weight", w.kv_a_layernorm, WeightShape{d_c});
  fn("self_attn.kv_b_proj.weight", w.kv_b_proj, WeightShape{H * (d_nope + d_v), d_c});
  fn("self_attn.o_proj.weight", w.o_proj, WeightShape{D, H * d_v});
}

}  // namespace detail

/// Call `fn(name, tensor, shape)` for every tensor of the layer that `cfg` says exists, in
/// checkpoint order. `name` is the checkpoint name below the layer ("self_attn.o_proj.weight"),
/// `tensor` the Mat or Vec member (so `fn` is generic: `[](const std::string& name, auto& t,
/// const WeightShape& shape)`), `shape` the shape `cfg` gives it, whatever `tensor` holds now.
template <class Fn>
void for_each_weight(MlaWeights& w, const MlaConfig& cfg, Fn&& fn) {
  detail::for_each_mla_weight(w, cfg, fn);
}
/// The same over weights that are only read (checks, saving).
template <class Fn>
void for_each_weight(const MlaWeights& w, const MlaConfig& cfg, Fn&& fn) {
  detail::for_each_mla_weight(w, cfg, fn);
}

/// `fn` with `prefix` put before every name: how a list one level up reuses this one, e.g. a
/// model's `for_each_weight(layers[i], cfg, with_prefix(layer_prefix(i), fn))`.
template <class Fn>
auto with_prefix(std::string prefix, Fn fn) {
  return [prefix = std::move(prefix), fn = std::move(fn)](const std::string& name, auto& tensor,
                                                          const WeightShape& shape) mutable {
    fn(prefix + name, tensor, shape);
  };
}

/// "model.layers.<layer>.": the prefix of every tensor of one decoder layer in a checkpoint.
std::string layer_prefix(std::size_t layer);
/// "model.layers.<layer>.self_attn.": the prefix of every tensor of one attention layer.
std::string attention_prefix(std::size_t layer);

/// Check every weight's shape against the config. InputError "<name>: expected shape [r, c],
/// found [r', c']", or naming a weight that is missing (e.g. q_a_proj when q_lora_rank is set).
void check_mla_weights(const MlaWeights& w, const MlaConfig& cfg);

/// Load layer `layer`'s attention weights from a checkpoint, any dtype (F32, BF16, F16), and
/// check their shapes against `cfg` (q_proj when q_lora_rank is null, else q_a_proj, q_a_layernorm,
/// q_b_proj). InputError naming the tensor, the shape expected and the shape found — or, for a
/// NaN or ±Inf anywhere in a weight, the tensor and the index of the first such value: a weight
/// that is not a number is a broken checkpoint, never something to compute with.
MlaWeights load_mla_weights(const Checkpoint& ckpt, const MlaConfig& cfg, std::size_t layer);

/// Random weights for tests and demonstrations: Linear weights ~ N(0, 1/fan_in), norm weights
/// 1 + N(0, 0.1²) ("near 1").
MlaWeights random_mla_weights(const MlaConfig& cfg, Rng& rng);

/// The layer's tensors as a checkpoint of layer `layer` holds them (`model.layers.<layer>.`
/// names, the tensors' own shapes, values stored as `dtype`): what tests write with
/// write_safetensors to make a checkpoint. The tensors listed are those `cfg` says exist.
std::vector<TensorData> mla_weight_tensors(const MlaWeights& w, const MlaConfig& cfg,
                                           std::size_t layer, DType dtype);

/// A config with the given sizes (num_hidden_layers = 1, rope_theta 10000, rms_norm_eps 1e-6,
/// max_position_embeddings 4096), for tests and demonstrations. Pass `yarn` to enable YaRN (then
/// set max_position_embeddings above its original_max_position_embeddings yourself if needed).
/// Not checked here: MlaLayer (and load_mla_weights, random_mla_weights) check it with
/// mla::check_mla_config, the same validation a config.json gets.
MlaConfig make_mla_config(std::size_t d_model, std::size_t heads, std::optional<std::size_t> q_lora,
                          std::size_t d_c, std::size_t d_nope, std::size_t d_rope, std::size_t d_v,
                          std::optional<YarnScaling> yarn = std::nullopt);

/// @}

}  // namespace mla::ch06
