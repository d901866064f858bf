// The 8-bit float codecs (common/fp8): every code of e4m3fn and e5m2 decoded against values
// derived here from the formats' definitions, and the e4m3fn encoder's round-to-nearest-even.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>

#include "mla/fp8.hpp"

namespace {

// The value a code stands for, from the definition (OCP 8-bit floating point, 2023), computed in
// double with pow: sign · 2^(e - bias) · (1 + m/2^M), or sign · 2^(1 - bias) · m/2^M when e = 0.
double from_definition(int code, int exp_bits, int man_bits) {
  const int bias = (1 << (exp_bits - 1)) - 1;
  const int e = (code >> man_bits) & ((1 << exp_bits) - 1);
  const int m = code & ((1 << man_bits) - 1);
  const double frac = double(m) / double(1 << man_bits);
  const double mag = e == 0 ? std::pow(2.0, 1 - bias) * frac : std::pow(2.0, e - bias) * (1 + frac);
  return (code & 0x80) ? -mag : mag;
}

}  // namespace

TEST_CASE("e4m3fn: all 256 codes decode to the value the format defines", "[loaders][fp8]") {
  int nans = 0;
  for (int c = 0; c < 256; ++c) {
    const float got = mla::e4m3_to_float(std::uint8_t(c));
    if ((c & 0x7F) == 0x7F) {  // s.1111.111: the only NaNs, and there is no infinity
      CHECK(std::isnan(got));
      ++nans;
      continue;
    }
    INFO("code 0x" << std::hex << c);
    CHECK(std::isfinite(got));
    CHECK(double(got) == from_definition(c, 4, 3));
    CHECK(std::signbit(got) == bool(c & 0x80));  // 0x80 is -0
  }
  CHECK(nans == 2);
  CHECK(mla::e4m3_to_float(0x7E) == 448.0f);
  CHECK(mla::e4m3_to_float(0xFE) == -448.0f);
  CHECK(mla::e4m3_to_float(0x38) == 1.0f);
  CHECK(mla::e4m3_to_float(0x08) == std::ldexp(1.0f, -6));  // smallest normal
  CHECK(mla::e4m3_to_float(0x01) == std::ldexp(1.0f, -9));  // smallest subnormal
  CHECK(mla::e4m3_to_float(0x07) == 7 * std::ldexp(1.0f, -9));
  for (int c = 0; c < 256; ++c) {
    const float a = mla::e4m3_table()[c], b = mla::e4m3_to_float(std::uint8_t(c));
    CHECK(((std::isnan(a) && std::isnan(b)) || a == b));
  }
}

TEST_CASE("e5m2: all 256 codes decode to the value the format defines, with infinities",
          "[loaders][fp8]") {
  int nans = 0, infs = 0;
  for (int c = 0; c < 256; ++c) {
    const float got = mla::e5m2_to_float(std::uint8_t(c));
    INFO("code 0x" << std::hex << c);
    if (((c >> 2) & 0x1F) == 0x1F) {  // all-ones exponent: inf (mantissa 0) or NaN
      if ((c & 3) == 0) {
        CHECK(std::isinf(got));
        CHECK(std::signbit(got) == bool(c & 0x80));
        ++infs;
      } else {
        CHECK(std::isnan(got));
        ++nans;
      }
      continue;
    }
    CHECK(double(got) == from_definition(c, 5, 2));
  }
  CHECK(infs == 2);
  CHECK(nans == 6);
  CHECK(mla::e5m2_to_float(0x3C) == 1.0f);
  CHECK(mla::e5m2_to_float(0x7B) == 57344.0f);               // largest finite
  CHECK(mla::e5m2_to_float(0x01) == std::ldexp(1.0f, -16));  // smallest subnormal
}

TEST_CASE("e4m3fn encoder: every finite code round-trips, ties go to the even code",
          "[loaders][fp8]") {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;
    const float v = mla::e4m3_to_float(std::uint8_t(c));
    INFO("code 0x" << std::hex << c);
    CHECK(int(mla::float_to_e4m3(v)) == c);
  }
  // Between consecutive positive codes c and c+1: the midpoint goes to the one with an even
  // mantissa (the even code), anything past the midpoint to the nearer one.
  for (int c = 0; c < 0x7E; ++c) {
    const float lo = mla::e4m3_to_float(std::uint8_t(c)),
                hi = mla::e4m3_to_float(std::uint8_t(c + 1));
    const float mid = 0.5f * (lo + hi);  // exact: lo and hi have few significant bits
    INFO("codes 0x" << std::hex << c << " and 0x" << c + 1);
    CHECK(int(mla::float_to_e4m3(mid)) == ((c % 2 == 0) ? c : c + 1));
    CHECK(int(mla::float_to_e4m3(std::nextafter(mid, hi))) == c + 1);
    CHECK(int(mla::float_to_e4m3(std::nextafter(mid, lo))) == c);
    CHECK(int(mla::float_to_e4m3(-std::nextafter(mid, hi))) == ((c + 1) | 0x80));
  }
  // Beyond the range: saturation to ±448, never infinity or NaN; NaN stays NaN.
  CHECK(mla::float_to_e4m3(460.0f) == 0x7E);
  CHECK(mla::float_to_e4m3(1e30f) == 0x7E);
  CHECK(mla::float_to_e4m3(-std::numeric_limits<float>::infinity()) == 0xFE);
  CHECK(mla::float_to_e4m3(std::numeric_limits<float>::quiet_NaN()) == 0x7F);
  // Far below the smallest subnormal: zero, with its sign.
  CHECK(mla::float_to_e4m3(1e-30f) == 0x00);
  CHECK(mla::float_to_e4m3(-1e-30f) == 0x80);
  CHECK(mla::float_to_e4m3(std::ldexp(1.0f, -10)) ==
        0x00);  // half the smallest subnormal: tie to 0
}
