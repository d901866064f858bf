/// @file flash_decoding.hpp
/// @brief What every fused decode kernel of this chapter shares (flash-decoding): the SIMD dot
///        product and axpy, the online-softmax step, the log-sum-exp combine of the partial
///        results of split-KV chunks, and how a cache is cut into chunks for the threads.
///
/// A decode step attends one query per head to T cached tokens. Flash-decoding reads the cache
/// once, tile by tile, keeping per head a running max m, a running sum l = Σ exp(s_t − m) and an
/// unnormalized output o = Σ exp(s_t − m)·v_t; when a larger score arrives, what was accumulated
/// is rescaled by exp(m_old − m_new). Cut the cache into chunks and every chunk yields such a
/// partial (o, m, l) on its own thread; a log-sum-exp combine merges them into the exact softmax.
/// The MLA kernels (mla_decode.cpp, v3..v6) and the MHA baseline (mha_decode.cpp, v2) both use
/// the pieces below.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// The max of no score at all: the start of every running max (exp(−inf) = 0).
inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

/// x · y over n floats (any alignment) with xsimd and four accumulators, so four FMAs are in
/// flight at once: MLA v2's score loop, and the MHA kernel's too.
float dot_simd(const float* x, const float* y, std::size_t n);

/// y += alpha · x over n floats (any alignment): a weighted sum, one token at a time.
void axpy_simd(float alpha, const float* x, float* y, std::size_t n);

/// The factor by which an online softmax rescales what it has accumulated when its running max
/// moves from m_old to m_new: exp(m_old − m_new), and 0 while nothing was accumulated
/// (m_old = −inf, where exp(−inf − (−inf)) would be NaN). T is a float, or a batch of floats
/// holding one head per lane (the head-blocked kernels).
template <class T>
T rescale_factor(const T& m_old, const T& m_new) {
  if constexpr (std::is_same_v<T, float>) {
    return m_old == kNegInf ? 0.0f : std::exp(m_old - m_new);
  } else {
    return xsimd::select(m_old == T(kNegInf), T(0.0f), xsimd::exp(m_old - m_new));
  }
}

/// The running softmax of one head's scores, seen tile by tile: max m, sum l of exp(s − m).
struct OnlineSoftmax {
  float m = kNegInf;  ///< the largest score so far
  float l = 0.0f;     ///< Σ exp(s_t − m) over the scores so far

  /// Take one tile's scores. s: (n_pad) floats, 64-byte aligned, n_pad a multiple of the SIMD
  /// width; its first nt are scores whose maximum is tile_max. Fills s[nt, n_pad) with −inf and
  /// overwrites s with p_t = exp(s_t − m_new) (so the caller's weighted sum needs no tail);
  /// updates m and l; returns alpha = rescale_factor(m_old, m_new), by which the caller must
  /// scale its accumulated output before it adds Σ_t p_t·v_t.
  float step(float* s, std::size_t nt, std::size_t n_pad, float tile_max);
};

/// The partial result of one head over one chunk of the cache: the unnormalized output
/// o = Σ exp(s_t − m)·v_t (d numbers, the caller's), the chunk's max m and sum l.
struct Partial {
  const float* o;  ///< (d) unnormalized output
  float m;         ///< max score of the chunk (−inf: the chunk saw no token)
  float l;         ///< Σ exp(s_t − m) over the chunk
};

/// The log-sum-exp combine of the n partials of one head (`part(c)` returns chunk c's, c < n):
///
///     M = max_c m_c,   out (d) = Σ_c e^(m_c − M)·o_c / Σ_c e^(m_c − M)·l_c
///
/// (every chunk's numbers are relative to its own max, the weights bring them to a common one).
/// Zeros if no chunk saw a token. With one partial it is the final division o / l.
template <class PartAt>
void combine_partials(std::size_t n, PartAt&& part, std::size_t d, float* out) {
  float M = kNegInf;
  for (std::size_t c = 0; c < n; ++c) M = std::max(M, part(c).m);
  std::fill(out, out + d, 0.0f);
  if (M == kNegInf) return;  // no token at all: zeros
  float L = 0.0f;
  for (std::size_t c = 0; c < n; ++c) {
    const Partial p = part(c);
    const float w = std::exp(p.m - M);
    L += w * p.l;
    for (std::size_t j = 0; j < d; ++j) out[j] += w * p.o[j];
  }
  const float inv = 1.0f / L;
  for (std::size_t j = 0; j < d; ++j) out[j] *= inv;
}

/// Split-KV's scheduling: into how many chunks to cut the cache of each of `units` independent
/// pieces of work (a (sequence, head block) for MLA, a (sequence, head) for MHA) so that
/// `threads` threads get equal shares. One if the units already divide evenly over the threads.
/// Fewer units than threads: the fewest chunks that make units × chunks a multiple of the
/// threads (threads / gcd(units, threads): 1 sequence on 2 threads, 2 chunks; 3 on 4, 4 each) —
/// fewer, longer items pay less per item (packing the queries, the combine, a first tile that was
/// not prefetched): at 16 heads and 1,024 tokens on 2 threads, two items of 8 tiles ran 10-20%
/// faster than four of 4. More units than threads, unevenly: about two items per thread (a
/// thread that finishes early takes another).
std::size_t kv_chunks(std::size_t units, int threads);

/// Chunk c of n of a range of `len` (tiles or tokens) starts here; chunk c ends where c + 1
/// starts, so the n chunks cover the range and differ in size by at most one.
inline std::size_t chunk_begin(std::size_t len, std::size_t c, std::size_t n) {
  return len * c / n;
}

/// @}

}  // namespace mla::ch07
