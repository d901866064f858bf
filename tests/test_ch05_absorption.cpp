// Chapter 5: absorbing W_UK into the query and W_UV into the output changes nothing but the cost.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <utility>
#include <vector>

#include "01_attention/attention.hpp"
#include "04_low_rank_latents/latent.hpp"
#include "05_absorption/absorption.hpp"
#include "mla/bench.hpp"
#include "mla/compare.hpp"
#include "mla/random.hpp"
#include "support.hpp"

#include <xtensor/xbuilder.hpp>
#include <xtensor/xview.hpp>

using namespace mla;
using namespace mla::ch05;
using mla::ch04::LatentDecoder;
using mla::ch04::LatentShape;
using mla::ch04::LatentWeights;
using namespace mla::test;

namespace {

// Equal up to float32 reordering: within 1e-5 of the output's scale plus 1e-4 relative.
bool same(const Mat& a, const Mat& ref) {
  return allclose(a, ref, 1e-5 * max_abs(ref), 1e-4);
}

struct Shape {
  std::size_t d_model, heads, d_k, d_v, d_c;
};

// ---------------------------------------------------------------------------------------------
// Plain loops over the kv_b_proj layout that count every multiply-add they do: the "direct
// count" the analytic formulas must match. Both compute step() on a chunk x (S, d) appended to a
// cache holding `prefix` (P, d_c); scores are computed for all T keys, then masked.
// ---------------------------------------------------------------------------------------------

struct Counted {
  Mat y;
  double madds = 0;
};

// x (S, d) · Wᵀ, W (out, d), in double (tests/support.hpp), counting S·out·d multiply-adds.
Mat project(const Mat& x, const Mat& W, double& madds) {
  madds += double(x.shape(0)) * double(W.shape(0)) * double(x.shape(1));
  return to_float(mul_t(to_double(x), to_double(W)));
}

Counted rebuild_by_hand(const LatentWeights& w, const Mat& prefix, const Mat& x) {
  Counted r;
  const std::size_t S = x.shape(0), P = prefix.shape(0), T = P + S, H = w.heads, dk = w.d_k,
                    dv = w.d_v, blk = dk + dv;
  const Mat q = project(x, w.W_q, r.madds);               // (S, H·dk)
  const Mat c_new = project(x, w.W_dkv, r.madds);         // (S, d_c)
  Mat C = xt::concatenate(xt::xtuple(prefix, c_new), 0);  // (T, d_c)
  const Mat kv = project(C, w.W_ukv, r.madds);            // (T, H·(dk+dv))
  Mat o = xt::zeros<float>({S, H * dv});
  const double scale = 1.0 / std::sqrt(double(dk));
  for (std::size_t s = 0; s < S; ++s) {
    for (std::size_t h = 0; h < H; ++h) {
      std::vector<double> p(T);
      for (std::size_t t = 0; t < T; ++t) {
        double acc = 0;
        for (std::size_t i = 0; i < dk; ++i, ++r.madds)
          acc += double(q(s, h * dk + i)) * kv(t, h * blk + i);
        p[t] = scale * acc;
      }
      softmax_ref(p, P + s + 1);
      for (std::size_t i = 0; i < dv; ++i) {
        double acc = 0;
        for (std::size_t t = 0; t < T; ++t, ++r.madds) acc += p[t] * kv(t, h * blk + dk + i);
        o(s, h * dv + i) = float(acc);
      }
    }
  }
  r.y = project(o, w.W_o, r.madds);
  return r;
}

Counted absorbed_by_hand(const LatentWeights& w, const Mat& prefix, const Mat& x) {
  Counted r;
  const std::size_t S = x.shape(0), P = prefix.shape(0), T = P + S, H = w.heads, dk = w.d_k,
                    dv = w.d_v, dc = w.d_c, blk = dk + dv;
  const Mat q = project(x, w.W_q, r.madds);
  const Mat c_new = project(x, w.W_dkv, r.madds);
  Mat C = xt::concatenate(xt::xtuple(prefix, c_new), 0);
  Mat o = xt::zeros<float>({S, H * dv});
  const double scale = 1.0 / std::sqrt(double(dk));
  for (std::size_t s = 0; s < S; ++s) {
    for (std::size_t h = 0; h < H; ++h) {
      std::vector<double> q_lat(dc, 0.0), o_lat(dc, 0.0), p(T);
      for (std::size_t c = 0; c < dc; ++c) {  // q̃_h = W^UK_hᵀ q_h
        for (std::size_t i = 0; i < dk; ++i, ++r.madds)
          q_lat[c] += double(q(s, h * dk + i)) * w.W_ukv(h * blk + i, c);
      }
      for (std::size_t t = 0; t < T; ++t) {  // scores against the latents themselves
        double acc = 0;
        for (std::size_t c = 0; c < dc; ++c, ++r.madds) acc += q_lat[c] * C(t, c);
        p[t] = scale * acc;
      }
      softmax_ref(p, P + s + 1);
      for (std::size_t c = 0; c < dc; ++c) {  // õ_h = Σ_t p_t c_t
        for (std::size_t t = 0; t < T; ++t, ++r.madds) o_lat[c] += p[t] * C(t, c);
      }
      for (std::size_t i = 0; i < dv; ++i) {  // o_h = W^UV_h õ_h
        double acc = 0;
        for (std::size_t c = 0; c < dc; ++c, ++r.madds)
          acc += double(w.W_ukv(h * blk + dk + i, c)) * o_lat[c];
        o(s, h * dv + i) = float(acc);
      }
    }
  }
  r.y = project(o, w.W_o, r.madds);
  return r;
}

}  // namespace

