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
inline xsimd::batch<float> load_e4m3_scaled(const std::uint8_t* p) {
  using V = xsimd::batch<float>;
#if defined(__F16C__) && defined(__AVX512F__)
  static_assert(V::size == 16, "xsimd's default batch is 512 bits wide under AVX-512");
  // 16 codes -> 16 u16 lanes; t = code << 7 puts the sign at bit 14: adding bit 14 to itself
  // carries it to bit 15 and clears it (s 0eeee mmm0000000).
  const __m256i z = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i t = _mm256_slli_epi16(z, 7);
  const __m256i h = _mm256_add_epi16(t, _mm256_and_si256(t, _mm256_set1_epi16(0x4000)));
  return V(_mm512_cvtph_ps(h));
#elif defined(__F16C__) && defined(__AVX2__)
  static_assert(V::size == 8, "xsimd's default batch is 256 bits wide under AVX2");
  const __m128i z = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i t = _mm_slli_epi16(z, 7);
  const __m128i h = _mm_add_epi16(t, _mm_and_si128(t, _mm_set1_epi16(0x4000)));
  return V(_mm256_cvtph_ps(h));
#else
  alignas(64) float f[V::size];
  const float* table = e4m3_table();
  for (std::size_t i = 0; i < V::size; ++i) f[i] = table[p[i]] * (1.0f / kE4m3LoadFactor);
  return V::load_aligned(f);
#endif
}

/// @}

}  // namespace mla::ch07
