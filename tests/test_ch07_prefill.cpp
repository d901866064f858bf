// Chapter 7's prefill (issue 13's prefill half): MHA mode and MQA mode equal chapter 6's naive
// layer over several chunks (S = 1, S not a multiple of a query block or a key tile, S > T,
// T = 0), on 1 and 2 threads; the kernels equal their references; the switch follows its cost
// model; MHA mode's flash attention beats the OpenBLAS formulation (a ratio in one run).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "06_decoupled_rope/latent_attention.hpp"
#include "06_decoupled_rope/mla_layer.hpp"
#include "07_optimized_mla/kernels/mla_decode.hpp"
#include "07_optimized_mla/kernels/mla_prefill.hpp"
#include "07_optimized_mla/prefill_layer.hpp"
#include "07_optimized_mla/runner.hpp"
#include "mla/bench.hpp"
#include "mla/compare.hpp"
#include "mla/random.hpp"

using namespace mla;
using namespace mla::ch07;

namespace {

// The layer's outputs go through o_proj after attention: the chapter's fp32 tolerance
// (kF32Atol + kF32Rtol·|ref|, 1e-4 + 1e-3·|ref|) holds them with room; the measured errors are
// about 1e-6.
constexpr double kAtol = kF32Atol, kRtol = kF32Rtol;

// Random inputs of a kernel-level prefill: latents of T + S tokens, MHA-mode queries.
struct KernelCase {
  PrefillDims d;
  std::size_t S, T;
  Mat c, kr, w, q, ql, qr;
  LatentCache cache;
  KernelCase(const PrefillDims& dims, std::size_t S_, std::size_t T_, std::uint64_t seed)
      : d(dims), S(S_), T(T_), cache(dims.d_c, dims.d_r) {
    Rng rng(seed);
    c = rng.normal(S + T, d.d_c);
    kr = rng.normal(S + T, d.d_r);
    w = rng.normal(d.heads * (d.d_nope + d.d_v), d.d_c, 0.1f);
    q = rng.normal(S * d.heads, d.d_qk());
    ql = rng.normal(S * d.heads, d.d_c, 0.1f);
    qr = rng.normal(S * d.heads, d.d_r);
    cache.append(c.data(), kr.data(), S + T);
  }
};

}  // namespace

TEST_CASE(
    "MHA-mode flash attention equals the OpenBLAS formulation, decompression equals kv_b_proj",
    "[ch07]") {
  PrefillDims d;
  d.heads = 3;
  d.d_c = 40;
  d.d_r = 6;
  d.d_nope = 21;
  d.d_v = 19;  // no width a multiple of a vector
  for (auto [S, T] : {std::pair<std::size_t, std::size_t>{1, 0},
                      {37, 0},
                      {1, 90},
                      {45, 20},
                      {130, 3},
                      {33, 64}}) {
    for (int threads : {1, 2}) {
      const KernelCase k(d, S, T, 5 + S + T);
      const PackedKvUp w(k.w.data(), d);
      MhaKv kv;
      decompress_kv(k.cache, S + T, w, threads, kv);
      REQUIRE(kv.tokens() == S + T);
      // Decompressed rows: [k_rope | c·W_ukᵀ | c·W_uvᵀ].
      double worst = 0;
      for (std::size_t h = 0; h < d.heads; ++h) {
        for (std::size_t t = 0; t < S + T; ++t) {
          const float* row = kv.head(h) + t * kv.ld();
          for (std::size_t j = 0; j < d.d_r; ++j) CHECK(row[j] == k.kr(t, j));
          for (std::size_t j = 0; j < d.d_nope + d.d_v; ++j) {
            double s = 0;
            for (std::size_t i = 0; i < d.d_c; ++i) {
              s += double(k.c(t, i)) * k.w(h * (d.d_nope + d.d_v) + j, i);
            }
            worst = std::max(worst, std::abs(s - row[d.d_r + j]) / (1e-5 + 1e-4 * std::abs(s)));
          }
        }
      }
      CHECK(worst <= 1.0);
      std::vector<float> a(S * d.heads * d.d_v), b(a.size());
      mha_prefill(kv, k.q.data(), S, T, 0.3f, a.data(), threads);
      mha_prefill_blas(kv, k.q.data(), S, T, 0.3f, b.data(), threads);
      INFO("S=" << S << " T=" << T << " threads=" << threads << ": " << compare(a, b).describe());
      CHECK(allclose(a, b, 1e-5, 1e-4));
    }
  }
}

