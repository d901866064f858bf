/// @file latent.hpp
/// @brief Chapter 4: low-rank key-value joint compression. Every token is squeezed into one
///        latent vector c_KV of d_c numbers; only the latents are cached, and each head's keys
///        and values are rebuilt from them (DeepSeek-V2, eqs. 9–11, without positions yet).
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "03_multi_head/multi_head.hpp"
#include "mla/random.hpp"
#include "mla/rows.hpp"
#include "mla/tensor.hpp"

namespace mla::ch04 {

/// @defgroup ch04 Chapter 4 — Low-rank latents
/// @brief Cache one latent of d_c numbers per token instead of 2·n_h·d_h; rebuild K and V from it.
/// @{

/// The sizes of a latent attention layer (no positional part yet: that is chapter 6).
struct LatentShape {
  std::size_t d_model = 0;  ///< width of the layer's input h
  std::size_t heads = 0;    ///< n_h
  std::size_t d_k = 0;      ///< per-head query/key width d_h (DeepSeek: qk_nope_head_dim)
  std::size_t d_v = 0;      ///< per-head value width (DeepSeek: v_head_dim)
  std::size_t d_c = 0;      ///< latent width d_c (DeepSeek: kv_lora_rank)
};

/// The weights of one latent attention layer, in the (out, in) layout of checkpoint Linear
/// weights (`y = x · Wᵀ`).
///
/// `W_ukv` is stored the way DeepSeek checkpoints store `kv_b_proj`: one
/// (heads·(d_k + d_v), d_c) matrix in which head h's block of d_k + d_v rows starts at row
/// h·(d_k + d_v), its d_k key rows (W_UK of head h) first, then its d_v value rows (W_UV of head
/// h). split_kv_up() takes it apart into the paper's W^UK and W^UV.
struct LatentWeights {
  std::size_t heads = 0,  ///< n_h
      d_k = 0,            ///< per-head query/key width d_h
      d_v = 0,            ///< per-head value width
      d_c = 0;            ///< latent width: the numbers cached per token
  Mat W_q;                ///< (heads·d_k, d_model): q = W^Q h
  Mat W_dkv;              ///< (d_c, d_model): c_KV = W^DKV h, the down-projection (eq. 9)
  Mat W_ukv;  ///< (heads·(d_k + d_v), d_c): k^C = W^UK c_KV, v^C = W^UV c_KV (eqs. 10–11)
  Mat W_o;    ///< (d_model, heads·d_v): u = W^O [o_1; …; o_H]

  /// Width of the layer's input and output (columns of W_q).
  std::size_t d_model() const { return W_q.shape(1); }
  /// The sizes, for the functions that need only those.
  LatentShape shape() const { return {d_model(), heads, d_k, d_v, d_c}; }
  /// Throws std::invalid_argument naming the first matrix whose shape disagrees with the sizes.
  void check() const;
};

/// Random weights, each drawn as Rng::linear_weight (N(0, 1/fan_in)); d_v = d_k when 0.
/// Throws std::invalid_argument if a size is zero.
LatentWeights random_latent(std::size_t d_model, std::size_t heads, std::size_t d_k,
                            std::size_t d_c, Rng& rng, std::size_t d_v = 0);

/// The paper's W^UK and W^UV, taken out of the kv_b_proj layout.
struct KvUp {
  Mat W_uk;  ///< (heads·d_k, d_c): rows h·d_k … h·d_k + d_k − 1 are head h's W^UK_h
  Mat W_uv;  ///< (heads·d_v, d_c): rows h·d_v … h·d_v + d_v − 1 are head h's W^UV_h
};

/// Split a kv_b_proj-layout matrix into W^UK and W^UV.
/// @param W_ukv (heads·(d_k + d_v), d_c), per head d_k key rows then d_v value rows
KvUp split_kv_up(const Mat& W_ukv, std::size_t heads, std::size_t d_k, std::size_t d_v);

/// The inverse of split_kv_up: interleave W^UK (heads·d_k, d_c) and W^UV (heads·d_v, d_c) into
/// the kv_b_proj layout (heads·(d_k + d_v), d_c).
Mat join_kv_up(const Mat& W_uk, const Mat& W_uv, std::size_t heads);

/// The plain multi-head layer this latent layer computes: W_K = W^UK·W^DKV and
/// W_V = W^UV·W^DKV, each (heads·d_k, d_model). A latent layer *is* an MHA layer whose key and
/// value projections have rank at most d_c; it only stores (and caches) them factorized.
/// Requires d_v == d_k (chapter 3's layer has one head width).
ch03::MhaWeights equivalent_mha(const LatentWeights& w);

/// Eq. 9 for a batch of tokens: c_KV = W^DKV h.
/// @param x (T, d_model) -> @return (T, d_c)
Mat compress_kv(const Mat& x, const LatentWeights& w);

/// Eqs. 10–11 for a batch of latents, in the kv_b_proj layout.
/// @param c_kv (T, d_c) -> @return (T, heads·(d_k + d_v)): row t holds, per head h, the d_k
///        numbers of k_{t,h} followed by the d_v numbers of v_{t,h}
Mat expand_kv(const Mat& c_kv, const LatentWeights& w);

/// Multi-head attention of n queries against T rebuilt keys and values, causal, scale
/// 1/sqrt(d_k); each head runs chapter 1's attention on its slice.
/// @param q     (n, heads·d_k) queries at positions T − n … T − 1
/// @param kv    (T, heads·(d_k + d_v)) keys and values as expand_kv returns them (only the first
///              T rows are read, so a bigger workspace may be passed)
/// @param T     tokens in kv
/// @return      (n, heads·d_v), the heads' outputs side by side (before W^O)
Mat attend_expanded(const Mat& q, const Mat& kv, std::size_t T, const LatentShape& s);

/// The whole latent layer on a sequence, causal: compress (eq. 9), expand (eqs. 10–11), attend,
/// project out.
/// @param x (T, d_model) -> @return (T, d_model)
Mat latent_forward(const Mat& x, const LatentWeights& w);

/// The latent cache: c_KV of every past token, (size(), d_c) row-major, and nothing else.
/// Grows by doubling, so appending a token costs O(d_c) amortized.
class LatentCache {
 public:
  /// An empty cache of latents `d_c` numbers wide.
  explicit LatentCache(std::size_t d_c = 0) : d_c_(d_c) {}
  /// Append n latents. @param c (n, d_c)
  void append(const Mat& c);
  /// Forget every token from position `tokens` on (a rollback: nothing is recomputed).
  void truncate(std::size_t tokens);
  /// Tokens cached.
  std::size_t size() const { return size_; }
  /// d_c, the numbers per token.
  std::size_t width() const { return d_c_; }
  /// Row-major (size(), d_c); valid until the next append.
  const float* data() const { return data_.data(); }
  /// The cached latents as rows: (size(), d_c); valid until the next append.
  RowView<const float> view() const { return {data_.data(), size_, d_c_}; }
  /// Numbers held: size()·d_c.
  std::size_t floats() const { return size_ * d_c_; }

