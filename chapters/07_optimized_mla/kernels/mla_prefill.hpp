/// @file mla_prefill.hpp
/// @brief Prefill of a chunk of S new tokens after T cached ones, in the two modes inference
///        engines switch between: decompress keys and values and run ordinary causal attention
///        ("MHA mode", head dims d_nope + d_r = 192 for keys and d_v = 128 for values), or stay
///        absorbed and attend on the latent ("MQA mode", 576 / 512) — and the cost model that
///        chooses between them per chunk.
///
/// Both modes run one kernel, causal flash attention of a block of query rows against key tiles
/// (`flash_rows` in mla_prefill.cpp): query rows in SIMD lanes (two vectors of them), a tile of
/// 64 keys at a time, scores and weighted sum by register-blocked micro-kernels, an online
/// softmax per lane (flash_decoding.hpp's rescale_factor). What differs is what a "key" is:
///  - MHA mode: per head h its own decompressed keys [k_rope | k_nope_h] (d_r + d_nope) and values
///    v_h (d_v), made from the latents of all T + S tokens once per chunk by kv_b_proj;
///  - MQA mode: the cached latent rows [c_kv | k_rope] (d_c + d_r), the same for every head, with
///    the value the latent itself (d_c): all S·H (query, head) rows share each tile of the cache.
///
/// FLOPs, counted honestly (a causal chunk: query i of the chunk sees T + i + 1 keys, so
/// P = S·T + S(S+1)/2 (query, key) pairs per head; masked pairs the kernels compute anyway on the
/// diagonal tiles are not counted):
///
///     decompress (MHA)     2 · (T+S) · d_c · H · (d_nope + d_v)
///     attention  (MHA)     2 · P · H · (d_nope + d_r + d_v)
///     absorb + expand (MQA) 2 · S · H · d_c · (d_nope + d_v)
///     attention  (MQA)     2 · P · H · (d_c + d_r + d_c)
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "07_optimized_mla/latent_cache.hpp"

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// The widths of one MLA layer that a prefill needs.
struct PrefillDims {
  std::size_t heads = 16;    ///< H: query heads
  std::size_t d_c = 512;     ///< latent width (kv_lora_rank)
  std::size_t d_r = 64;      ///< decoupled rope width
  std::size_t d_nope = 128;  ///< per-head key width without position
  std::size_t d_v = 128;     ///< per-head value width
  /// Per-head key width of MHA mode: d_nope + d_r.
  std::size_t d_qk() const { return d_nope + d_r; }
};

/// (query, key) pairs a causal chunk of S queries after T cached tokens computes per head:
/// S·T + S(S+1)/2 (query i sees T + i + 1 keys).
double causal_pairs(std::size_t S, std::size_t T);
/// FLOPs of decompressing the keys and values of n tokens: 2·n·d_c·H·(d_nope + d_v).
double decompress_flops(const PrefillDims& d, std::size_t n);
/// FLOPs of MHA mode's attention on a chunk: 2·P·H·(d_nope + d_r + d_v).
double mha_attention_flops(const PrefillDims& d, std::size_t S, std::size_t T);
/// FLOPs of MQA mode's attention on a chunk: 2·P·H·(2·d_c + d_r).
double mqa_attention_flops(const PrefillDims& d, std::size_t S, std::size_t T);
/// FLOPs of absorbing S queries through W_UK and expanding S outputs through W_UV:
/// 2·S·H·d_c·(d_nope + d_v).
double absorb_flops(const PrefillDims& d, std::size_t S);

/// kv_b_proj packed for the decompression's micro-kernel: per head, panels of 2·(SIMD width)
/// output columns ([k_nope | v] of the head, zero beyond), each (d_c, panel width) so that the
/// micro-kernel streams it with a fixed stride. Made once per layer (the weights do not change).
class PackedKvUp {
 public:
  /// kv_b_proj: (H·(d_nope + d_v), d_c) row-major, per head d_nope rows of W_UK then d_v rows of
  /// W_UV (chapter 4's layout).
  PackedKvUp(const float* kv_b_proj, const PrefillDims& d);
  /// The widths it was packed for.
  const PrefillDims& dims() const { return dims_; }
  /// Panels per head: ceil((d_nope + d_v) / panel width).
  std::size_t panels() const { return panels_; }
  /// Panel p of head h: (d_c, panel width) floats, 64-byte aligned.
  const float* panel(std::size_t h, std::size_t p) const;

 private:
  PrefillDims dims_;
  std::size_t panels_;
  std::vector<float, xsimd::aligned_allocator<float, 64>> data_;
};

