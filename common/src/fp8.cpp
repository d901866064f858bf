#include "mla/fp8.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

namespace mla {

namespace {

// value = (-1)^s · 2^(e - bias) · (1 + m / 2^M) for e > 0, (-1)^s · 2^(1 - bias) · m / 2^M for
// e = 0 (subnormal). The special codes are handled by the callers.
float fp8_value(std::uint8_t code, int exp_bits, int man_bits) {
  const int bias = (1 << (exp_bits - 1)) - 1;
  const int e = (code >> man_bits) & ((1 << exp_bits) - 1);
  const int m = code & ((1 << man_bits) - 1);
  const float mag = e == 0 ? std::ldexp(float(m), 1 - bias - man_bits)
                           : std::ldexp(float((1 << man_bits) + m), e - bias - man_bits);
  return (code & 0x80) ? -mag : mag;
}

std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (int c = 0; c < 256; ++c) {
    // e4m3fn: only s.1111.111 is NaN; s.1111.000 .. s.1111.110 are numbers (256 .. 448).
    t[c] = (c & 0x7F) == 0x7F ? std::numeric_limits<float>::quiet_NaN()
                              : fp8_value(std::uint8_t(c), 4, 3);
  }
  return t;
}

const std::array<float, 256> kE4m3 = make_e4m3_table();

}  // namespace

float e4m3_to_float(std::uint8_t code) {
  return kE4m3[code];
}

const float* e4m3_table() {
  return kE4m3.data();
}

float e5m2_to_float(std::uint8_t code) {
  // e5m2 is IEEE-like: the all-ones exponent holds ±inf (mantissa 0) and NaN (mantissa ≠ 0).
  if ((code & 0x7C) == 0x7C) {
    if ((code & 0x03) != 0) return std::numeric_limits<float>::quiet_NaN();
    return (code & 0x80) ? -std::numeric_limits<float>::infinity()
                         : std::numeric_limits<float>::infinity();
  }
  return fp8_value(code, 5, 2);
}

namespace {

// Round |a| (finite, >= 0) to the nearest number with `man_bits` mantissa bits whose exponent is
// at least `min_exp` (below it the spacing stays 2^(min_exp - man_bits): the subnormals), ties to
// even, and return its magnitude code (exponent field << man_bits | mantissa), which may be one
// past the largest finite code when rounding carries out of the top binade.
// The spacing of such numbers around a is 2^(floor(log2 a) - man_bits); a / spacing is exact (a
// power-of-two scaling), and nearbyint rounds it to the nearest integer, ties to even, in the
// default rounding mode: that is round-to-nearest-even on the 8-bit grid, also where rounding
// carries into the next binade.
unsigned fp8_magnitude(float a, int man_bits, int min_exp) {
  int e2 = 0;
  std::frexp(a, &e2);  // a = f · 2^e2, f in [0.5, 1): floor(log2 a) = e2 - 1
  const int exponent = std::max(e2 - 1, min_exp);
  a = std::ldexp(std::nearbyint(std::ldexp(a, man_bits - exponent)), exponent - man_bits);
  if (a == 0.0f) return 0;
  if (a < std::ldexp(1.0f, min_exp))  // subnormal: m · 2^(min_exp - man_bits)
    return unsigned(std::ldexp(a, man_bits - min_exp));
  std::frexp(a, &e2);
  const int e = e2 - 1;
  const unsigned m = unsigned(std::ldexp(a, man_bits - e)) - (1u << man_bits);
  return (unsigned(e - min_exp + 1) << man_bits) | m;
}

}  // namespace

std::uint8_t float_to_e4m3(float x) {
  if (std::isnan(x)) return 0x7F;
  const std::uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  if (a >= kE4m3Max) return sign | 0x7E;                // saturate (see the header)
  return sign | std::uint8_t(fp8_magnitude(a, 3, -6));  // below 448: never past 0x7E
}

std::uint8_t float_to_e5m2(float x) {
  if (std::isnan(x)) return 0x7E;
  const std::uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  if (a >= 61440.0f) return sign | 0x7C;  // 57344 + half a step (4096) and beyond: infinity
  return sign | std::uint8_t(fp8_magnitude(a, 2, -14));
}

}  // namespace mla
