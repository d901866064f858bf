/// @file mla_layer.hpp
/// @brief The complete DeepSeek-V2/V3 attention layer (MLA with decoupled RoPE), two ways:
///        naive (per-head keys and values cached) and absorbed (only the latent and the shared
///        rope key cached).
///
/// The data of one token, as the absorbed path computes it:
///
///     h (d_model) -> q_a_proj -> q_a_layernorm -> q_b_proj   (or q_proj)   -> (H, d_nope + d_rope)
///                    per head [q_nope (d_nope) | q_rope (d_rope)], RoPE(q_rope)
///     h (d_model) -> kv_a_proj_with_mqa -> [c_kv (d_c) | k_rope (d_rope)]
///                    kv_a_layernorm(c_kv), RoPE(k_rope)  -> cache (T, d_c + d_rope)
///     q_nope -> through W_UK (from kv_b_proj) -> q_lat (H, d_c)
///     scores (H, T) = scale · (q_lat · c_kvᵀ + q_rope · k_ropeᵀ) -> softmax -> (H, d_c) = P · c_kv
///     -> through W_UV (from kv_b_proj) -> (H, d_v) -> o_proj -> (d_model)
///
/// The weights, and loading, checking and making them, are in mla_weights.hpp.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "04_low_rank_latents/latent.hpp"
#include "06_decoupled_rope/latent_attention.hpp"
#include "06_decoupled_rope/mla_weights.hpp"
#include "06_decoupled_rope/rope.hpp"
#include "mla/config.hpp"
#include "mla/tensor.hpp"

namespace mla::ch06 {

/// @defgroup ch06 Chapter 6 — Decoupled RoPE
/// @brief Rotary position embeddings break absorption; DeepSeek's decoupled rope key fixes it.
///        The full MLA layer of DeepSeek-V2/V3, loading real checkpoints.
/// @{

/// One MLA attention layer over a batch of B sequences that advance together, each with its own
/// cache. Both paths share everything up to the attention (projections, norms, RoPE) and the
/// output projection; they differ in what they cache and how they attend (attend()).
class MlaLayer {
 public:
  /// A layer for `batch` sequences, its caches empty. Checks `cfg` (mla::check_mla_config) and
  /// the weights' shapes against it (check_mla_weights); std::invalid_argument for null weights or
  /// a zero batch. The weights are shared, not copied: every path can run on one set.
  MlaLayer(const MlaConfig& cfg, std::shared_ptr<const MlaWeights> w, std::size_t batch);
  virtual ~MlaLayer() = default;
  MlaLayer(const MlaLayer&) = delete;
  MlaLayer& operator=(const MlaLayer&) = delete;

  /// The next S tokens of each sequence, at positions position() .. position()+S-1, causal among
  /// themselves; appends them to the caches.
  /// @param x (B, S, d_model)
  /// @return  (B, S, d_model)
  /// Prefill is one call with S tokens; decode is calls with S = 1.
  Tensor3 forward(const Tensor3& x);

  /// Tokens cached per sequence (the position of the next token).
  std::size_t position() const { return position_; }
  /// B: the sequences that advance together.
  std::size_t batch() const { return batch_; }
  /// Numbers cached per token of one sequence (naive: H·(d_qk + d_v); absorbed: d_c + d_rope).
  virtual std::size_t cache_floats_per_token() const = 0;
  /// Numbers held in all caches: batch() · position() · cache_floats_per_token().
  std::size_t cache_floats() const { return batch_ * position_ * cache_floats_per_token(); }

  /// The config the layer was made with.
  const MlaConfig& config() const { return cfg_; }
  /// The weights the layer runs on.
  const MlaWeights& weights() const { return *w_; }
  /// The rotation of q_rope and k_rope: Rope::from_config(config()), YaRN when it is active.
  const Rope& rope() const { return rope_; }
  /// d_qk^-0.5 · m² (see mla_softmax_scale()).
  float softmax_scale() const { return scale_; }

  /// Queries of N = B·S tokens, rope part rotated: (N, H·d_qk), per head [q_nope | RoPE(q_rope)].
  /// Rows are (sequence, token) in order; token s of a row sits at position start + s.
  Mat project_queries(const Mat& h, std::size_t S, std::size_t start) const;
  /// The KV latent and rope key of N = B·S tokens: c_kv (N, d_c) normalized, k_rope (N, d_rope)
  /// rotated.
  void project_latents(const Mat& h, std::size_t S, std::size_t start, Mat& c_kv,
                       Mat& k_rope) const;

 protected:
  /// The attention of one call: append the new tokens to the caches and attend.
  /// @param q      (B·S, H·d_qk) rotated queries
  /// @param c_kv   (B·S, d_c) normalized latents
  /// @param k_rope (B·S, d_rope) rotated rope keys
  /// @return       (B·S, H·d_v): per head, the attention-weighted values (o_proj's input)
  virtual Mat attend(const Mat& q, const Mat& c_kv, const Mat& k_rope, std::size_t S,
                     std::size_t start) = 0;

  MlaConfig cfg_;                        ///< checked by the constructor
  std::shared_ptr<const MlaWeights> w_;  ///< never null, shapes checked against cfg_
  std::size_t batch_;                    ///< B
  Rope rope_;                            ///< Rope::from_config(cfg_)
  float scale_;                          ///< softmax_scale()

