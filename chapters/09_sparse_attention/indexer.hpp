/// @file indexer.hpp
/// @brief DeepSeek-V3.2's lightning indexer: its weights (one list, as chapter 6's), the
///        Hadamard rotation, the FP8 step, the indexer key cache, and the index scores.
///
/// For a call with N = B·S tokens (x the layer input, qr MLA's normalised query latent):
///
///     qI (N, HI, DI) = qr · W_qbᵀ            per head: RoPE_half(first r features) -> Hadamard
///     kI (N, DI)     = LayerNorm(x · W_kᵀ)   (with bias) RoPE_half(first r) -> Hadamard -> cache
///     w  (N, HI)     = x · W_wᵀ · HI^-0.5    signed head weights, no softmax
///     I[s, t]        = Σ_h w[s,h] · DI^-0.5 · ReLU(qI[s,h,:] · kI[t,:])
///
/// r = qk_rope_head_dim; RoPE_half rotates the pairs (x[i], x[i + r/2]) ("rotate half", NOT
/// MLA's interleaved pairs: DeepSeek's fix of 2025-11-17). The FP8 path quantizes qI and kI
/// after the Hadamard (blocks of min(128, DI) numbers, one power-of-two scale each, e4m3fn).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "06_decoupled_rope/mla_weights.hpp"
#include "06_decoupled_rope/rope.hpp"
#include "09_sparse_attention/dsa_config.hpp"
#include "mla/checkpoint.hpp"
#include "mla/random.hpp"
#include "mla/safetensors_writer.hpp"
#include "mla/tensor.hpp"

