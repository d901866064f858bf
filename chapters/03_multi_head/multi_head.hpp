/// @file multi_head.hpp
/// @brief Chapter 3: multi-head attention (MHA), and its cheaper-to-cache variants GQA and MQA as
///        parameters of the same code.
#pragma once

#include <cstddef>
#include <vector>

#include "02_kv_cache/kv_cache.hpp"
#include "mla/random.hpp"
#include "mla/tensor.hpp"

namespace mla::ch03 {

/// @defgroup ch03 Chapter 3 — Multi-head attention, and what heads cost
/// @brief n_h heads of d_h; GQA and MQA share key/value heads; the KV-cache calculator.
/// @{

/// The four projections of one multi-head attention layer, in the (out, in) layout of a
/// checkpoint's `nn.Linear` weights.
///
/// Query head h reads key/value head `h / (n_heads / n_kv_heads)`: with `n_kv_heads == n_heads`
/// this is MHA, with `1 < n_kv_heads < n_heads` GQA (n_g groups), with `n_kv_heads == 1` MQA.
/// `n_heads` must be a multiple of `n_kv_heads`.
struct MhaWeights {
  std::size_t n_heads = 0,  ///< n_h: query heads
      n_kv_heads = 0,       ///< key/value heads: n_h (MHA), n_g (GQA), 1 (MQA)
      head_dim = 0;         ///< d_h, the width of every query, key and value head
  Mat W_q;                  ///< (n_heads*head_dim, d_model)
  Mat W_k;                  ///< (n_kv_heads*head_dim, d_model)
  Mat W_v;                  ///< (n_kv_heads*head_dim, d_model)
  Mat W_o;                  ///< (d_model, n_heads*head_dim)

  /// Width of the layer's input and output (columns of W_q).
  std::size_t d_model() const { return W_q.shape(1); }
  /// Query heads per key/value head (the group size n_h / n_g).
  std::size_t group_size() const { return n_heads / n_kv_heads; }
};

/// Random weights for one layer, each drawn as Rng::linear_weight (N(0, 1/fan_in)).
/// Throws std::invalid_argument if a size is zero or n_heads is not a multiple of n_kv_heads.
MhaWeights random_mha(std::size_t d_model, std::size_t n_heads, std::size_t n_kv_heads,
                      std::size_t head_dim, Rng& rng);

/// Causal multi-head self-attention of a whole sequence, scale 1/sqrt(head_dim).
/// Each head runs chapter 1's single-head attention on its slice of q, k and v.
/// @param x (T, d_model)
/// @return  (T, d_model) = concat_h(attention(q_h, k_g(h), v_g(h))) · W_oᵀ
Mat mha_forward(const Mat& x, const MhaWeights& w);

/// The causal attention weights of every query head, the matrices mha_forward multiplies the
/// values by: what each head looks at.
/// @param x (T, d_model)
/// @return  n_heads matrices (T, T); entry (i, j) of matrix h is the weight query head h of
///          token i gives token j (each row sums to 1, zero above the diagonal)
std::vector<Mat> attention_weights_per_head(const Mat& x, const MhaWeights& w);

/// Cached decoding: the keys and values of every past token are kept (n_kv_heads·head_dim numbers
/// each, per token), so a new token costs one projection and one pass over the cache.
/// Holds its own copy of the weights.
class MhaDecoder {
 public:
  /// Copies `w` (std::invalid_argument if its sizes are zero or do not divide); the cache starts
  /// empty.
  explicit MhaDecoder(const MhaWeights& w);
  /// New tokens at positions cached_tokens() .. cached_tokens()+n-1, each seeing every cached
  /// token and the new ones before it.
  /// @param x_new (n, d_model)
  /// @return      (n, d_model), the same rows mha_forward gives for these positions
  Mat step(const Mat& x_new);
  /// Tokens held in the cache.
  std::size_t cached_tokens() const { return cache_.tokens(); }
  /// Numbers held in the cache: 2 · n_kv_heads · head_dim · cached_tokens().
  std::size_t cache_floats() const { return cache_.floats(); }

 private:
  MhaWeights w_;
  ch02::KvCache cache_;  // chapter 2's cache, one layer of width n_kv_heads·head_dim
};

/// @}

}  // namespace mla::ch03
