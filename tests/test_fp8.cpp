// The 8-bit float codecs (common/fp8): every code of e4m3fn and e5m2 decoded against values
// derived here from the formats' definitions, and the e4m3fn encoder's round-to-nearest-even.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// ---------------------------------------------------------------------------------------------
// Chapter 7's FP8 latent cache: DeepSeek-V3.2's 656-byte layout, quantized once per token
// ---------------------------------------------------------------------------------------------

#include <random>
#include <stdexcept>
#include <vector>

#include "07_optimized_mla/latent_cache.hpp"

namespace {

// The bound one number of an FP8 cache keeps to: e4m3 has 3 mantissa bits, so round-to-nearest
// is off by at most half a spacing, 2^-4 of the number's magnitude in the normal range, and 2^-10
// (half the subnormal spacing 2^-9) below it — both in units of the tile's scale.
double fp8_error_bound(double x, double scale) {
  return std::max(std::ldexp(std::fabs(x), -4), std::ldexp(scale, -10));
}

}  // namespace

TEST_CASE("FP8 latent cache: 656 bytes a token, power-of-two scales per 128, the rope in bf16",
          "[ch07][fp8]") {
  using mla::ch07::CacheType;
  using mla::ch07::LatentCache;
  LatentCache c(512, 64, CacheType::FP8);
  CHECK(c.row_bytes() == 656);
  CHECK(c.fp8_scales() == 4);
  CHECK(c.fp8_scale_offset() == 512);
  CHECK(c.fp8_rope_offset() == 528);
  // An odd shape: 2 scales padded to 16 bytes, the rope padded to 16 numbers.
  LatentCache odd(160, 24, CacheType::FP8);
  CHECK(odd.fp8_scales() == 2);
  CHECK(odd.row_bytes() == 160 + 16 + 2 * 32);
  CHECK_THROWS_AS(LatentCache(64, 8, CacheType::FP8, 24), std::invalid_argument);

  std::mt19937 gen(7);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  const std::size_t T = 150, D = 576;
  std::vector<float> rows(T * D);
  for (float& x : rows) x = n01(gen);
  // Adversarial tokens: one huge number in a tile (the rest of that tile goes subnormal), a tile
  // of zeros, a tile at exact powers of two (amax/448 a power of two: the scale must not double),
  // numbers just below a scale boundary, and a tiny tile (scales far below 1).
  for (std::size_t k = 0; k < 128; ++k) rows[1 * D + k] = k == 5 ? 3.0e4f : 1e-3f;
  for (std::size_t k = 128; k < 256; ++k) rows[2 * D + k] = 0.0f;
  for (std::size_t k = 0; k < 128; ++k) rows[3 * D + k] = k == 0 ? 448.0f : 1.0f;
  for (std::size_t k = 0; k < 128; ++k) rows[4 * D + k] = std::nextafter(448.0f * 4, 0.0f);
  for (std::size_t k = 384; k < 512; ++k) rows[5 * D + k] = 1e-30f * n01(gen);
  c.append_rows(rows.data(), T);
  REQUIRE(c.size() == T);
  CHECK(c.bytes_per_step() == Approx(double(T) * 656));

  for (std::size_t t = 0; t < T; ++t) {
    const std::uint8_t* row =
        c.tile_fp8(t / LatentCache::kTileTokens) + (t % LatentCache::kTileTokens) * c.row_bytes();
    for (std::size_t j = 0; j < 4; ++j) {
      float scale;
      std::memcpy(&scale, row + 512 + 4 * j, 4);
      double amax = 0;
      for (std::size_t k = 128 * j; k < 128 * (j + 1); ++k)
        amax = std::max(amax, double(std::fabs(rows[t * D + k])));
      INFO("token " << t << ", tile " << j << ", amax " << amax << ", scale " << scale);
      int e = 0;
      CHECK(std::frexp(scale, &e) == 0.5f);  // a power of two
      if (amax == 0) {
        CHECK(scale == 1.0f);
      } else {
        CHECK(amax / scale <= 448.0);  // in range: the codes never saturate
        CHECK(amax / scale > 224.0);   // and the smallest such power of two
      }
      for (std::size_t k = 128 * j; k < 128 * (j + 1); ++k) {
        const double x = rows[t * D + k], got = c.at(t, k);
        // Dequantizing is the code's value times the scale, exactly.
        CHECK(got == double(mla::e4m3_to_float(row[k])) * scale);
        CHECK(std::fabs(got - x) <= fp8_error_bound(x, scale));
      }
    }
    for (std::size_t k = 512; k < 576; ++k) {
      const float x = rows[t * D + k];
      CHECK(std::fabs(c.at(t, k) - x) <= std::ldexp(std::fabs(x), -8));  // bf16: 8 bits
    }
  }
  // The exact power-of-two tile: 448 is a code, so it comes back exactly, with scale 1.
  CHECK(c.at(3, 0) == 448.0f);
  CHECK(c.at(3, 1) == 1.0f);
  // A tile of zeros stays zeros.
  for (std::size_t k = 128; k < 256; ++k) CHECK(c.at(2, k) == 0.0f);

  std::vector<float> bad(D, 1.0f);
  bad[300] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(c.append_rows(bad.data(), 1), std::invalid_argument);
  bad[300] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(c.append_rows(bad.data(), 1), std::invalid_argument);
  CHECK(c.size() == T);  // a refused token is not appended
}

#include "07_optimized_mla/kernels/fp8.hpp"

TEST_CASE("FP8 kernels' SIMD widening: every code, times 2^8, is its e4m3 value", "[ch07][fp8]") {
  using V = xsimd::batch<float>;
  alignas(64) std::uint8_t codes[256 + V::size] = {};
  for (int c = 0; c < 256; ++c) codes[c] = std::uint8_t(c);
  INFO("path: " << (mla::ch07::e4m3_load_uses_f16c() ? "F16C" : "table") << ", " << V::size
                << " floats per batch");
  for (std::size_t c0 = 0; c0 < 256; c0 += V::size) {
    alignas(64) float got[V::size];
    mla::ch07::load_e4m3_scaled(codes + c0).store_aligned(got);
    for (std::size_t i = 0; i < V::size; ++i) {
      const int c = int(c0 + i);
      if ((c & 0x7F) == 0x7F) continue;  // NaN codes: never stored by the cache
      INFO("code 0x" << std::hex << c);
      CHECK(got[i] * mla::ch07::kE4m3LoadFactor == mla::e4m3_to_float(std::uint8_t(c)));
      CHECK(std::signbit(got[i]) == bool(c & 0x80));
    }
  }
}