TEST_CASE("the absorbed layer equals chapter 4's on several shapes", "[ch05]") {
  const Shape sh = GENERATE(Shape{32, 4, 8, 8, 12}, Shape{48, 2, 16, 8, 40}, Shape{24, 3, 4, 4, 2},
                            Shape{16, 1, 8, 8, 64}, Shape{64, 8, 16, 16, 32});
  CAPTURE(sh.d_model, sh.heads, sh.d_k, sh.d_v, sh.d_c);
  Rng rng(21);
  const LatentWeights w = ch04::random_latent(sh.d_model, sh.heads, sh.d_k, sh.d_c, rng, sh.d_v);
  const std::size_t T = 11;
  const Mat x = rng.normal(T, sh.d_model);

  SECTION("full forward") {
    const Mat ref = ch04::latent_forward(x, w), got = absorbed_forward(x, w);
    INFO(compare(got, ref).describe());
    CHECK(same(got, ref));
  }
  SECTION("cached decoding, a prompt then single tokens and a chunk") {
    LatentDecoder rebuild(w);
    AbsorbedDecoder absorbed(w);
    for (auto [t0, t1] : {std::pair<std::size_t, std::size_t>{0, 5}, {5, 6}, {6, 7}, {7, 11}}) {
      const Mat ref = rebuild.step(rows(x, t0, t1)), got = absorbed.step(rows(x, t0, t1));
      CAPTURE(t0, t1);
      INFO(compare(got, ref).describe());
      CHECK(same(got, ref));
    }
    CHECK(absorbed.cache_floats() == rebuild.cache_floats());  // the same latent cache
    CHECK(absorbed.cached_tokens() == T);
  }
}

TEST_CASE("absorb_query and expand_output are the per-head identities", "[ch05]") {
  Rng rng(2);
  const std::size_t H = 3, dk = 5, dv = 4, dc = 7, n = 2;
  const Mat W_uk = rng.normal(H * dk, dc), W_uv = rng.normal(H * dv, dc);
  const Mat q = rng.normal(n * H, dk);  // rows: token-major, head = row % H
  const Mat o_lat = rng.normal(n * H, dc);
  const Mat c = rng.normal(1, dc);  // one cached latent
  const Mat q_lat = absorb_query(q, W_uk, H);
  const Mat o = expand_output(o_lat, W_uv, H);
  REQUIRE(q_lat.shape(0) == n * H);
  REQUIRE(q_lat.shape(1) == dc);
  REQUIRE(o.shape(1) == dv);
  for (std::size_t r = 0; r < n * H; ++r) {
    const std::size_t h = r % H;
    // q̃ᵀ c = qᵀ (W^UK_h c): the score against the latent is the score against the rebuilt key.
    double lhs = 0, rhs = 0;
    for (std::size_t k = 0; k < dc; ++k) lhs += double(q_lat(r, k)) * c(0, k);
    for (std::size_t i = 0; i < dk; ++i) {
      double key = 0;
      for (std::size_t k = 0; k < dc; ++k) key += double(W_uk(h * dk + i, k)) * c(0, k);
      rhs += double(q(r, i)) * key;
    }
    CHECK(lhs == Approx(rhs).margin(1e-4).epsilon(1e-5));
    for (std::size_t i = 0; i < dv; ++i) {
      double v = 0;
      for (std::size_t k = 0; k < dc; ++k) v += double(W_uv(h * dv + i, k)) * o_lat(r, k);
      CHECK(o(r, i) == Approx(v).margin(1e-4).epsilon(1e-5));
    }
  }
  CHECK_THROWS_AS(absorb_query(rng.normal(4, dk), W_uk, H), std::invalid_argument);  // 4 % 3 != 0
  CHECK_THROWS_AS(absorb_query(q, rng.normal(H * dk + 1, dc), H), std::invalid_argument);
  CHECK_THROWS_AS(expand_output(rng.normal(n * H, dc + 1), W_uv, H), std::invalid_argument);
}

TEST_CASE("attention on the latents is chapter 1's attention with keys = values = latents",
          "[ch05]") {
  Rng rng(8);
  const std::size_t dc = 12, T = 9, S = 4;
  ch04::LatentCache cache(dc);
  const Mat C = rng.normal(T, dc);
  cache.append(C);
  const Mat q_lat = rng.normal(S, dc);  // one head, S tokens at positions T-S .. T-1
  const Mat got = attend_latent(q_lat, cache, T - S, 1.0f / std::sqrt(float(dc)), 1);
  const Mat ref = ch01::attention(q_lat, C, C);  // scale 1/sqrt(d_c), causal, last S positions
  INFO(compare(got, ref).describe());
  CHECK(allclose(got, ref, 1e-5, 1e-4));
  CHECK_THROWS_AS(attend_latent(q_lat, cache, T - S + 1, 1.0f, 1), std::invalid_argument);
}

