/// @file absorption.hpp
/// @brief Chapter 5: absorption. W^UK moves to the query side and W^UV to the output side, so
///        attention runs directly against the cached latents and no key or value is ever rebuilt.
///
/// The identity, for head h, a query q_h and cached latents c_t (DeepSeek-V2, §2.1.2: "W^UK can
/// be absorbed into W^Q, and W^UV into W^O"):
///
///     q_hᵀ k_{t,h} = q_hᵀ (W^UK_h c_t) = (W^UK_hᵀ q_h)ᵀ c_t = q̃_hᵀ c_t
///     Σ_t p_t v_{t,h} = Σ_t p_t W^UV_h c_t = W^UV_h (Σ_t p_t c_t)
///
/// Row convention of this chapter: a matrix of per-head vectors for n tokens has n·heads rows,
/// token-major (row r belongs to token r / heads and head r % heads). For one token that is
/// simply (heads, width); for n tokens it is the same memory as (n, heads, width) or
/// (n, heads·width), so projections' outputs are reshaped, never copied.
#pragma once

#include <cstddef>

#include "04_low_rank_latents/latent.hpp"
#include "mla/rows.hpp"
#include "mla/tensor.hpp"

namespace mla::ch05 {

/// @defgroup ch05 Chapter 5 — Absorption
/// @brief Fold W^UK into the query and W^UV into the output: attention straight on the latents.
/// @{

/// Absorb the key up-projection into the queries: q̃_h = W^UK_hᵀ q_h.
/// @param q     (n·heads, d_k) per-head queries, token-major (one token: (heads, d_k))
/// @param W_uk  (heads·d_k, d_c), rows h·d_k … h·d_k + d_k − 1 are head h's W^UK_h (see
///              ch04::split_kv_up)
/// @return      (n·heads, d_c): queries that score directly against latents, q̃_hᵀ c_t = q_hᵀ
/// k_{t,h}
Mat absorb_query(const Mat& q, const Mat& W_uk, std::size_t heads);

/// Expand latent-space attention outputs through the value up-projection: o_h = W^UV_h õ_h.
/// @param o_lat (n·heads, d_c) per-head outputs in latent space, õ_h = Σ_t p_{t,h} c_t
/// @param W_uv  (heads·d_v, d_c), rows h·d_v … h·d_v + d_v − 1 are head h's W^UV_h
/// @return      (n·heads, d_v) per-head outputs, what attention against the rebuilt values gives
Mat expand_output(const Mat& o_lat, const Mat& W_uv, std::size_t heads);

/// Attention of absorbed queries against the latent cache, all heads sharing the one cache (keys
/// and values are both the latents): for query row r of token s = r / heads,
/// out_r = softmax(scale · C q̃_r restricted to rows 0 … start + s) · C.
/// @param q_lat  (S·heads, d_c) absorbed queries, token-major; token s sits at position start + s
/// @param cache  (T, d_c) latents, T ≥ start + S
/// @param scale  softmax scale; the layer's is 1/sqrt(d_k), the width of the *un*absorbed key
/// @param out    (S·heads, d_c)
/// Throws std::invalid_argument if the shapes disagree or start + S > T.
void attend_latent(RowView<const float> q_lat, std::size_t heads, RowView<const float> cache,
                   std::size_t start, float scale, RowView<float> out);

/// attend_latent on a chapter 4 cache. @param q_lat (S·heads, d_c) @return (S·heads, d_c)
Mat attend_latent(const Mat& q_lat, const ch04::LatentCache& cache, std::size_t start, float scale,
                  std::size_t heads);

/// The whole latent layer on a sequence, absorbed: the same function as ch04::latent_forward.
/// @param x (T, d_model) -> @return (T, d_model)
Mat absorbed_forward(const Mat& x, const ch04::LatentWeights& w);

/// Cached decoding with absorption: caches the latents only (like ch04::LatentDecoder) and never
/// rebuilds keys or values; a step costs O(heads·T·d_c) instead of O(T·d_c·heads·(d_k + d_v)).
/// Keeps a pointer to the weights (they must outlive the decoder) and its own copy of W^UK and
/// W^UV split out of W_ukv.
class AbsorbedDecoder {
 public:
  /// Checks `w` (ch04::LatentWeights::check); the cache starts empty.
  explicit AbsorbedDecoder(const ch04::LatentWeights& w);
  /// New tokens at positions cached_tokens() … cached_tokens() + n − 1.
  /// @param x_new (n, d_model) -> @return (n, d_model)
  Mat step(const Mat& x_new);
  /// The attention part of step(), between the projections: absorb the queries, attend on the
  /// latent cache, expand the outputs.
  /// @param q (n, heads·d_k) queries of the last n cached tokens -> @return (n, heads·d_v), the
  ///          heads' outputs before W^O (what ch04::LatentDecoder::attend_cached returns)
  Mat attend_cached(const Mat& q) const;
  /// Put latents straight into the cache (benchmark set-up). @param c_kv (n, d_c)
  void append_latents(const Mat& c_kv) { cache_.append(c_kv); }
  /// Drop every token from position `tokens` on.
  void truncate(std::size_t tokens) { cache_.truncate(tokens); }
  /// Tokens in the cache: the position of the next token.
  std::size_t cached_tokens() const { return cache_.size(); }
  /// Numbers held in the cache: d_c · cached_tokens(), as in chapter 4.
  std::size_t cache_floats() const { return cache_.floats(); }

