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
  // Half the smallest subnormal ties to the even code: zero.
  CHECK(mla::float_to_e4m3(std::ldexp(1.0f, -10)) == 0x00);
}

TEST_CASE("e5m2 encoder: every finite code round-trips, overflow is infinity", "[loaders][fp8]") {
  for (int c = 0; c < 256; ++c) {
    if (((c >> 2) & 0x1F) == 0x1F) continue;  // inf and NaN
    INFO("code 0x" << std::hex << c);
    CHECK(int(mla::float_to_e5m2(mla::e5m2_to_float(std::uint8_t(c)))) == c);
  }
  CHECK(mla::float_to_e5m2(61439.0f) == 0x7B);  // below the midpoint to 65536: 57344
  CHECK(mla::float_to_e5m2(61440.0f) == 0x7C);  // the midpoint ties to even: infinity
  CHECK(mla::float_to_e5m2(-1e30f) == 0xFC);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(std::isnan(mla::e5m2_to_float(mla::float_to_e5m2(nan))));
  CHECK(mla::float_to_e5m2(1.125f) == 0x3C);  // half way from 1 to 1.25: ties to even (1.0)
  CHECK(mla::float_to_e5m2(1.375f) == 0x3E);  // half way from 1.25 to 1.5: to 1.5 (even)
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

  // A non-finite number: its scale tile reads back as NaN (it propagates), the other tiles keep
  // their numbers.
  for (float bad_value :
       {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    std::vector<float> bad(D, 1.0f);
    bad[300] = bad_value;
    c.append_rows(bad.data(), 1);
    const std::size_t t = c.size() - 1;
    for (std::size_t k = 256; k < 384; ++k) CHECK(std::isnan(c.at(t, k)));
    CHECK(c.at(t, 0) == 1.0f);
    CHECK(c.at(t, 511) == 1.0f);
  }
  CHECK(c.size() == T + 2);
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

// ---------------------------------------------------------------------------------------------
// Block-scaled FP8 weights, as DeepSeek-V3's release stores them
// ---------------------------------------------------------------------------------------------

#include <fstream>
#include <functional>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "06_decoupled_rope/verify.hpp"
#include "mla/checkpoint.hpp"
#include "mla/config.hpp"
#include "mla/json.hpp"
#include "mla/safetensors_writer.hpp"
#include "support.hpp"

namespace {

using Catch::Contains;
using mla::DType;
using mla::TensorData;

const std::string kFp8Case = std::string(MLA_TEST_DATA_DIR) + "/golden/mla_v3_fp8_tiny";

// A (rows, cols) weight stored as e4m3 codes with a scale per (br, bc) block: codes are chosen
// (every finite code appears), the scales are powers of ten apart, so a wrong block is obvious.
struct Fp8Weight {
  std::size_t rows, cols, br, bc;
  std::vector<float> codes_value;  // the codes' values, row-major
  std::vector<float> scales;       // (ceil(rows/br), ceil(cols/bc))
  std::size_t nbr() const { return (rows + br - 1) / br; }
  std::size_t nbc() const { return (cols + bc - 1) / bc; }
  float expected(std::size_t i, std::size_t j) const {
    return codes_value[i * cols + j] * scales[(i / br) * nbc() + j / bc];
  }
};

Fp8Weight make_fp8_weight(std::size_t rows, std::size_t cols, std::size_t br, std::size_t bc) {
  Fp8Weight w{rows, cols, br, bc, {}, {}};
  for (std::size_t k = 0; k < rows * cols; ++k) {
    std::uint8_t code = std::uint8_t((k * 37) % 256);
    if ((code & 0x7F) == 0x7F) code = 0x3A;  // no NaN codes
    w.codes_value.push_back(mla::e4m3_to_float(code));
  }
  for (std::size_t b = 0; b < w.nbr() * w.nbc(); ++b)
    w.scales.push_back(std::pow(10.0f, float(b % 5) - 2));
  return w;
}

// The tensors of one FP8 weight "w.weight" (+ its scale, unless told otherwise).
std::vector<TensorData> fp8_tensors(const Fp8Weight& w, DType scale_dtype = DType::F32) {
  return {{"w.weight", DType::F8_E4M3, {w.rows, w.cols}, w.codes_value},
          {"w.weight_scale_inv", scale_dtype, {w.nbr(), w.nbc()}, w.scales}};
}

mla::Checkpoint checkpoint_of(const std::vector<TensorData>& t) {
  return mla::Checkpoint::from_file(
      mla::SafeTensors::from_bytes(mla::safetensors_bytes(t), "fp8.safetensors"));
}

mla::Fp8Quantization blocks(std::size_t br, std::size_t bc) {
  mla::Fp8Quantization q;
  q.block_rows = br;
  q.block_cols = bc;
  return q;
}

}  // namespace

TEST_CASE("FP8 weights: each block times its own scale, partial edge blocks included",
          "[loaders][fp8]") {
  // 5 × 7 in blocks of 2 × 3: block rows 0-1, 2-3, 4 and block columns 0-2, 3-5, 6 (partial).
  const Fp8Weight w = make_fp8_weight(5, 7, 2, 3);
  REQUIRE(w.scales.size() == 9);
  const mla::Checkpoint ck = checkpoint_of(fp8_tensors(w));
  CHECK(ck.info("w.weight").dtype == DType::F8_E4M3);
  mla::Mat m;
  ck.load_weight("w.weight", {5, 7}, m, blocks(2, 3));
  REQUIRE(m.shape(0) == 5);
  REQUIRE(m.shape(1) == 7);
  for (std::size_t i = 0; i < 5; ++i)
    for (std::size_t j = 0; j < 7; ++j) {
      INFO("(" << i << ", " << j << ")");
      CHECK(m(i, j) == w.expected(i, j));  // exact: an e4m3 value times a float
    }
  // DeepSeek's kv_a_proj_with_mqa: [576, 7168] has a [5, 56] scale in 128 × 128 blocks.
  const Fp8Weight big = make_fp8_weight(576, 7168 / 16, 128, 128);
  CHECK(big.nbr() == 5);
  // The plain loader gives the codes' values (what is stored), the weight loader the weight.
  CHECK(ck.load("w.weight") == w.codes_value);
}

TEST_CASE("FP8 weights: e5m2 codes too, and BF16 weights beside them load as they are",
          "[loaders][fp8]") {
  const Fp8Weight w = make_fp8_weight(4, 4, 2, 2);
  std::vector<float> e5(16);
  for (std::size_t k = 0; k < 16; ++k)
    e5[k] = mla::e5m2_to_float(std::uint8_t(k * 7));  // finite codes
  std::vector<TensorData> t = {{"e.weight", DType::F8_E5M2, {4, 4}, e5},
                               {"e.weight_scale_inv", DType::F32, {2, 2}, {1, 2, 4, 8}},
                               {"n.weight", DType::BF16, {4}, {1, 2, 3, 4}}};
  const mla::Checkpoint ck = checkpoint_of(t);
  mla::Mat m;
  ck.load_weight("e.weight", {4, 4}, m, blocks(2, 2));
  for (std::size_t i = 0; i < 4; ++i)
    for (std::size_t j = 0; j < 4; ++j)
      CHECK(m(i, j) == e5[i * 4 + j] * float(1 << (2 * (i / 2) + j / 2)));
  mla::Vec v;
  ck.load_weight("n.weight", {4}, v, blocks(128, 128));  // norms stay BF16: no scale needed
  CHECK(v(3) == 4.0f);
}

TEST_CASE("FP8 weights: every malformed weight or scale is refused by name", "[loaders][fp8]") {
  const Fp8Weight w = make_fp8_weight(5, 7, 2, 3);
  mla::Mat m;
  const auto q = blocks(2, 3);
  SECTION("an FP8 weight without its scale") {
    auto t = fp8_tensors(w);
    t.pop_back();
    CHECK_THROWS_WITH(checkpoint_of(t).load_weight("w.weight", {5, 7}, m, q),
                      Contains("FP8 weight 'w.weight' has no scale 'w.weight_scale_inv'"));
  }
  SECTION("a scale of the wrong shape (a block size that does not match the config)") {
    CHECK_THROWS_WITH(
        checkpoint_of(fp8_tensors(w)).load_weight("w.weight", {5, 7}, m, blocks(128, 128)),
        Contains("'w.weight_scale_inv' has shape [3, 3], expected [1, 1]"));
  }
  SECTION("a scale of the wrong dtype") {
    CHECK_THROWS_WITH(
        checkpoint_of(fp8_tensors(w, DType::BF16)).load_weight("w.weight", {5, 7}, m, q),
        Contains("'w.weight_scale_inv' has dtype BF16, expected F32"));
  }
  SECTION("a scale that is not finite and positive") {
    for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::infinity(),
                      std::numeric_limits<float>::quiet_NaN()}) {
      auto t = fp8_tensors(w);
      t[1].values[4] = bad;
      INFO(bad);
      CHECK_THROWS_WITH(checkpoint_of(t).load_weight("w.weight", {5, 7}, m, q),
                        Contains("'w.weight_scale_inv'") && Contains("for block (1, 1)") &&
                            Contains("finite and positive"));
    }
  }
  SECTION("a scale beside a weight that is not FP8") {
    auto t = fp8_tensors(w);
    t[0].dtype = DType::BF16;
    CHECK_THROWS_WITH(
        checkpoint_of(t).load_weight("w.weight", {5, 7}, m, q),
        Contains("'w.weight' has dtype BF16, not FP8") && Contains("'w.weight_scale_inv'"));
  }
  SECTION("an FP8 weight and a config without quantization_config") {
    CHECK_THROWS_WITH(
        checkpoint_of(fp8_tensors(w)).load_weight("w.weight", {5, 7}, m, std::nullopt),
        Contains("'w.weight' is F8_E4M3") && Contains("no quantization_config"));
  }
  SECTION("an FP8 tensor that is not 2-d") {
    std::vector<TensorData> t = {{"v.weight", DType::F8_E4M3, {4}, {1, 2, 3, 4}}};
    mla::Vec v;
    CHECK_THROWS_WITH(checkpoint_of(t).load_weight("v.weight", {4}, v, q),
                      Contains("only a 2-d Linear weight"));
  }
  SECTION("a shape the config does not give") {
    CHECK_THROWS_WITH(checkpoint_of(fp8_tensors(w)).load_weight("w.weight", {7, 5}, m, q),
                      Contains("'w.weight' has shape [5, 7], expected [7, 5]"));
  }
}