namespace mla::ch09 {

/// @addtogroup ch09
/// @{

/// The indexer's weights, named as a V3.2 checkpoint stores them
/// (`model.layers.N.self_attn.indexer.<name>`). HI = index_n_heads, DI = index_head_dim.
struct DsaIndexerWeights {
  Mat wq_b;          ///< (HI·DI, q_lora_rank): queries from MLA's normalised query latent
  Mat wk;            ///< (DI, d_model): one key per token, shared by every indexer head
  Vec k_norm;        ///< (DI): the key LayerNorm's weight
  Vec k_norm_bias;   ///< (DI): the key LayerNorm's bias
  Mat weights_proj;  ///< (HI, d_model): per-token, per-head mixing weights
};

namespace detail {

/// THE list of the indexer's tensors, in checkpoint order; W is DsaIndexerWeights or const.
template <class W, class Fn>
void for_each_indexer_weight(W& w, const DsaConfig& cfg, Fn& fn) {
  using ch06::WeightShape;
  const std::size_t HI = cfg.index_n_heads, DI = cfg.index_head_dim, D = cfg.mla.hidden_size;
  const std::size_t r = cfg.mla.q_lora_rank.value_or(0);
  fn("self_attn.indexer.wq_b.weight", w.wq_b, WeightShape{HI * DI, r});
  fn("self_attn.indexer.wk.weight", w.wk, WeightShape{DI, D});
  fn("self_attn.indexer.k_norm.weight", w.k_norm, WeightShape{DI});
  fn("self_attn.indexer.k_norm.bias", w.k_norm_bias, WeightShape{DI});
  fn("self_attn.indexer.weights_proj.weight", w.weights_proj, WeightShape{HI, D});
}

}  // namespace detail

/// Call `fn(name, tensor, shape)` for every indexer tensor (names below the layer, e.g.
/// "self_attn.indexer.wk.weight"), as ch06::for_each_weight does for MLA's; with_prefix works
/// the same way.
template <class Fn>
void for_each_weight(DsaIndexerWeights& w, const DsaConfig& cfg, Fn&& fn) {
  detail::for_each_indexer_weight(w, cfg, fn);
}
/// The same over weights that are only read.
template <class Fn>
void for_each_weight(const DsaIndexerWeights& w, const DsaConfig& cfg, Fn&& fn) {
  detail::for_each_indexer_weight(w, cfg, fn);
}

/// Check every indexer weight's shape: InputError "indexer.<name>: expected shape [..], found
/// [..]".
void check_indexer_weights(const DsaIndexerWeights& w, const DsaConfig& cfg);

/// Load layer `layer`'s indexer weights (any dtype the loader converts), shapes checked, values
/// finite; a missing tensor is an InputError naming it.
DsaIndexerWeights load_indexer_weights(const Checkpoint& ckpt, const DsaConfig& cfg,
                                       std::size_t layer);

/// Random indexer weights: Linear weights N(0, 1/fan_in), k_norm 1 + N(0, 0.1²), bias N(0, 0.1²).
DsaIndexerWeights random_indexer_weights(const DsaConfig& cfg, Rng& rng);

/// The indexer's tensors under `model.layers.<layer>.` names, stored as `dtype`.
std::vector<TensorData> indexer_weight_tensors(const DsaIndexerWeights& w, const DsaConfig& cfg,
                                               std::size_t layer, DType dtype);

/// @name The indexer's pieces
/// @{

/// The fast Walsh–Hadamard transform in place, scaled: x (n) <- H_n x / sqrt(n), H_n Sylvester's
/// (H[i][j] = (-1)^popcount(i & j)), n a power of two (std::invalid_argument otherwise).
/// n·log2(n) additions instead of the n² of the matrix product.
void hadamard(float* x, std::size_t n);

/// "Rotate half" RoPE of x (dim()) at position `pos` with the frequencies of `rope`: the pairs
/// (x[i], x[i + d/2]) turn by pos·freq_i. (ch06::Rope::rotate turns (x[2i], x[2i+1]).)
void rotate_half(const ch06::Rope& rope, float* x, std::size_t pos);

/// DeepSeek's ue8m0 FP8 scale of a block with largest magnitude `amax`: the power of two
/// 2^ceil(log2(max(amax, 1e-4) / 448)), computed on the float max(amax,1e-4)·(1/448) as the
/// reference's fast_round_scale does (exponent field, +1 if the mantissa is not zero).
float ue8m0_scale(float amax);

/// Quantize n numbers in blocks of `block`: codes (n) e4m3fn of clamp(x/s, ±448), round to
/// nearest even; scales (ceil(n/block)) the blocks' ue8m0 scales.
void quantize_fp8_blocks(const float* x, std::size_t n, std::size_t block, std::uint8_t* codes,
                         float* scales);

/// The FP8 block the indexer uses: min(128, DI) numbers.
inline std::size_t indexer_fp8_block(std::size_t DI) {
  return DI < 128 ? DI : 128;
}

/// @}

/// How the indexer computes (the reference's two modes, and the layout bug kept for tests).
struct IndexerOptions {
  bool fp8 = false;  ///< quantize qI and kI to e4m3 per block (the reference's deployed path)
  /// Rotate the indexer's rope part with MLA's interleaved pairs: the bug of the code released
  /// on 2025-09-29. Only for the regression test that shows it changes the scores.
  bool interleaved_rope = false;
  /// Exact scores by the plain loops of scores_reference (the reference the fast path is tested
  /// against) instead of indexer_scores_fast.
  bool reference = false;
  /// Threads for the exact scores of one query (0: every hardware thread).
  int threads = 0;
};

/// The indexer key cache of ONE sequence, beside its latent cache: the rotated kI of every
/// token, as floats (exact path) or as e4m3 codes with one float scale per block (FP8 path:
/// DI + 4·DI/128 bytes per token, 132 at DI = 128).
class IndexerKeyCache {
 public:
  /// An empty cache of DI-wide keys, stored as floats or (fp8) as e4m3 codes and scales.
  IndexerKeyCache(std::size_t DI, bool fp8);
  /// Append n keys kI (n, DI), already rotated (RoPE, Hadamard); FP8 caches quantize them.
  void append(const float* k, std::size_t n);
  std::size_t size() const { return size_; }    ///< tokens cached
  std::size_t dim() const { return DI_; }       ///< DI
  bool fp8() const { return fp8_; }             ///< FP8 (e4m3) storage
  std::size_t block() const { return block_; }  ///< numbers per FP8 scale
  /// Bytes per cached token: 4·DI (exact) or DI + 4·ceil(DI/block) (FP8).
  std::size_t bytes_per_token() const;
  /// Exact cache: (size(), DI) floats.
  const float* keys() const { return keys_.data(); }
  /// FP8 cache: (size(), DI) e4m3 codes and (size(), DI/block) scales.
  const std::uint8_t* codes() const { return codes_.data(); }
  const float* scales() const { return scales_.data(); }  ///< (size(), DI/block) FP8 scales
  /// Key t dequantized (FP8) or as stored, into out (DI).
  void key(std::size_t t, float* out) const;