TEST_CASE("MQA-mode prefill equals chapter 6's reference latent attention", "[ch07]") {
  PrefillDims d;
  d.heads = 5;
  d.d_c = 37;
  d.d_r = 4;
  for (auto [S, T] :
       {std::pair<std::size_t, std::size_t>{1, 0}, {2, 0}, {7, 100}, {70, 3}, {29, 64}}) {
    for (int threads : {1, 2}) {
      const KernelCase k(d, S, T, 11 + S);
      auto ref = ch06::make_reference_latent_attention(d.heads, d.d_c, d.d_r);
      ref->append(k.c.data(), k.kr.data(), S + T);
      std::vector<float> a(S * d.heads * d.d_c), b(a.size());
      ref->attend(k.ql.data(), k.qr.data(), S, T, 0.4f, b.data());
      mqa_prefill(k.cache, d.heads, k.ql.data(), k.qr.data(), S, T, 0.4f, a.data(), threads);
      INFO("S=" << S << " T=" << T << " threads=" << threads << ": " << compare(a, b).describe());
      CHECK(allclose(a, b, 1e-5, 1e-4));
    }
  }
  const KernelCase k(d, 4, 0, 1);
  std::vector<float> out(5 * d.heads * d.d_c);
  CHECK_THROWS_AS(
      mqa_prefill(k.cache, d.heads, k.ql.data(), k.qr.data(), 5, 0, 1.0f, out.data(), 1),
      std::invalid_argument);
}

TEST_CASE("both prefill modes and the switch equal chapter 6's naive layer over several chunks",
          "[ch07]") {
  // Two shapes: odd widths (7 heads, d_c 40, d_nope 12, d_rope 6, d_v 10) and DeepSeek's head
  // widths with 16 heads (d_c 512, d_nope 128, d_rope 64, d_v 128: 192/128 in MHA mode).
  const std::vector<MlaConfig> cfgs{ch06::make_mla_config(48, 7, 24, 40, 12, 6, 10),
                                    ch06::make_mla_config(64, 16, std::nullopt, 512, 128, 64, 128)};
  for (const MlaConfig& cfg : cfgs) {
    Rng rng(31);
    auto w = std::make_shared<const ch06::MlaWeights>(ch06::random_mla_weights(cfg, rng));
    for (int threads : {1, 2}) {
      ch06::NaiveMla naive(cfg, w, 2);
      PrefillMla mha(cfg, w, 2, PrefillPolicy::AlwaysMha, threads);
      PrefillMla mqa(cfg, w, 2, PrefillPolicy::AlwaysMqa, threads);
      PrefillMla sw(cfg, w, 2, PrefillPolicy::Auto, threads);
      // T = 0 with a chunk that is no multiple of a query block or a key tile; S = 1; a chunk
      // longer than the context before it (S > T); a small one.
      for (std::size_t S : {37u, 1u, 90u, 5u}) {
        Tensor3 x = xt::empty<float>({std::size_t{2}, S, cfg.hidden_size});
        for (auto& v : x) v = rng.normal();
        const std::size_t T = naive.position();
        const Tensor3 y = naive.forward(x), y_mha = mha.forward(x), y_mqa = mqa.forward(x),
                      y_sw = sw.forward(x);
        INFO("H=" << cfg.num_attention_heads << " threads=" << threads << " S=" << S << " T=" << T
                  << ": mha " << compare(y_mha, y).describe() << "; mqa "
                  << compare(y_mqa, y).describe() << "; switch ("
                  << prefill_mode_name(sw.records().back().mode) << ") "
                  << compare(y_sw, y).describe());
        CHECK(allclose(y_mha, y, kAtol, kRtol));
        CHECK(allclose(y_mqa, y, kAtol, kRtol));
        CHECK(allclose(y_sw, y, kAtol, kRtol));
      }
      CHECK(mha.records().size() == 4);
      CHECK(mha.records()[1].mode == PrefillMode::MHA);
      CHECK(mqa.records()[2].mode == PrefillMode::MQA);
    }
  }
}