TEST_CASE(
    "quantization_config: DeepSeek-V3's is read, and what the loader does not know is refused",
    "[loaders][fp8]") {
  const std::string text = mla::read_text_file(kFp8Case + ".config.json");
  const nlohmann::json base = nlohmann::json::parse(text);
  const mla::MlaConfig c = mla::MlaConfig::from_json(base, "v3");
  REQUIRE(c.quantization);
  CHECK(c.quantization->block_rows == 128);
  CHECK(c.quantization->block_cols == 128);
  CHECK(c.quantization->activation_scheme == "dynamic");
  const auto refused = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = base;
    edit(j["quantization_config"]);
    try {
      mla::MlaConfig::from_json(j, "cfg");
    } catch (const mla::InputError& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  CHECK_THAT(refused([](auto& q) { q["quant_method"] = "awq"; }), Contains("quant_method 'awq'"));
  CHECK_THAT(refused([](auto& q) { q.erase("quant_method"); }),
             Contains("'quant_method' is missing"));
  CHECK_THAT(refused([](auto& q) { q["fmt"] = "e5m2"; }), Contains("fmt 'e5m2'"));
  CHECK_THAT(refused([](auto& q) { q["activation_scheme"] = "weird"; }),
             Contains("activation_scheme 'weird'"));
  CHECK_THAT(refused([](auto& q) { q.erase("weight_block_size"); }),
             Contains("'weight_block_size' is missing"));
  CHECK_THAT(refused([](auto& q) { q["weight_block_size"] = {128}; }),
             Contains("two positive integers"));
  CHECK_THAT(refused([](auto& q) {
               q["weight_block_size"] = {0, 128};
             }),
             Contains("weight_block_size[0] = 0"));
  CHECK_THAT(refused([](auto& q) {
               q["weight_block_size"] = {128, 1.5};
             }),
             Contains("weight_block_size[1] = 1.5"));
  CHECK_THAT(refused([](auto& q) { q = "fp8"; }),
             Contains("'quantization_config' is not an object"));
}

TEST_CASE("the FP8 golden case: real FP8 weights, and a loader ignoring the scales would miss it",
          "[loaders][fp8]") {
  const mla::Checkpoint ck = mla::Checkpoint::open(kFp8Case + ".safetensors");
  const std::string p = "model.layers.0.self_attn.";
  for (const char* n : {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"}) {
    INFO(n);
    CHECK(ck.info(p + n + ".weight").dtype == DType::F8_E4M3);
    CHECK(ck.contains(p + n + ".weight_scale_inv"));
  }
  CHECK(ck.info(p + "q_a_layernorm.weight").dtype == DType::BF16);
  // Dequantized with its scales the layer matches DeepSeek's reference on both paths ...
  const auto c = mla::ch06::load_golden_case(kFp8Case + ".config.json", kFp8Case + ".safetensors");
  for (const auto& r : mla::ch06::verify_case(c, mla::ch06::builtin_paths(), 1e-4)) {
    INFO(r.path << " " << r.phase << ": " << r.cmp.describe());
    CHECK(r.pass);
  }
  // ... and o_proj's blocks really differ by orders of magnitude: codes alone are not the weight.
  const std::vector<float> s = ck.load(p + "o_proj.weight_scale_inv");
  const auto [lo, hi] = std::minmax_element(s.begin(), s.end());
  CHECK(*hi / *lo > 100.0f);
}

TEST_CASE("FP8 weights of layer N (--layer) beside another layer, single file and sharded",
          "[loaders][fp8]") {
  // The golden case's layer 0 moved to layer 3 (what mla_verify --layer 3 reads), beside a
  // decoy layer 0 whose scales are all doubled: reading the wrong layer, or a weight without its
  // own scale, fails the case. Sharded: every weight in one shard, every scale and test tensor in
  // the other (a scale in another shard than its weight, as the release has them).
  const auto single = mla::SafeTensors::open(kFp8Case + ".safetensors");
  nlohmann::json cfg;
  std::ifstream(kFp8Case + ".config.json") >> cfg;
  cfg["num_hidden_layers"] = 4;
  const std::string l0 = "model.layers.0.";
  const auto ends_with = [](const std::string& n, const std::string& tail) {
    return n.size() >= tail.size() && n.compare(n.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const bool sharded : {false, true}) {
    INFO((sharded ? "sharded" : "single file"));
    mla::test::TempDir dir;
    const std::string config = dir / "config.json";
    std::ofstream(config) << cfg.dump();
    std::vector<TensorData> part[2];
    nlohmann::json map = nlohmann::json::object();
    const std::string shard[2] = {"model-00001-of-00002.safetensors",
                                  "model-00002-of-00002.safetensors"};
    const auto add = [&](TensorData t) {
      const int k = sharded && !ends_with(t.name, ".weight") ? 1 : 0;
      map[t.name] = shard[k];
      part[k].push_back(std::move(t));
    };
    for (const std::string& n : single.names()) {
      std::vector<float> values(single.info(n).numel());
      single.load_into(n, values.data());  // FP8: the codes' values, which re-encode exactly
      TensorData t{n, single.info(n).dtype, single.info(n).shape, values};
      if (n.compare(0, l0.size(), l0) != 0) {  // a test tensor
        add(std::move(t));
        continue;
      }
      TensorData decoy = t;
      if (ends_with(n, "_scale_inv"))
        for (float& v : decoy.values) v *= 2.0f;
      add(std::move(decoy));
      t.name = "model.layers.3." + n.substr(l0.size());
      add(std::move(t));
    }
    std::string weights = dir / "model.safetensors";
    if (sharded) {
      for (int k = 0; k < 2; ++k) mla::write_safetensors(dir / shard[k], part[k]);
      std::ofstream(dir / "model.safetensors.index.json")
          << nlohmann::json{{"weight_map", map}}.dump();
      weights = dir.path.string();
    } else {
      mla::write_safetensors(weights, part[0]);
    }
    const auto c = mla::ch06::load_golden_case(config, weights, 3);
    CHECK(c.layer == 3);
    for (const auto& r : mla::ch06::verify_case(c, mla::ch06::builtin_paths(), 1e-4)) {
      INFO(r.path << " " << r.phase << ": " << r.cmp.describe());
      CHECK(r.pass);
    }
    // The decoy is a valid layer that does not match: read on purpose, it fails.
    bool any_fails = false;
    for (const auto& r : mla::ch06::verify_case(mla::ch06::load_golden_case(config, weights, 0),
                                                mla::ch06::builtin_paths(), 1e-4))
      any_fails = any_fails || !r.pass;
    CHECK(any_fails);
    // Without a layer the file's two are ambiguous (mla_verify exits 2).
    CHECK_THROWS_AS(mla::ch06::load_golden_case(config, weights), mla::InputError);
  }
}

#include "07_optimized_mla/kernels/mla_decode.hpp"
#include "07_optimized_mla/runner.hpp"

TEST_CASE(
    "v7 and v13 (FP8 cache) equal v1 on the dequantized cache, and v1 on fp32 within its "
    "tolerance",
    "[ch07][fp8]") {
  using namespace mla::ch07;
  std::mt19937 gen(11);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  struct Shape {
    std::size_t B, H, T, d_c, d_r;
    float cache_mul = 1.0f, q_mul = 1.0f;  // to push the per-head lane path outside its range
    std::size_t fp8_tile = LatentCache::kFp8Tile;  // latent numbers per scale
  };
  // Per-head path (H < 8: in lanes for d_c a multiple of 64, else generic) and head-blocked path,
  // partial tiles and a partial scale tile (d_c 160); latents too large for the lane path's
  // folded scales (scale 2^44 > 2^39) and queries too large for its 2^64 factor (both decline to
  // the generic path, which must give the same).
  // v13's few-heads path (below 16 heads, d_c a multiple of 64): head groups of 4, 2 and 1 (7 and
  // 13 heads), an odd last tile (pairs of rows), latent widths of 1, 5, 6 and 8 chunks of 64 (its
  // weighted sum takes 4 / NH chunks at a time), scale tiles of 64, 128 and 192; from 16 heads it
  // is v7's head-blocked path with a prefetch.
  for (const Shape sh :
       {Shape{2, 1, 150, 512, 64}, Shape{1, 4, 64, 160, 16}, Shape{1, 3, 200, 256, 64},
        Shape{1, 2, 70, 512, 64, 1e16f, 1.0f}, Shape{1, 2, 70, 512, 64, 1.0f, 1e20f},
        Shape{2, 16, 130, 512, 64}, Shape{1, 32, 77, 160, 16}, Shape{1, 7, 131, 512, 64},
        Shape{2, 13, 67, 320, 64}, Shape{1, 6, 129, 64, 16}, Shape{1, 15, 200, 512, 64},
        Shape{1, 4, 3, 512, 64}, Shape{1, 5, 100, 512, 64, 1.0f, 1.0f, 64},
        Shape{1, 9, 70, 384, 32, 1.0f, 1.0f, 192}}) {
    const std::size_t D = sh.d_c + sh.d_r;
    std::vector<float> rows(sh.B * sh.T * D), q_lat(sh.B * sh.H * sh.d_c),
        q_rope(sh.B * sh.H * sh.d_r);
    for (float& x : rows) x = sh.cache_mul * n01(gen);
    for (float& x : q_lat) x = sh.q_mul * n01(gen);
    for (float& x : q_rope) x = n01(gen);
    std::vector<LatentCache> caches;
    caches.reserve(sh.B);
    std::vector<SeqRef> seqs;
    std::vector<float> dq(rows.size());  // what the FP8 cache holds, as floats
    for (std::size_t b = 0; b < sh.B; ++b) {
      caches.emplace_back(sh.d_c, sh.d_r, CacheType::FP8, sh.fp8_tile);
      caches.back().append_rows(rows.data() + b * sh.T * D, sh.T);
      for (std::size_t t = 0; t < sh.T; ++t)
        for (std::size_t k = 0; k < D; ++k) dq[(b * sh.T + t) * D + k] = caches.back().at(t, k);
    }
    for (std::size_t b = 0; b < sh.B; ++b) seqs.push_back({&caches[b], sh.T});
    DecodeArgs a;
    a.batch = sh.B;
    a.heads = sh.H;
    a.d_c = sh.d_c;
    a.d_r = sh.d_r;
    a.q_lat = q_lat.data();
    a.q_rope = q_rope.data();
    a.scale = 1.0f / std::sqrt(float(128 + sh.d_r));
    std::vector<float> ref_dq(sh.B * sh.H * sh.d_c), ref(ref_dq.size()), got(ref_dq.size());
    a.out = ref_dq.data();
    mla_decode_v1(dq.data(), sh.T, a);
    a.out = ref.data();
    mla_decode_v1(rows.data(), sh.T, a);
    for (int threads : {1, 2}) {
      INFO("B " << sh.B << ", H " << sh.H << ", T " << sh.T << ", d_c " << sh.d_c << ", threads "
                << threads);
      a.threads = threads;
      a.out = got.data();
      // v13 for an FP8 cache, and what mla_decode_best picks (v13 again).
      for (auto* kernel : {mla_decode_v7, mla_decode_v13, mla_decode_best}) {
        INFO((kernel == mla_decode_v7 ? "v7" : kernel == mla_decode_v13 ? "v13" : "best"));
        std::fill(got.begin(), got.end(), std::numeric_limits<float>::quiet_NaN());
        kernel(seqs.data(), a);
        std::size_t bad = 0, bad_fp32 = 0;
        for (std::size_t i = 0; i < got.size(); ++i) {
          bad += !(std::fabs(got[i] - ref_dq[i]) <= kF32Atol + kF32Rtol * std::fabs(ref_dq[i]));
          // (With 10^20 times the query the softmax is one-hot: which token wins may differ
          // between the fp32 cache and its FP8 rounding, so only the dequantized one is
          // compared.)
          if (sh.q_mul == 1.0f)
            bad_fp32 += !(std::fabs(got[i] - ref[i]) <= kFp8Atol + kFp8Rtol * std::fabs(ref[i]));
        }
        CHECK(bad == 0);
        CHECK(bad_fp32 == 0);
      }
    }
  }
}

#include "07_optimized_mla/optimized_mla.hpp"
#include "mla/bench.hpp"

TEST_CASE("v7 (FP8 cache) beats v6 (bf16) where the step is memory-bound (one run)",
          "[ch07][fp8][speed]") {
#ifdef MLA_SANITIZE
  // Instrumentation slows the two kernels by different factors: the release build asserts it.
  return;
#endif
  using namespace mla::ch07;
  // One head, 65,536 tokens: 43 MB of FP8 rows against 75 MB of bf16 ones, ~3 FLOP per byte
  // read, far below the machine balance (~6-15 FLOP/byte): the bytes should set the time, and the
  // FP8 cache reads 656/1152 = 0.57 of them (1.76x at best). The goal (issue 12) is 1.5x; on a
  // Zen 4 core (AVX-512 in two 256-bit halves) v7's per-head path computes 42.5 ns per token
  // against v6's 41, so one core is bound by v7's compute, not by its bytes: ~1.4x expected on a
  // quiet one, 1.46-1.92x measured while a parallel build loaded the machine and its memory bus
  // (the README's v7 section). What this asserts is that FP8 beats bf16 here, with a margin, not
  // the goal. One thread, timed in the thread's CPU time: on a shared machine a second thread may
  // not get a core, and wall time counts the waits for one (under a parallel build wall-time ratios
  // swung from 0.9x to 7x, CPU-time ones stayed within 1.2-1.9x).
  mla::ch07::MlaProblem p;
  p.batch = 1;
  p.heads = 1;
  p.context = 65536;
  const MlaInputs in = MlaInputs::random(p, 29);
  std::vector<float> a(p.heads * p.d_c), b(a.size());
  const double ratio = mla::speedup(
      [&] { mla_decode_v6(in.seqs_bf16.data(), in.args(a.data(), 1)); },
      [&] { mla_decode_v7(in.seqs_fp8.data(), in.args(b.data(), 1)); }, 9, mla::thread_cpu_seconds);
  INFO("v7 (fp8) is " << ratio << "x v6 (bf16) at H = 1, T = 65536, 1 thread, CPU time");
  CHECK(ratio >= 1.0);
}
