/// @file bf16.hpp
/// @brief bfloat16 storage for the latent cache, on the kernels' side: the short names the
///        kernels use for the conversions, the three-way split that feeds vdpbf16ps, and a SIMD
///        load that widens 8 or 16 bf16 numbers to a batch of floats.
///
/// bf16 is the upper half of an IEEE float: same 8-bit exponent, 7 mantissa bits instead of 23.
/// Widening is exact (shift left by 16); narrowing rounds to nearest even. The kernels keep
/// every sum in float, so a bf16 cache only changes what is stored, not how it is added. The
/// conversions themselves live in common/ (mla/bf16.hpp), shared with the checkpoint reader.
#pragma once

#include <cmath>
#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "mla/bf16.hpp"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// float -> bf16, round to nearest even; NaN stays a (quiet) NaN: mla::float_to_bf16.
inline std::uint16_t to_bf16(float f) {
  return mla::float_to_bf16(f);
}

/// bf16 -> float, exact: mla::bf16_to_float.
inline float from_bf16(std::uint16_t b) {
  return mla::bf16_to_float(b);
}

/// A float rounded to bf16 and back: what a bf16 cache hands the kernel for `f`.
inline float round_bf16(float f) {
  return from_bf16(to_bf16(f));
}

/// Split `f` into three bf16 numbers with f == hi + mid + lo exactly: hi is f cut to its upper
/// 16 bits (truncated, so a finite f never rounds up to Inf), mid the bf16 rounding of what is
/// left (at most 16 significant bits), lo the rest (at most 8, so it fits). 3 × 8 significant bits
/// hold a float's 24. It lets an instruction that multiplies bf16 numbers (vdpbf16ps) take an fp32
/// operand without rounding it. Inf and NaN come back as hi alone. vdpbf16ps treats bf16
/// subnormals as zero, so there the split is exact for |f| ≥ 2^-103 (about 1e-31, where lo is
/// still a normal number); below that it loses at most that remainder.
inline void split_bf16(float f, std::uint16_t& hi, std::uint16_t& mid, std::uint16_t& lo) {
  if (!std::isfinite(f)) {
    hi = to_bf16(f);  // keeps a NaN a NaN (truncating could turn some NaNs into Inf)
    mid = lo = 0;
    return;
  }
  hi = static_cast<std::uint16_t>(mla::float_bits(f) >> 16);
  const float r1 = f - from_bf16(hi);  // exact: the lower 16 bits of f
  mid = to_bf16(r1);
  lo = to_bf16(r1 - from_bf16(mid));  // exact, and exactly a bf16
}

/// Load one batch (`xsimd::batch<float>::size` numbers) of bf16 values from `p` as floats.
///
/// With AVX2 it is two instructions per 8 numbers (zero-extend 16->32 bits, shift left by 16);
/// otherwise a portable loop the compiler vectorizes as best it can.
inline xsimd::batch<float> load_bf16(const std::uint16_t* p) {
  using V = xsimd::batch<float>;
  // The branch is chosen by the preprocessor, not `if constexpr`: outside a template both arms
  // of an `if constexpr` must compile, and a batch cannot be built from the other width.
#if defined(__AVX512F__)
  static_assert(V::size == 16, "xsimd's default batch is 512 bits wide under AVX-512");
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return V(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
#elif defined(__AVX2__)
  static_assert(V::size == 8, "xsimd's default batch is 256 bits wide under AVX2");
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return V(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
#else
  alignas(64) float tmp[V::size];
  for (std::size_t i = 0; i < V::size; ++i) tmp[i] = from_bf16(p[i]);
  return V::load_aligned(tmp);
#endif
}

/// @}

}  // namespace mla::ch07
