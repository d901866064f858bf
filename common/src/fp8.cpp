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

std::uint8_t float_to_e4m3(float x) {
  if (std::isnan(x)) return 0x7F;
  const std::uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  float a = std::fabs(x);
  if (a >= kE4m3Max) return sign | 0x7E;  // saturate (see the header)
  // The spacing of e4m3 numbers around a: 2^(floor(log2 a) - 3) in the normal range (3 mantissa
  // bits), 2^-9 below 2^-6 (the subnormals). a / spacing is exact (a power-of-two scaling), and
  // nearbyint rounds it to the nearest integer, ties to even, in the default rounding mode: that
  // is round-to-nearest-even on the e4m3 grid, also where rounding carries into the next binade.
  int e2 = 0;
  std::frexp(a, &e2);  // a = f · 2^e2, f in [0.5, 1): floor(log2 a) = e2 - 1
  const int exponent = std::max(e2 - 1, -6);
  const float steps = std::nearbyint(std::ldexp(a, 3 - exponent));
  a = std::ldexp(steps, exponent - 3);  // the rounded value, exactly representable in e4m3
  if (a == 0.0f) return sign;
  if (a < 0x1p-6f) return sign | std::uint8_t(std::ldexp(a, 9));  // subnormal: m · 2^-9
  std::frexp(a, &e2);
  const int e = e2 - 1;                         // -6 .. 8
  const int m = int(std::ldexp(a, 3 - e)) - 8;  // 0 .. 7
  return sign | std::uint8_t(((e + 7) << 3) | m);
}

}  // namespace mla