  std::size_t H_,  ///< H = num_attention_heads
      d_nope_,     ///< qk_nope_head_dim: the per-head features without position
      d_rope_,     ///< qk_rope_head_dim: the rotated features (q_rope per head, k_rope shared)
      d_qk_,       ///< d_nope + d_rope: per-head query width
      d_v_,        ///< v_head_dim
      d_c_;        ///< kv_lora_rank: the latent width

 private:
  std::size_t position_ = 0;
};

/// The naive path, as DeepSeek's reference writes it for training: up-project every latent to
/// full per-head keys `[k_nope_h | RoPE(k_rope)]` (d_qk) and values (d_v), and cache those.
class NaiveMla final : public MlaLayer {
 public:
  /// As MlaLayer's constructor; each of the `batch` sequences gets empty K and V caches.
  NaiveMla(const MlaConfig& cfg, std::shared_ptr<const MlaWeights> w, std::size_t batch);
  std::size_t cache_floats_per_token() const override { return H_ * (d_qk_ + d_v_); }

 protected:
  Mat attend(const Mat& q, const Mat& c_kv, const Mat& k_rope, std::size_t S,
             std::size_t start) override;

 private:
  std::vector<std::vector<float>> k_cache_;  // per sequence: (T, H, d_qk)
  std::vector<std::vector<float>> v_cache_;  // per sequence: (T, H, d_v)
};

/// The absorbed path, as DeepSeek serves it: cache only `[c_kv | RoPE(k_rope)]` (d_c + d_rope
/// numbers per token: 576 in V2/V3), absorb W_UK into each head's query, attend in the latent
/// space through a LatentAttention core, expand the result through W_UV.
class AbsorbedMla final : public MlaLayer {
 public:
  /// `core` makes each sequence's attention core (default: the reference one).
  AbsorbedMla(const MlaConfig& cfg, std::shared_ptr<const MlaWeights> w, std::size_t batch,
              LatentAttentionFactory core = make_reference_latent_attention);
  std::size_t cache_floats_per_token() const override { return d_c_ + d_rope_; }

 protected:
  Mat attend(const Mat& q, const Mat& c_kv, const Mat& k_rope, std::size_t S,
             std::size_t start) override;

 private:
  ch04::KvUp up_;  // kv_b_proj split: W_uk (H·d_nope, d_c), W_uv (H·d_v, d_c)
  std::vector<std::unique_ptr<LatentAttention>> cores_;  // one per sequence
};

/// The attention of one call of the absorbed path (AbsorbedMla::attend), for any layer that runs
/// it — chapter 7's prefill layer runs it for the chunks it keeps absorbed. Appends each
/// sequence's new latents to its core (`cores`: one per sequence of `layer`) and attends:
/// split q (B·S, H·d_qk) into q_nope and q_rope, absorb q_nope through `up.W_uk`, attend in the
/// latent space, expand through `up.W_uv`. c_kv (B·S, d_c), k_rope (B·S, d_rope).
/// @return (B·S, H·d_v)
Mat absorbed_attention(const MlaLayer& layer, const ch04::KvUp& up,
                       std::vector<std::unique_ptr<LatentAttention>>& cores, const Mat& q,
                       const Mat& c_kv, const Mat& k_rope, std::size_t S, std::size_t start);

/// Makes a layer of one path for (config, weights, batch).
using MlaLayerFactory = std::function<std::unique_ptr<MlaLayer>(
    const MlaConfig& cfg, std::shared_ptr<const MlaWeights> w, std::size_t batch)>;

/// A named way of computing the layer; mla_verify runs every path it is given.
struct MlaPath {
  std::string name;         ///< short, for tables and `--path`: "naive", "absorbed", ...
  std::string description;  ///< one line
  MlaLayerFactory make;     ///< builds a layer of this path for (config, weights, batch)
  /// The smallest absolute tolerance this path can promise; a comparison uses the larger of it and
  /// the one asked for. 0 for exact-arithmetic paths; a lossy cache (bf16 rounds every cached
  /// number to 8 significant bits) states its own.
  double min_tolerance = 0.0;
};

/// An absorbed path whose attention core comes from `core` (how chapter 7 adds its kernels).
MlaPath absorbed_path(std::string name, std::string description, LatentAttentionFactory core);

/// The paths of this chapter: "naive" (NaiveMla) and "absorbed" (AbsorbedMla with the reference
/// core).
std::vector<MlaPath> builtin_paths();

/// Feed x (B, N, d_model) to the layer one token per call (S = 1), as decoding does.
/// @return (B, N, d_model)
Tensor3 decode_token_by_token(MlaLayer& layer, const Tensor3& x);

/// Run a layer the way the golden cases were made: `prefill` (B, S, d_model) in one call at
/// positions 0..S-1, then `decode` (B, N, d_model) one token at a time.
/// @return the outputs {prefill (B, S, d_model), decode (B, N, d_model)}
std::pair<Tensor3, Tensor3> run_prefill_decode(MlaLayer& layer, const Tensor3& prefill,
                                               const Tensor3& decode);

/// @}

}  // namespace mla::ch06