 private:
  std::size_t d_c_ = 0, size_ = 0;
  std::vector<float> data_;  // capacity ≥ size_·d_c_
};

/// Cached decoding that caches only the latents and rebuilds every head's keys and values from
/// the whole latent cache at every step (eqs. 10–11 applied to all T cached latents: the honest,
/// slow way; chapter 5 removes the rebuild).
///
/// Keeps a pointer to the weights: they must outlive the decoder.
class LatentDecoder {
 public:
  /// Checks `w` (LatentWeights::check) and keeps a pointer to it; the cache starts empty.
  explicit LatentDecoder(const LatentWeights& w);
  /// New tokens at positions cached_tokens() … cached_tokens() + n − 1.
  /// @param x_new (n, d_model) -> @return (n, d_model), the rows latent_forward gives there
  Mat step(const Mat& x_new);
  /// The attention part of step(), between the projections: rebuild the keys and values of all
  /// cached tokens from their latents, then attend.
  /// @param q (n, heads·d_k) queries of the last n cached tokens -> @return (n, heads·d_v), the
  ///          heads' outputs before W^O
  Mat attend_cached(const Mat& q);
  /// Put latents straight into the cache without computing outputs (to set up a long context
  /// quickly for a benchmark). @param c_kv (n, d_c)
  void append_latents(const Mat& c_kv) { cache_.append(c_kv); }
  /// Drop every token from position `tokens` on.
  void truncate(std::size_t tokens) { cache_.truncate(tokens); }
  /// Tokens in the cache: the position of the next token.
  std::size_t cached_tokens() const { return cache_.size(); }
  /// Numbers held in the cache: d_c · cached_tokens().
  std::size_t cache_floats() const { return cache_.floats(); }
  /// The latents of every cached token, (cached_tokens(), d_c).
  const LatentCache& cache() const { return cache_; }

 private:
  const LatentWeights* w_;
  LatentCache cache_;
  Mat kv_;  // workspace (rows ≥ T, heads·(d_k + d_v)): the keys and values rebuilt each step
};

// ---------------------------------------------------------------------------------------------
// Why a low-rank latent can work: truncated SVD of a key/value projection
// ---------------------------------------------------------------------------------------------

/// A singular value decomposition W = U · diag(s) · Vᵀ of an (m, n) matrix, thin (r = min(m, n)).
struct Svd {
  Mat U;   ///< (m, r), orthonormal columns
  Vec s;   ///< (r), descending
  Mat Vt;  ///< (r, n), orthonormal rows
};

/// Thin SVD through LAPACK (`xt::linalg::svd`, sgesdd).
Svd svd(const Mat& W);

/// The best rank-r factorization of W (Eckart–Young): W ≈ up · down.
struct LowRank {
  Mat down;  ///< (r, n) = V_rᵀ: the compression, the role of W^DKV
  Mat up;    ///< (m, r) = U_r · diag(s_r): the decompression, the role of W^UKV
};

/// Keep the `rank` largest singular triplets of a decomposition (rank <= s.size()).
LowRank truncate(const Svd& d, std::size_t rank);

/// ‖A − B‖_F / ‖B‖_F, in double precision.
double relative_frobenius_error(const Mat& A, const Mat& B);

/// @}

}  // namespace mla::ch04
