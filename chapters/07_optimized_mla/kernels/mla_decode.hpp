/// @file mla_decode.hpp
/// @brief The absorbed MLA decode step, in numbered versions (see the menu in mla_decode.cpp).
///
/// For each sequence b and head h, with C the cached rows [c_kv | k_rope] of sequence b:
///
///     s_t        = scale · (q_lat[b,h,:] · C[t, :d_c] + q_rope[b,h,:] · C[t, d_c:])
///     p          = softmax(s)                      over the T cached tokens
///     out[b,h,:] = Σ_t p_t · C[t, :d_c]
///
/// All heads of a sequence read the same cache: that is what the faster versions exploit.
/// What v2..v6 share with the MHA baseline (dot_simd, the online softmax, the log-sum-exp
/// combine, the chunking of the cache) is in flash_decoding.hpp.
#pragma once

#include <cstddef>

#include "07_optimized_mla/latent_cache.hpp"

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// The queries and the output of one decode step (shapes in the member comments).
struct DecodeArgs {
  std::size_t batch = 1;          ///< B: sequences
  std::size_t heads = 1;          ///< H: query heads
  std::size_t d_c = 512;          ///< latent width
  std::size_t d_r = 64;           ///< rope width
  const float* q_lat = nullptr;   ///< (B, H, d_c) absorbed queries
  const float* q_rope = nullptr;  ///< (B, H, d_r) rotated rope queries
  float scale = 1.0f;    ///< softmax scale, 1/sqrt(d_nope + d_r) in DeepSeek (× YaRN mscale²)
  float* out = nullptr;  ///< (B, H, d_c) attention output in latent space
  int threads = 1;       ///< threads the threaded versions may use
};

/// The arguments of a decode step in one call: B sequences of H heads over latents of d_c and
/// rope keys of d_r numbers, the queries q_lat (B, H, d_c) and q_rope (B, H, d_r), the output
/// (B, H, d_c), the softmax scale and the threads (the pointers stay the caller's).
inline DecodeArgs make_decode_args(std::size_t batch, std::size_t heads, std::size_t d_c,
                                   std::size_t d_r, const float* q_lat, const float* q_rope,
                                   float scale, float* out, int threads = 1) {
  DecodeArgs a;
  a.batch = batch;
  a.heads = heads;
  a.d_c = d_c;
  a.d_r = d_r;
  a.q_lat = q_lat;
  a.q_rope = q_rope;
  a.scale = scale;
  a.out = out;
  a.threads = threads;
  return a;
}

/// One sequence as the tiled kernels see it: its cache, and how many of its tokens to attend to
/// (a prefix: `length <= cache->size()`, so a causal query sees only the tokens before it).
struct SeqRef {
  const LatentCache* cache = nullptr;  ///< the sequence's cache, not owned
  std::size_t length = 0;              ///< T: tokens attended to, the first `length` of the cache
};

/// v1: the scalar reference. cache: (B, T, d_c + d_r) rows [c_kv | k_rope], row-major.
void mla_decode_v1(const float* cache, std::size_t T, const DecodeArgs& a);
/// v2: v1 with xsimd dot products (several accumulators) and SIMD weighted sums. Same cache.
void mla_decode_v2(const float* cache, std::size_t T, const DecodeArgs& a);
/// v3: fused online softmax: one pass over the tiled cache per head. seqs: B entries, F32.
void mla_decode_v3(const SeqRef* seqs, const DecodeArgs& a);
/// v4: head blocking: each cache tile is loaded once for a block of heads, register-blocked
/// micro-kernels. One thread. seqs: B entries, F32 caches.
void mla_decode_v4(const SeqRef* seqs, const DecodeArgs& a);
/// v5: v4 split over threads: work items (sequence, head block, KV chunk), combined with a
/// log-sum-exp; fewer than 8 heads run v3's per-head tiles instead. F32 caches.
void mla_decode_v5(const SeqRef* seqs, const DecodeArgs& a);
/// v6: v5 on a bf16 cache (half the bytes per token; sums in float). BF16 caches.
void mla_decode_v6(const SeqRef* seqs, const DecodeArgs& a);

/// v7: v5 on an FP8 cache (DeepSeek-V3.2's layout: e4m3 latent with a power-of-two scale per
/// 128 numbers, bf16 rope key; sums in float). FP8 caches.
void mla_decode_v7(const SeqRef* seqs, const DecodeArgs& a);

/// v8: v5 with all head blocks of a sequence run over each cache tile while it is in L2 (as many
/// as fit this core's L2 per pass). F32 caches.
void mla_decode_v8(const SeqRef* seqs, const DecodeArgs& a);
/// v9: v8 on a bf16 cache (fewer than 8 heads: v6's per-head path). BF16 caches.
void mla_decode_v9(const SeqRef* seqs, const DecodeArgs& a);

/// v10: v5 with a register-blocked path for fewer than 16 heads (8 with SSE: below a full head
/// group), all heads of an item in registers at once instead of one pass per head, and, from 16
/// heads, the next tile prefetched while this one is scored. F32 caches.
void mla_decode_v10(const SeqRef* seqs, const DecodeArgs& a);
/// v11: v6 with v10's few-heads path. BF16 caches.
void mla_decode_v11(const SeqRef* seqs, const DecodeArgs& a);
/// v12: v11 without the widened tile: from a full head group (16 heads with AVX2 or AVX-512), the
/// micro-kernels read the bf16 tile as
/// cached, a pair of numbers per 32-bit load widened in registers, and the next tile is
/// prefetched (fewer than 16 heads: v11's path). Same outputs as v6 (16 heads or more) and v11.
/// BF16 caches.
void mla_decode_v12(const SeqRef* seqs, const DecodeArgs& a);
/// v13: v7 whose path for fewer than 16 heads widens each 64 FP8 codes once for all the heads of
/// an item, held in registers (v10's few-heads path on v7's lane-order codes; AVX-512 builds —
/// elsewhere, or with a cache scale above 2^39, the work is split as v7 splits it), and whose
/// head blocks prefetch the next tile. FP8 caches.
void mla_decode_v13(const SeqRef* seqs, const DecodeArgs& a);

/// The fastest version for the caches given: v10 for F32 caches, v12 for BF16, v13 for FP8 (all
/// caches of one call must share the type, d_c and d_r).
void mla_decode_best(const SeqRef* seqs, const DecodeArgs& a);

/// True if v6's per-head path computes its scores with AVX512_BF16's vdpbf16ps (built by GCC on
/// x86-64, and the CPU reports avx512bf16 at run time); otherwise it widens bf16 to float with
/// shifts (the portable path). The head-blocked path (8 heads or more) always widens.
bool bf16_dot_products_available();

/// The instruction set the kernels were compiled for (fixed at compile time: -march=native, or
/// the presets sse42, avx2, avx512) and what it makes of the head-blocked path.
struct KernelSimd {
  const char* arch;          ///< xsimd's name of it: "sse4.2", "fma3+avx2", "avx512bw", …
  std::size_t floats;        ///< floats per SIMD vector: 4 (SSE), 8 (AVX2), 16 (AVX-512)
  std::size_t narrow_group;  ///< heads per group of v4..v6's micro-kernels (16; 8 with SSE)
  std::size_t wide_group;    ///< heads per group where they fill it without padding (32: AVX-512)
};

/// The SIMD build of this chapter's kernels (tests and CI say which width they ran).
KernelSimd kernel_simd();

/// @}

}  // namespace mla::ch07
