/// @file bf16.hpp
/// @brief The 16-bit float formats checkpoints and caches store, and their exact conversions to
///        and from float: bfloat16 (BF16) and IEEE half (F16). The one home of these conversions:
///        the safetensors reader and writer use them, and so do chapter 7's bf16 cache and
///        kernels (inline, so a kernel's inner loop pays no call).
///
///     bf16   sign | 8-bit exponent (bias 127) | 7 mantissa bits:  the upper half of a float
///     f16    sign | 5-bit exponent (bias 15)  | 10 mantissa bits
///
/// Widening either to float is exact; narrowing rounds to nearest, ties to even.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace mla {

/// @addtogroup core
/// @{

/// The bits of a float (memcpy: the one way without undefined behaviour before C++20).
inline std::uint32_t float_bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

/// The float with these bits.
inline float bits_float(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

/// bfloat16 -> float: exact (bf16 is the upper half of a float32).
inline float bf16_to_float(std::uint16_t bits) {
  return bits_float(std::uint32_t(bits) << 16);
}

/// float -> bfloat16, rounding to nearest, ties to even; NaN stays a (quiet) NaN, ±inf stay ±inf.
inline std::uint16_t float_to_bf16(float x) {
  const std::uint32_t u = float_bits(x);
  // NaN: keep sign and top payload bits, and set the quiet bit so truncation cannot make it inf.
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return std::uint16_t((u >> 16) | 0x0040u);
  // Round to nearest, ties to even: add 0x7FFF plus the lowest kept bit, then truncate. A carry
  // out of the mantissa correctly bumps the exponent (and the largest floats round up to inf).
  const std::uint32_t lsb = (u >> 16) & 1u;
  return std::uint16_t((u + 0x7FFFu + lsb) >> 16);
}

/// IEEE half -> float: exact for normals, subnormals, ±0, ±inf and NaN.
inline float f16_to_float(std::uint16_t bits) {
  const std::uint32_t sign = std::uint32_t(bits & 0x8000u) << 16;
  const std::uint32_t exp = (bits >> 10) & 0x1Fu;
  const std::uint32_t mant = bits & 0x3FFu;
  if (exp == 0) {
    // ±0 and subnormals: mant · 2^-24, exact in float.
    const float v = std::ldexp(float(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7F800000u | (mant << 13));  // inf, or NaN + payload
  return bits_float(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

/// float -> IEEE half, rounding to nearest, ties to even; overflow gives ±inf, NaN stays NaN.
inline std::uint16_t float_to_f16(float x) {
  const std::uint32_t all = float_bits(x);
  const std::uint16_t sign = std::uint16_t((all >> 16) & 0x8000u);
  const std::uint32_t u = all & 0x7FFFFFFFu;
  if (u > 0x7F800000u) return std::uint16_t(sign | 0x7E00u | ((u >> 13) & 0x3FFu));  // quiet NaN
  // 65520 is halfway between 65504 (the largest half) and 65536; the tie goes to the even
  // neighbour, which is 65536 = inf.
  if (u >= 0x477FF000u) return std::uint16_t(sign | 0x7C00u);
  if (u < 0x38800000u) {  // below 2^-14: a half subnormal (units of 2^-24) or zero
    const std::uint32_t exp = u >> 23;
    if (exp < 102) return sign;  // below 2^-25, half the smallest subnormal: rounds to 0
    const std::uint32_t m = (u & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126 - exp;  // 14..24
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return std::uint16_t(sign | r);
  }
  // Normal: rebias the exponent from 127 to 15, keep 10 mantissa bits, round the other 13.
  const std::uint32_t r = u - 0x38000000u;
  std::uint32_t h = r >> 13;
  const std::uint32_t rem = r & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return std::uint16_t(sign | h);
}

/// @}

}  // namespace mla
