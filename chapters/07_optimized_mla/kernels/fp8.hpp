/// @file fp8.hpp
/// @brief Widening e4m3fn codes to floats inside the decode kernels: a SIMD load that turns
///        `xsimd::batch<float>::size` codes into floats, exactly.
///
/// The trick: an e4m3fn code `s eeee mmm` moved to bits 15 and 13..7 of a 16-bit word is the IEEE
/// half-precision number `s 0eeee mmm0000000`, whose value is exactly the e4m3 value times 2^-8
/// (half's exponent bias is 15, e4m3's 7), subnormals included (an e4m3 subnormal, `m · 2^-9`,
/// becomes the half subnormal `m · 2^-17`). F16C's vcvtph2ps then widens 8 halves to floats in one
/// instruction, exactly. So the kernel multiplies by `scale · 2^8` instead of `scale` and never
/// decodes a code one at a time. Without F16C (the SSE4.2 build) a 256-entry table does it.
#pragma once

#include <cstdint>

#include <xsimd/xsimd.hpp>

#if defined(__F16C__) && (defined(__AVX2__) || defined(__AVX512F__))
#include <immintrin.h>
#endif

#include "mla/fp8.hpp"

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// What load_e4m3_scaled() leaves out: its result times this is the e4m3 value.
inline constexpr float kE4m3LoadFactor = 256.0f;

/// True if load_e4m3_scaled() uses F16C's half-to-float conversion (else a table).
constexpr bool e4m3_load_uses_f16c() {
#if defined(__F16C__) && (defined(__AVX2__) || defined(__AVX512F__))
  return true;
#else
  return false;
#endif
}

/// Load `xsimd::batch<float>::size` e4m3fn codes from `p` as floats, each 2^-8 times its value
/// (multiply by kE4m3LoadFactor, folded into the tile's scale, to get the value). NaN codes
/// (0x7F, 0xFF) come back as finite numbers on the F16C path: the FP8 cache never stores them.
///
/// How: unpacking a zero byte below each code makes the 16-bit word `s eeee mmm 00000000`; an
/// arithmetic shift right by one copies the sign into bit 14 as well, and clearing bit 14 leaves
/// `s 0eeee mmm 0000000` — the half described above. Three instructions per 8 codes, then
/// vcvtph2ps.
inline xsimd::batch<float> load_e4m3_scaled(const std::uint8_t* p) {
  using V = xsimd::batch<float>;
#if defined(__F16C__) && defined(__AVX512F__)
  static_assert(V::size == 16, "xsimd's default batch is 512 bits wide under AVX-512");
  const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i z = _mm_setzero_si128(), keep = _mm_set1_epi16(short(0xBFFF));
  const __m128i lo = _mm_and_si128(_mm_srai_epi16(_mm_unpacklo_epi8(z, c), 1), keep);
  const __m128i hi = _mm_and_si128(_mm_srai_epi16(_mm_unpackhi_epi8(z, c), 1), keep);
  return V(_mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1)));
#elif defined(__F16C__) && defined(__AVX2__)
  static_assert(V::size == 8, "xsimd's default batch is 256 bits wide under AVX2");
  const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i h = _mm_and_si128(_mm_srai_epi16(_mm_unpacklo_epi8(_mm_setzero_si128(), c), 1),
                                  _mm_set1_epi16(short(0xBFFF)));
  return V(_mm256_cvtph_ps(h));
#else
  alignas(64) float f[V::size];
  const float* table = e4m3_table();
  for (std::size_t i = 0; i < V::size; ++i) f[i] = table[p[i]] * (1.0f / kE4m3LoadFactor);
  return V::load_aligned(f);
#endif
}

/// Two batches at once: the 2 · size codes at `p` into `lo` (the first size) and `hi`; with AVX2
/// one 16-byte load and one unpack per half, the cheapest way through F16C. With AVX-512 one
/// 32-byte load, one byte permute (VBMI's vpermb puts each code in the high byte of a 16-bit word
/// and zeroes the low one; without VBMI a zero-extension and a shift do it), then the shift and
/// mask above on all 32 words at once: 3.5 instructions per 16 numbers, conversions included.
/// The fused FP8 kernels (v7) call this in their inner loops.
inline void load_e4m3_scaled2(const std::uint8_t* p, xsimd::batch<float>& lo,
                              xsimd::batch<float>& hi) {
#if defined(__F16C__) && defined(__AVX512F__) && defined(__AVX512BW__)
  const __m512i c = _mm512_maskz_loadu_epi8(0xFFFFFFFFull, p);  // 32 codes, upper half zero
#if defined(__AVX512VBMI__)
  // Word j = code j << 8: byte 2j+1 takes byte j, byte 2j is zeroed by the mask.
  const __m512i idx =
      _mm512_set_epi8(31, 0, 30, 0, 29, 0, 28, 0, 27, 0, 26, 0, 25, 0, 24, 0, 23, 0, 22, 0, 21, 0,
                      20, 0, 19, 0, 18, 0, 17, 0, 16, 0, 15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0,
                      9, 0, 8, 0, 7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
  const __m512i w = _mm512_maskz_permutexvar_epi8(0xAAAAAAAAAAAAAAAAull, idx, c);
#else
  const __m512i w = _mm512_slli_epi16(_mm512_cvtepu8_epi16(_mm512_castsi512_si256(c)), 8);
#endif
  const __m512i h = _mm512_and_si512(_mm512_srai_epi16(w, 1), _mm512_set1_epi16(short(0xBFFF)));
  lo = xsimd::batch<float>(_mm512_cvtph_ps(_mm512_castsi512_si256(h)));
  hi = xsimd::batch<float>(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)));
#elif defined(__F16C__) && defined(__AVX2__)
  const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i z = _mm_setzero_si128(), keep = _mm_set1_epi16(short(0xBFFF));
  lo = xsimd::batch<float>(
      _mm256_cvtph_ps(_mm_and_si128(_mm_srai_epi16(_mm_unpacklo_epi8(z, c), 1), keep)));
  hi = xsimd::batch<float>(
      _mm256_cvtph_ps(_mm_and_si128(_mm_srai_epi16(_mm_unpackhi_epi8(z, c), 1), keep)));
#else
  lo = load_e4m3_scaled(p);
  hi = load_e4m3_scaled(p + xsimd::batch<float>::size);
#endif
}

/// @}

}  // namespace mla::ch07