/// The decompressed keys and values of n tokens, per head one contiguous block of rows
/// [k_rope (d_r) | k_nope_h (d_nope) | v_h (d_v) | padding] of ld() floats: a key is the first
/// d_qk numbers of a row, its value the d_v after them. (H, n, ld).
class MhaKv {
 public:
  /// Heads, tokens and widths held.
  const PrefillDims& dims() const { return dims_; }
  /// Tokens held.
  std::size_t tokens() const { return tokens_; }
  /// Floats per row.
  std::size_t ld() const { return ld_; }
  /// Head h's rows: (tokens(), ld()).
  const float* head(std::size_t h) const { return data_.data() + h * tokens_ * ld_; }
  /// Bytes held.
  double bytes() const { return 4.0 * static_cast<double>(data_.size()); }

 private:
  friend void decompress_kv(const LatentCache&, std::size_t, const PackedKvUp&, int, MhaKv&);
  PrefillDims dims_;
  std::size_t tokens_ = 0, ld_ = 0;
  std::vector<float, xsimd::aligned_allocator<float, 64>> data_;
};

/// MHA mode, step 1: decompress the first n tokens of an fp32 latent cache with kv_b_proj
/// (`w`), one GEMM (n, d_c) · (d_c, H·(d_nope + d_v)) by the same register-blocked micro-kernel
/// as the scores, on `threads` threads (items: tile × head), and copy the shared rope key into
/// every head's rows. `out` is resized (its memory kept across calls).
void decompress_kv(const LatentCache& cache, std::size_t n, const PackedKvUp& w, int threads,
                   MhaKv& out);

/// MHA mode, step 2: causal flash attention per head. q: (S, H, d_nope + d_r), per head
/// [q_nope | q_rope] (the layer's rotated queries); kv: decompressed keys and values of
/// start + S tokens (at least); out: (S, H, d_v). Query i (position start + i) sees keys
/// 0..start+i. Threads over (head, block of query rows).
void mha_prefill(const MhaKv& kv, const float* q, std::size_t S, std::size_t start, float scale,
                 float* out, int threads);

/// MHA mode as a BLAS user writes it, the peer of mha_prefill: per head one cblas_sgemm for the
/// scores (S, start + S) of every key, the causal mask and a softmax per row, one cblas_sgemm
/// for the weighted sum. Same arguments and result. OpenBLAS on `threads` threads.
void mha_prefill_blas(const MhaKv& kv, const float* q, std::size_t S, std::size_t start,
                      float scale, float* out, int threads);

/// MQA mode: absorbed attention of S queries on an fp32 latent cache, all S·H (query, head)
/// rows sharing each tile of the cache. q_lat: (S, H, d_c) absorbed queries, q_rope: (S, H, d_r)
/// rotated; out: (S, H, d_c) = softmax(scale·(q_lat·Cᵀ + q_rope·K_Rᵀ)) · C over keys
/// 0..start+i for query i (chapter 6's LatentAttention::attend). Threads over blocks of rows.
void mqa_prefill(const LatentCache& cache, std::size_t heads, const float* q_lat,
                 const float* q_rope, std::size_t S, std::size_t start, float scale, float* out,
                 int threads);

/// The two modes of a prefill chunk.
enum class PrefillMode { MHA, MQA };
/// "mha" / "mqa".
std::string prefill_mode_name(PrefillMode m);

/// Measured speeds (GFLOP/s, by the FLOP counts above) the cost model turns FLOPs into time with.
struct PrefillRates {
  double decompress = 0.0;  ///< decompress_kv
  double mha = 0.0;         ///< mha_prefill's attention
  double mqa = 0.0;         ///< mqa_prefill's attention
  double absorb = 0.0;      ///< absorbing queries and expanding outputs (chapter 5's GEMMs)
};

/// What the cost model predicts for one chunk, and its choice (the faster prediction).
struct PrefillChoice {
  double mha_seconds = 0.0;             ///< decompress (T+S tokens) + MHA attention
  double mqa_seconds = 0.0;             ///< absorb + expand + MQA attention
  PrefillMode mode = PrefillMode::MQA;  ///< MHA if mha_seconds < mqa_seconds
};

/// Chapter 5's S* with measured rates: the time of each mode on a chunk of S after T tokens is
/// its FLOPs (above) over the rate of each part; the faster mode is chosen.
PrefillChoice choose_prefill_mode(const PrefillDims& d, std::size_t S, std::size_t T,
                                  const PrefillRates& r);

/// The smallest chunk S (1..max_S) at which the cost model picks MHA mode after T cached tokens,
/// or 0 if it never does up to max_S: the measured S*.
std::size_t prefill_crossover(const PrefillDims& d, std::size_t T, const PrefillRates& r,
                              std::size_t max_S = 1 << 16);

/// A one-off calibration: times decompress_kv, mha_prefill and mqa_prefill (a chunk of 256 after
/// 256 tokens) and chapter 5's absorb_query + expand_output (256 queries) at these widths on
/// `threads` threads, best of 5 each, and returns their rates. Remembered per (dims, threads) for
/// the process: the first call costs about a second at DeepSeek's widths on a loaded 2-core
/// machine, later ones nothing.
PrefillRates calibrated_prefill_rates(const PrefillDims& d, int threads);

/// @}

}  // namespace mla::ch07