 private:
  std::size_t DI_, block_;
  bool fp8_;
  std::size_t size_ = 0;
  std::vector<float> keys_;
  std::vector<std::uint8_t> codes_;
  std::vector<float> scales_;
};

/// The indexer's queries and head weights of one call (N = B·S tokens), ready to score.
struct IndexerQueries {
  std::size_t N = 0;           ///< query tokens (B·S)
  std::size_t HI = 0;          ///< indexer heads
  std::size_t DI = 0;          ///< indexer head dim
  std::vector<float> q;        ///< (N, HI, DI) rotated (and dequantized, FP8) queries
  std::vector<float> w;        ///< (N, HI) head weights w·HI^-0.5 (signed)
  std::vector<float> q_code;   ///< FP8: (N, HI, DI) e4m3 values as floats (exact in float)
  std::vector<float> q_scale;  ///< FP8: (N, HI) one scale per (token, head) block (DI <= 128)
};

/// The lightning indexer of one layer over B sequences: projects, caches keys, scores.
class Indexer {
 public:
  /// `mla` provides qr's weights (q_a_proj, q_a_layernorm); both must outlive the indexer.
  Indexer(const DsaConfig& cfg, const ch06::MlaWeights& mla, const DsaIndexerWeights& w,
          std::size_t batch, IndexerOptions opt = {});

  /// Process N = B·S rows of the layer input h (N, d_model), token s of a row at position
  /// start + s: append the sequences' keys to their caches, return the queries and weights.
  IndexerQueries project(const Mat& h, std::size_t S, std::size_t start);

  /// Index scores of query row `n` (token s of sequence b, n = b·S + s) against cached tokens
  /// 0..visible-1 of sequence b: out (visible) = Σ_h w_h·DI^-0.5·ReLU(q_h · k_t). The exact path
  /// runs indexer_scores_fast (unless options().reference); the FP8 path the reference's loops.
  void scores(const IndexerQueries& q, std::size_t n, std::size_t b, std::size_t visible,
              float* out) const;
  /// The same scores by plain loops, one dot product at a time: the reference.
  void scores_reference(const IndexerQueries& q, std::size_t n, std::size_t b, std::size_t visible,
                        float* out) const;

  const IndexerKeyCache& cache(std::size_t b) const { return caches_[b]; }  ///< sequence b's keys
  const IndexerOptions& options() const { return opt_; }  ///< exact or FP8, RoPE layout
  /// The unrotated, un-normalised pieces, for the tests: qr (N, q_lora_rank) of h.
  Mat query_latent(const Mat& h) const;

 private:
  DsaConfig cfg_;
  const ch06::MlaWeights& mla_;
  const DsaIndexerWeights& w_;
  IndexerOptions opt_;
  ch06::Rope rope_;
  std::vector<IndexerKeyCache> caches_;
};

/// Exact index scores of one query against T keys, the fast way: K (T, DI) row-major keys, Q
/// (HI, DI) the query's heads, coef (HI) = w_h · DI^-0.5; out (T) = Σ_h coef_h · ReLU(K_t · Q_h).
/// Heads in the vector lanes: Q transposed once (DI, HI rounded up to a vector, zero-padded),
/// then per block of 6 keys (3 with AVX2) and per feature, 4 loads of Qt, 6 broadcasts of K and
/// 24 FMAs (4 vectors of heads × 6 keys), K read in place; the blocks are shared out
/// dynamically over `threads` OpenMP threads (0: every hardware thread).
/// The sums run in another order than scores_reference's: equal within float rounding.
void indexer_scores_fast(const float* K, std::size_t T, std::size_t DI, const float* Q,
                         std::size_t HI, const float* coef, float* out, int threads = 0);

/// Per query row: the `min(topk, visible)` tokens with the largest scores (ties: the lower
/// position first), written as positions into out (topk), descending score, padded with -1.
void select_topk(const float* scores, std::size_t visible, std::size_t topk, std::int32_t* out);

/// @}

}  // namespace mla::ch09
