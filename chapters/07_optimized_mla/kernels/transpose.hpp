/// @file transpose.hpp
/// @brief A scaled transpose, 16 × 16 numbers at a time in AVX-512 registers: how the kernels
///        put rows (one head's or one query's numbers) into SIMD lanes and take them out again.
///
/// The head-blocked decode (v4 on) and the prefill's query blocks both work with heads or query
/// rows in the lanes of a vector, while their inputs and outputs hold one row per head or query:
/// a transpose on the way in (the packed queries, the softmax scale folded in) and one on the
/// way out (decode's output accumulators).
#pragma once

#include <cstddef>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

#if defined(__AVX512F__)
/// dst[c·ldd + r] = f · src[r·lds + c] for r, c < 16: a 16 × 16 block transposed in registers,
/// 64 shuffles for 256 numbers. Rows r0..r15 → (unpack ps) pairs of rows interleaved per 128-bit
/// lane → (unpack pd) per lane L the column 4L + c of four rows → (shuffle_f32x4, twice) each
/// column's four lanes gathered from the four quads of rows. The loads are unrolled by pragma:
/// left alone GCC 12 turns their loop into a memcpy into a stack array.
inline void transpose16(const float* src, std::size_t lds, float* dst, std::size_t ldd, float f) {
  __m512 r[16], t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + static_cast<std::size_t>(i) * lds);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int q = 0; q < 4; ++q) {  // r[4q + c], lane L: column 4L + c of rows 4q .. 4q + 3
    const __m512d a0 = _mm512_castps_pd(t[4 * q]), a1 = _mm512_castps_pd(t[4 * q + 1]);
    const __m512d b0 = _mm512_castps_pd(t[4 * q + 2]), b1 = _mm512_castps_pd(t[4 * q + 3]);
    r[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
    r[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
    r[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
    r[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
  }
  const __m512 fv = _mm512_set1_ps(f);
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(3, 1, 3, 1));
    const __m512 w0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 w1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(3, 1, 3, 1));
    const __m512 col[4] = {_mm512_shuffle_f32x4(v0, w0, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(v1, w1, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(v0, w0, _MM_SHUFFLE(3, 1, 3, 1)),
                           _mm512_shuffle_f32x4(v1, w1, _MM_SHUFFLE(3, 1, 3, 1))};
    for (int l = 0; l < 4; ++l)  // column 4l + c
      _mm512_storeu_ps(dst + static_cast<std::size_t>(4 * l + c) * ldd, _mm512_mul_ps(col[l], fv));
  }
}
#endif

/// dst[c·ldd + r] = f · src[r·lds + c] for r < rows, c < cols: src (rows, lds) → dst (cols, ldd).
/// With AVX-512 in 16 × 16 blocks in registers (one thread, Zen 4, a 16-head decode block:
/// its setup 3.6 → 2.2 µs and its result 3.1 → 1.7-2.4 µs, from loops a number at a time); the
/// rest, and other builds, a number at a time, writing dst in order while reading `rows`
/// streams of src (the other order, a store `ldd` floats apart per number, took twice as long).
inline void transpose_scaled(const float* src, std::size_t lds, std::size_t rows, std::size_t cols,
                             float* dst, std::size_t ldd, float f) {
  std::size_t r0 = 0, c0 = 0;
#if defined(__AVX512F__)
  r0 = rows / 16 * 16;
  c0 = cols / 16 * 16;
  for (std::size_t r = 0; r < r0; r += 16)
    for (std::size_t c = 0; c < c0; c += 16)
      transpose16(src + r * lds + c, lds, dst + c * ldd + r, ldd, f);
#endif
  for (std::size_t c = 0; c < cols; ++c) {  // what the blocks left: the last rows and columns
    const std::size_t r_begin = c < c0 ? r0 : 0;
    for (std::size_t r = r_begin; r < rows; ++r) dst[c * ldd + r] = f * src[r * lds + c];
  }
}

/// @}

}  // namespace mla::ch07