TEST_CASE("the switch picks the mode its cost model predicts faster", "[ch07]") {
  PrefillDims d;  // DeepSeek-V2-Lite: 16 heads, d_c 512, d_r 64, d_nope 128, d_v 128
  // Equal rates: pure FLOP counting, chapter 5's S* for a causal chunk (the rope widths cancel):
  // MHA mode wins once S·T + S(S+1)/2 > T·d_c·(d_nope + d_v) / (2·d_c − d_nope − d_v); at T >> S
  // S* -> 512·256/768 ≈ 171, at T = 4096 about 167.
  const PrefillRates equal{100, 100, 100, 100};
  const std::size_t s_star = prefill_crossover(d, 4096, equal);
  INFO("S* at T = 4096, equal rates: " << s_star);
  CHECK(s_star >= 140);
  CHECK(s_star <= 171);
  CHECK(choose_prefill_mode(d, s_star, 4096, equal).mode == PrefillMode::MHA);
  CHECK(choose_prefill_mode(d, s_star - 1, 4096, equal).mode == PrefillMode::MQA);
  CHECK(choose_prefill_mode(d, 1, 4096, equal).mode == PrefillMode::MQA);
  // A slower MHA kernel moves S* up; a slower MQA kernel moves it down.
  CHECK(prefill_crossover(d, 4096, {100, 50, 100, 100}) > s_star);
  CHECK(prefill_crossover(d, 4096, {100, 100, 50, 100}) < s_star);
  CHECK_THROWS_AS(choose_prefill_mode(d, 8, 8, {0, 1, 1, 1}), std::invalid_argument);

  // The layer follows the model with the rates it is given, chunk by chunk.
  const MlaConfig cfg = ch06::make_mla_config(32, 4, std::nullopt, 64, 16, 8, 16);
  Rng rng(3);
  auto w = std::make_shared<const ch06::MlaWeights>(ch06::random_mla_weights(cfg, rng));
  const PrefillRates rates{50, 40, 60, 50};
  PrefillMla layer(cfg, w, 1, PrefillPolicy::Auto, 1, rates);
  for (std::size_t S : {300u, 1u, 2u, 64u, 1u}) {
    Tensor3 x = xt::empty<float>({std::size_t{1}, S, cfg.hidden_size});
    for (auto& v : x) v = rng.normal();
    const std::size_t T = layer.position();
    layer.forward(x);
    const PrefillRecord& r = layer.records().back();
    CHECK(r.chunk == S);
    CHECK(r.context == T);
    CHECK(r.mode == choose_prefill_mode(layer.dims(), S, T, rates).mode);
  }
  CHECK(layer.records()[0].mode == PrefillMode::MHA);  // 300 tokens from nothing: decompress
  CHECK(layer.records()[1].mode == PrefillMode::MQA);  // a decode step: absorbed

  // Calibrated rates are measured, positive, and remembered.
  const PrefillRates c1 = calibrated_prefill_rates(layer.dims(), 1);
  CHECK(c1.decompress > 0);
  CHECK(c1.mha > 0);
  CHECK(c1.mqa > 0);
  CHECK(calibrated_prefill_rates(layer.dims(), 1).mha == c1.mha);
}

TEST_CASE("MHA-mode flash attention is faster than the OpenBLAS formulation (ratio in one run)",
          "[ch07][speed]") {
#ifdef MLA_SANITIZE
  return;  // instrumentation slows the two sides by different factors
#endif
  // OpenBLAS picks its kernels for the CPU at run time, ours are compiled for the build's vector
  // width: an SSE build (4 lanes) against OpenBLAS's AVX-512 kernels measured 0.56x. The claim is
  // about a build for the machine's vectors (8 lanes or more).
  if (kernel_simd().floats < 8) {
    WARN("SSE build: not compared with OpenBLAS's wider kernels");
    return;
  }
  // One thread on both sides (OpenBLAS too): 4 heads of DeepSeek's widths, S = T = 512. Measured
  // 1.3-5.5x on a loaded Zen 4 (AVX-512 and AVX2 builds); asserted with a wide margin.
  PrefillDims d;
  d.heads = 4;
  const KernelCase k(d, 512, 512, 9);
  const PackedKvUp w(k.w.data(), d);
  MhaKv kv;
  decompress_kv(k.cache, 1024, w, 1, kv);
  std::vector<float> a(512 * d.heads * d.d_v), b(a.size());
  const double ratio =
      speedup([&] { mha_prefill_blas(kv, k.q.data(), 512, 512, 0.07f, b.data(), 1); },
              [&] { mha_prefill(kv, k.q.data(), 512, 512, 0.07f, a.data(), 1); }, 3);
  INFO("mha_prefill is " << ratio << "x the OpenBLAS formulation");
  CHECK(ratio >= 1.0);
}
