/// @file optimized_mla.hpp
/// @brief Chapter 7: the absorbed MLA decode step as a real kernel — the problem sizes, the
///        inputs in every layout the kernels read, and the list of kernels to validate and time.
///
/// The kernels themselves live in kernels/ (one file per family, each opening with a menu of
/// its numbered versions): mla_decode (v1..v6), mha_decode (the baseline), mla_blas (the peer),
/// roofline (this machine's ceilings).
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
  std::size_t batch = 1, heads = 128, context = 4096, d_c = 512, d_r = 64;
};

/// FLOPs of one absorbed decode step: per (sequence, head, token) a score over d_c + d_r numbers
/// and a weighted sum over d_c: 2(d_c + d_r) + 2 d_c (softmax's exps are not counted).
double mla_flops(const MlaProblem& p);
/// Bytes one step must read: the cache, once (T (d_c + d_r) numbers per sequence), plus the
/// queries and the output.
double mla_bytes(const MlaProblem& p, CacheType type);

/// Sizes of one MHA decode step with the same number of heads (key width d_k, value width d_v).
struct MhaProblem {
  std::size_t batch = 1, heads = 128, context = 4096, d_k = 128, d_v = 128;
};
double mha_flops(const MhaProblem& p);  ///< 2 d_k + 2 d_v per (sequence, head, token)
double mha_bytes(const MhaProblem& p);  ///< every K and V number once, 4 bytes each

/// The inputs of one MLA decode step, the same numbers in each layout a kernel reads.
struct MlaInputs {
  MlaProblem dims;
  float scale = 1.0f;
  std::vector<float> q_lat;       ///< (B, H, d_c)
  std::vector<float> q_rope;      ///< (B, H, d_r)
  std::vector<float> flat;        ///< (B, T, d_c + d_r) rows [c_kv | k_rope]: v1, v2, blas
  std::vector<LatentCache> f32;   ///< B tiled caches: v3, v4, v5
  std::vector<LatentCache> bf16;  ///< B tiled bf16 caches: v6 (empty if not asked for)
  std::vector<SeqRef> seqs_f32, seqs_bf16;  ///< (cache, T) per sequence

  /// Random inputs: unit-variance cache entries, queries of std 1, scale 1/sqrt(d_nope + d_r)
  /// with d_nope = 128 (DeepSeek's). A fast generator, so that gigabyte caches fill in seconds.
  static MlaInputs random(const MlaProblem& p, std::uint64_t seed, bool with_bf16 = true);
  /// The arguments of a step writing to `out` (B, H, d_c).
  DecodeArgs args(float* out, int threads) const;
  /// Bytes these inputs hold.
  double bytes_held() const;
};

/// The inputs of one MHA decode step.
struct MhaInputs {
  MhaProblem dims;
  float scale = 1.0f;
  std::vector<float> q;  ///< (B, H, d_k)
  std::vector<MhaCache> caches;
  static MhaInputs random(const MhaProblem& p, std::uint64_t seed);
  MhaArgs args(float* out, int threads) const;
};

/// One kernel of the menu, runnable on MlaInputs or MhaInputs.
struct Kernel {
  std::string name;     ///< "v1".."v6", "mha_v1", "mha_v2", "blas"
  std::string summary;  ///< one line: what changed
  bool mha = false;     ///< reads MhaInputs (else MlaInputs)
  bool threaded = false;
  CacheType dtype = CacheType::F32;
  void (*run_mla)(const MlaInputs&, float* out, int threads) = nullptr;
  void (*run_mha)(const MhaInputs&, float* out, int threads) = nullptr;
};

/// Every kernel, in menu order: v1..v6, mha_v1, mha_v2, blas.
const std::vector<Kernel>& kernels();
/// The kernel called `name`, or nullptr.
const Kernel* find_kernel(const std::string& name);

/// Bytes of memory the inputs of a problem need (for mla::check_memory before allocating).
double mla_inputs_bytes(const MlaProblem& p, bool with_bf16);
double mha_inputs_bytes(const MhaProblem& p);

/// v1 on a subset of heads: `heads` (indices) of every sequence; out (B, heads.size(), d_c).
/// Validates the fast kernels at sizes where v1 on every head would take too long.
void reference_heads(const MlaInputs& in, const std::vector<std::size_t>& heads, float* out);
void reference_mha_heads(const MhaInputs& in, const std::vector<std::size_t>& heads, float* out);

/// @}

}  // namespace mla::ch07