TEST_CASE("the analytic FLOP formulas equal a direct count", "[ch05]") {
  Rng rng(13);
  const Shape sh{6, 2, 3, 2, 4};
  const LatentWeights w = ch04::random_latent(sh.d_model, sh.heads, sh.d_k, sh.d_c, rng, sh.d_v);
  for (auto [P, S] : {std::pair<std::size_t, std::size_t>{4, 1}, {2, 3}, {0, 5}}) {
    const Mat prefix = rng.normal(P, sh.d_c), x = rng.normal(S, sh.d_model);
    const Counted rb = rebuild_by_hand(w, prefix, x), ab = absorbed_by_hand(w, prefix, x);
    const LatentShape shape = w.shape();
    CAPTURE(P, S);
    CHECK(rebuild_cost(shape, S, P + S).flops == 2 * rb.madds);
    CHECK(absorbed_cost(shape, S, P + S).flops == 2 * ab.madds);

    // The counted loops compute what the decoders compute.
    LatentDecoder rebuild(w);
    AbsorbedDecoder absorbed(w);
    rebuild.append_latents(prefix);
    absorbed.append_latents(prefix);
    CHECK(same(rebuild.step(x), rb.y));
    CHECK(same(absorbed.step(x), ab.y));
  }
}

TEST_CASE("absorbed costs fewer FLOPs below the crossover chunk, more above", "[ch05]") {
  const LatentShape v2lite{2048, 16, 128, 128, 512};
  for (std::size_t T : {64u, 512u, 1024u, 8192u}) {
    const double s_star = crossover_chunk(v2lite, T);
    CAPTURE(T, s_star);
    REQUIRE(s_star > 1);
    const auto below = std::size_t(std::floor(s_star)), above = std::size_t(std::ceil(s_star)) + 1;
    CHECK(absorbed_cost(v2lite, below, T).flops <= rebuild_cost(v2lite, below, T).flops);
    if (above <= T) {
      CHECK(absorbed_cost(v2lite, above, T).flops > rebuild_cost(v2lite, above, T).flops);
    }
    // Decoding one token: absorption does far less work.
    CHECK(rebuild_cost(v2lite, 1, T).flops > 2 * absorbed_cost(v2lite, 1, T).flops);
  }
  // For a long context the crossover tends to d_c(d_k+d_v) / (2d_c − d_k − d_v) = 170.7.
  CHECK(crossover_chunk(v2lite, std::size_t{1} << 40) == Approx(512.0 * 256 / 768).epsilon(1e-6));
  // A latent no wider than half a key+value never costs more when absorbed.
  CHECK(std::isinf(crossover_chunk(LatentShape{64, 2, 16, 16, 16}, 100)));
}

TEST_CASE(
    "absorbed decoding: attention 5x, whole step 2x faster than rebuilding K and V at T = 1024",
    "[ch05][speed]") {
  // DeepSeek-V2-Lite's attention sizes: 16 heads, d_h 128, d_c 512, d_model 2048.
  Rng rng(17);
  const LatentWeights w = ch04::random_latent(2048, 16, 128, 512, rng);
  const std::size_t T = 1024;
  const Mat prefix = rng.normal(T - 1, 512), x = rng.normal(1, 2048), q = rng.normal(1, 16 * 128);
  LatentDecoder rebuild(w);
  AbsorbedDecoder absorbed(w);
  rebuild.append_latents(prefix);
  absorbed.append_latents(prefix);

  // The whole step also runs the projections both share (W_Q, W_DKV, W_O: ~40 MB of weights at
  // batch 1), which bounds its ratio and depends on the machine's memory bandwidth: a loose bound.
  const double step_ratio = speedup(
      [&] {
        const Mat y = rebuild.step(x);
        do_not_optimize(y.data()[0]);
        rebuild.truncate(T - 1);
      },
      [&] {
        const Mat y = absorbed.step(x);
        do_not_optimize(y.data()[0]);
        absorbed.truncate(T - 1);
      },
      5);
  INFO("whole step, rebuild / absorbed time: " << step_ratio);
  CHECK(step_ratio >= 2.0);

  // The attention part, what absorption changes: ~d_h = 128 times fewer FLOPs; 5x is a wide margin.
  const Mat last = rng.normal(1, 512);  // queries of token T-1 see all T latents
  rebuild.append_latents(last);
  absorbed.append_latents(last);
  const double attn_ratio = speedup(
      [&] {
        const Mat o = rebuild.attend_cached(q);
        do_not_optimize(o.data()[0]);
      },
      [&] {
        const Mat o = absorbed.attend_cached(q);
        do_not_optimize(o.data()[0]);
      },
      5);
  INFO("attention part, rebuild / absorbed time: " << attn_ratio);
  CHECK(attn_ratio >= 5.0);
}