 private:
  const ch04::LatentWeights* w_;
  ch04::KvUp up_;
  ch04::LatentCache cache_;
  float scale_;
};

// ---------------------------------------------------------------------------------------------
// What a chunk of S new tokens costs, against a context of T tokens
// ---------------------------------------------------------------------------------------------

/// Arithmetic and memory traffic of one call of a decoder's step().
struct Cost {
  double flops = 0;  ///< floating-point operations, a multiply-add counted as 2
  double bytes = 0;  ///< float32 bytes moved if nothing stays in a CPU cache: every weight once,
                     ///< the latent cache once per pass over it, intermediates written and read
                     ///< once
};

/// Cost of the projections both decoders share, for S new tokens: W^Q, W^DKV and W^O,
///   2·S·d_model·(H·d_k + d_c + H·d_v) FLOPs; bytes: every weight of the layer (W^UKV too) once,
///   plus the S input and output rows.
Cost projection_cost(const ch04::LatentShape& s, std::size_t S);

/// Cost of ch04::LatentDecoder::step on S new tokens that bring the cache to T tokens (the chunk
/// sits at positions T − S … T − 1; attention scores are computed for the whole S × T rectangle
/// and then masked, as both implementations do):
///   projection_cost(s, S)
/// + 2·T·d_c·H·(d_k + d_v)              rebuild every cached token's keys and values
/// + 2·S·T·H·(d_k + d_v)                scores and the weighted sum of values
Cost rebuild_cost(const ch04::LatentShape& s, std::size_t S, std::size_t T);

/// Cost of AbsorbedDecoder::step on the same chunk:
///   projection_cost(s, S)               (the same)
/// + 2·S·H·d_c·(d_k + d_v)              absorb the queries, expand the outputs
/// + 2·S·T·H·2·d_c                      scores and weighted sum, both d_c wide
Cost absorbed_cost(const ch04::LatentShape& s, std::size_t S, std::size_t T);

/// The chunk length S* at which both cost the same FLOPs in a context of T tokens (absorbed is
/// cheaper below it, decompressing is cheaper above it):
///   S* = T·d_c·(d_k + d_v) / (d_c·(d_k + d_v) + T·(2·d_c − d_k − d_v)).
/// Infinity if 2·d_c ≤ d_k + d_v (then absorption never costs more).
double crossover_chunk(const ch04::LatentShape& s, std::size_t T);

/// @}

}  // namespace mla::ch05
