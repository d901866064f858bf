/// @file bf16.hpp
/// @brief bfloat16 storage for the latent cache: conversions, and a SIMD load that widens 8 or 16
///        bf16 numbers to a batch of floats.
///
/// bf16 is the upper half of an IEEE float: same 8-bit exponent, 7 mantissa bits instead of 23.
/// Widening is exact (shift left by 16); narrowing rounds to nearest even. The kernels keep
/// every sum in float, so a bf16 cache only changes what is stored, not how it is added.
#pragma once

#include <cstdint>
#include <cstring>

#include <xsimd/xsimd.hpp>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// float -> bf16, round to nearest even; NaN stays a (quiet) NaN.
inline std::uint16_t to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // ties go to the even neighbour
  return static_cast<std::uint16_t>((u + rounding) >> 16);
}

/// bf16 -> float, exact.
inline float from_bf16(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// A float rounded to bf16 and back: what a bf16 cache hands the kernel for `f`.
inline float round_bf16(float f) {
  return from_bf16(to_bf16(f));
}

/// Load one batch (`xsimd::batch<float>::size` numbers) of bf16 values from `p` as floats.
///
/// With AVX2 it is two instructions per 8 numbers (zero-extend 16->32 bits, shift left by 16);
/// otherwise a portable loop the compiler vectorizes as best it can.
inline xsimd::batch<float> load_bf16(const std::uint16_t* p) {
  using V = xsimd::batch<float>;
#if defined(__AVX2__)
  if constexpr (V::size == 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return V(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
  }
#endif
#if defined(__AVX512F__)
  if constexpr (V::size == 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return V(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
  }
#endif
  alignas(64) float tmp[V::size];
  for (std::size_t i = 0; i < V::size; ++i) tmp[i] = from_bf16(p[i]);
  return V::load_aligned(tmp);
}

/// @}

}  // namespace mla::ch07
