/// @file optimized_mla.hpp
/// @brief Chapter 7: the absorbed MLA decode step as a real kernel — the problem sizes, the
///        inputs in every layout the kernels read, and the list of kernels to validate and time.
///
/// The kernels themselves live in kernels/ (one file per family, each opening with a menu of
/// its numbered versions): mla_decode (v1..v6), mha_decode (the baseline), mla_blas (the peer),
/// roofline (this machine's ceilings); flash_decoding holds what mla_decode and mha_decode share.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "07_optimized_mla/kernels/mha_decode.hpp"
#include "07_optimized_mla/kernels/mla_blas.hpp"
#include "07_optimized_mla/kernels/mla_decode.hpp"
#include "07_optimized_mla/kernels/roofline.hpp"
#include "07_optimized_mla/latent_cache.hpp"

namespace mla::ch07 {

/// @defgroup ch07 Chapter 7 — Optimized MLA decode
/// @brief SIMD, head blocking, fused softmax, threads and a bf16 cache for the absorbed decode
///        step, measured against the machine's own limits and against MHA and OpenBLAS.
/// @{

/// Sizes of one decode step of one layer (DeepSeek-V3 defaults: H = 128, d_c = 512, d_r = 64).
struct MlaProblem {
  std::size_t batch = 1,  ///< B: sequences decoded together
      heads = 128,        ///< H: query heads, all reading the same latent cache
      context = 4096,     ///< T: tokens cached per sequence
      d_c = 512,          ///< latent width (kv_lora_rank)
      d_r = 64;           ///< rope-key width (qk_rope_head_dim)
};

/// FLOPs of one absorbed decode step: per (sequence, head, token) a score over d_c + d_r numbers
/// and a weighted sum over d_c: 2(d_c + d_r) + 2 d_c (softmax's exps are not counted).
double mla_flops(const MlaProblem& p);
/// Bytes one step must read: the cache, once (T (d_c + d_r) numbers per sequence), plus the
/// queries and the output.
double mla_bytes(const MlaProblem& p, CacheType type);

/// Sizes of one MHA decode step with the same number of heads (key width d_k, value width d_v).
struct MhaProblem {
  std::size_t batch = 1,  ///< B: sequences decoded together
      heads = 128,        ///< H: heads, each with its own K and V
      context = 4096,     ///< T: tokens cached per sequence
      d_k = 128,          ///< key width per head
      d_v = 128;          ///< value width per head
};
double mha_flops(const MhaProblem& p);  ///< 2 d_k + 2 d_v per (sequence, head, token)
double mha_bytes(const MhaProblem& p);  ///< every K and V number once, 4 bytes each

/// The inputs of one MLA decode step, the same numbers in each layout a kernel reads.
struct MlaInputs {
  MlaProblem dims;                ///< the sizes these inputs were made for
  float scale = 1.0f;             ///< softmax scale, applied to every score
  std::vector<float> q_lat;       ///< (B, H, d_c)
  std::vector<float> q_rope;      ///< (B, H, d_r)
  std::vector<float> flat;        ///< (B, T, d_c + d_r) rows [c_kv | k_rope]: v1, v2, blas
  std::vector<LatentCache> f32;   ///< B tiled caches: v3, v4, v5
  std::vector<LatentCache> bf16;  ///< B tiled bf16 caches: v6 (empty if not asked for)
  std::vector<LatentCache> fp8;   ///< B tiled FP8 caches: v7 (empty if not asked for)
  std::vector<SeqRef> seqs_f32,   ///< (B): each f32 cache with its T tokens
      seqs_bf16,                  ///< (B): each bf16 cache with its T tokens (empty if no bf16)
      seqs_fp8;                   ///< (B): each FP8 cache with its T tokens (empty if no fp8)

  /// Random inputs: unit-variance cache entries, queries of std 1, scale 1/sqrt(d_nope + d_r)
  /// with d_nope = 128 (DeepSeek's). A fast generator, so that gigabyte caches fill in seconds.
  /// with_low_precision: also the bf16 and FP8 copies of the cache (v6, v7).
  static MlaInputs random(const MlaProblem& p, std::uint64_t seed, bool with_low_precision = true);
  /// The arguments of a step writing to `out` (B, H, d_c).
  DecodeArgs args(float* out, int threads) const;
  /// Bytes these inputs hold.
  double bytes_held() const;
};

/// The inputs of one MHA decode step.
struct MhaInputs {
  MhaProblem dims;               ///< the sizes these inputs were made for
  float scale = 1.0f;            ///< softmax scale, 1/sqrt(d_k)
  std::vector<float> q;          ///< (B, H, d_k)
  std::vector<MhaCache> caches;  ///< B caches of T tokens, H heads each

  /// Random inputs: unit-variance queries and cache entries, scale 1/sqrt(d_k). The fast
  /// generator of MlaInputs::random, so that a 4 GB MHA cache fills in seconds.
  static MhaInputs random(const MhaProblem& p, std::uint64_t seed);
  /// The arguments of a step writing to `out` (B, H, d_v).
  MhaArgs args(float* out, int threads) const;
};

/// One kernel of the menu, runnable on MlaInputs or MhaInputs.
struct Kernel {
  std::string name;                  ///< "v1".."v13", "mha_v1", "mha_v2", "blas"
  std::string summary;               ///< one line: what changed
  bool mha = false;                  ///< reads MhaInputs (else MlaInputs)
  bool threaded = false;             ///< uses RunOptions::threads (else runs on one thread)
  CacheType dtype = CacheType::F32;  ///< the cache an MLA kernel reads: F32, BF16 (v6) or FP8 (v7)
  /// Runs an MLA kernel (mha false): writes (B, H, d_c) to `out`, on `threads` threads if threaded.
  void (*run_mla)(const MlaInputs&, float* out, int threads) = nullptr;
  /// Runs an MHA kernel (mha true): writes (B, H, d_v) to `out`, on `threads` threads if threaded.
  void (*run_mha)(const MhaInputs&, float* out, int threads) = nullptr;
};

/// Every kernel, in menu order: v1..v13, mha_v1, mha_v2, blas.
const std::vector<Kernel>& kernels();
/// The kernel called `name`, or nullptr.
const Kernel* find_kernel(const std::string& name);

/// Bytes of memory the inputs of a problem need (for mla::check_memory before allocating).
double mla_inputs_bytes(const MlaProblem& p, bool with_low_precision);
/// The same for MHA: mha_bytes(p), the cache, the queries and the output.
double mha_inputs_bytes(const MhaProblem& p);

/// v1 on a subset of heads: `heads` (indices) of every sequence; out (B, heads.size(), d_c).
/// Validates the fast kernels at sizes where v1 on every head would take too long.
void reference_heads(const MlaInputs& in, const std::vector<std::size_t>& heads, float* out);
/// The same for MHA: mha_v1's arithmetic on `heads` only; out (B, heads.size(), d_v).
void reference_mha_heads(const MhaInputs& in, const std::vector<std::size_t>& heads, float* out);

/// @}

}  // namespace mla::ch07
