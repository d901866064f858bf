// Chapter 4: the latent layer is a low-rank MHA layer; decoding from a latent-only cache equals
// recomputing; the SVD that motivates the latent behaves as Eckart–Young says; the trained MHA
// model's key/value projections are more concentrated than at initialization.
#include <catch2/catch.hpp>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "03_multi_head/multi_head.hpp"
#include "04_low_rank_latents/latent.hpp"
#include "04_low_rank_latents/spectrum.hpp"
#include "mla/compare.hpp"
#include "mla/errors.hpp"
#include "mla/random.hpp"
#include "mla/safetensors.hpp"
#include "support.hpp"

#include <xtensor/xview.hpp>

using namespace mla;
using namespace mla::ch04;
using mla::test::rows;

namespace {

struct Dims {
  std::size_t d_model, heads, d_h, d_c, T;
};

// W_K = W_UK·W_DKV and W_V = W_UV·W_DKV, written out with loops over the kv_b_proj layout
// (per head: d_h key rows, then d_h value rows), independently of the library's split.
ch03::MhaWeights low_rank_mha_by_hand(const LatentWeights& w) {
  const std::size_t H = w.heads, dh = w.d_k, d = w.d_model();
  ch03::MhaWeights m;
  m.n_heads = m.n_kv_heads = H;
  m.head_dim = dh;
  m.W_q = w.W_q;
  m.W_o = w.W_o;
  m.W_k = xt::zeros<float>({H * dh, d});
  m.W_v = xt::zeros<float>({H * dh, d});
  for (std::size_t h = 0; h < H; ++h) {
    for (std::size_t i = 0; i < dh; ++i) {
      for (std::size_t j = 0; j < d; ++j) {
        double k = 0, v = 0;
        for (std::size_t c = 0; c < w.d_c; ++c) {
          k += double(w.W_ukv(h * 2 * dh + i, c)) * w.W_dkv(c, j);
          v += double(w.W_ukv(h * 2 * dh + dh + i, c)) * w.W_dkv(c, j);
        }
        m.W_k(h * dh + i, j) = float(k);
        m.W_v(h * dh + i, j) = float(v);
      }
    }
  }
  return m;
}

}  // namespace

TEST_CASE("the latent layer equals chapter 3's MHA with W_K = W_UK·W_DKV, W_V = W_UV·W_DKV",
          "[ch04]") {
  const Dims dims = GENERATE(Dims{32, 4, 8, 12, 10}, Dims{48, 2, 16, 40, 7}, Dims{24, 3, 4, 2, 5},
                             Dims{16, 1, 8, 64, 6});
  CAPTURE(dims.d_model, dims.heads, dims.d_h, dims.d_c, dims.T);
  Rng rng(11);
  const LatentWeights w = random_latent(dims.d_model, dims.heads, dims.d_h, dims.d_c, rng);
  const Mat x = rng.normal(dims.T, dims.d_model);
  const ch03::MhaWeights mha = low_rank_mha_by_hand(w);

  const Mat y_latent = latent_forward(x, w);
  const Mat y_mha = ch03::mha_forward(x, mha);
  INFO(compare(y_latent, y_mha).describe());
  CHECK(allclose(y_latent, y_mha, 1e-5, 1e-4));

  // The library's own product gives the same matrices.
  const ch03::MhaWeights lib = equivalent_mha(w);
  CHECK(allclose(lib.W_k, mha.W_k, 1e-6, 1e-5));
  CHECK(allclose(lib.W_v, mha.W_v, 1e-6, 1e-5));
}

TEST_CASE("kv_b_proj layout: each head's key rows come before its value rows", "[ch04]") {
  const std::size_t H = 3, dk = 2, dv = 4, dc = 5;
  Mat W = xt::empty<float>({H * (dk + dv), dc});
  for (std::size_t r = 0; r < W.shape(0); ++r) {
    for (std::size_t c = 0; c < dc; ++c) W(r, c) = float(100 * r + c);
  }
  const KvUp up = split_kv_up(W, H, dk, dv);
  REQUIRE(up.W_uk.shape(0) == H * dk);
  REQUIRE(up.W_uv.shape(0) == H * dv);
  for (std::size_t h = 0; h < H; ++h) {
    for (std::size_t c = 0; c < dc; ++c) {
      for (std::size_t i = 0; i < dk; ++i) CHECK(up.W_uk(h * dk + i, c) == W(h * 6 + i, c));
      for (std::size_t i = 0; i < dv; ++i) CHECK(up.W_uv(h * dv + i, c) == W(h * 6 + dk + i, c));
    }
  }
  const bool round_trip = join_kv_up(up.W_uk, up.W_uv, H) == W;
  CHECK(round_trip);
  CHECK_THROWS_AS(split_kv_up(W, 4, dk, dv), std::invalid_argument);
}

TEST_CASE("decoding from a cache of latents only equals recomputing the whole sequence", "[ch04]") {
  Rng rng(5);
  const std::size_t d = 40, H = 4, dh = 8, dc = 16, T = 12;
  const LatentWeights w = random_latent(d, H, dh, dc, rng);
  const Mat x = rng.normal(T, d);
  const Mat full = latent_forward(x, w);

  SECTION("one token at a time") {
    LatentDecoder dec(w);
    for (std::size_t t = 0; t < T; ++t) {
      const Mat y = dec.step(rows(x, t, t + 1));
      CAPTURE(t);
      CHECK(allclose(y, rows(full, t, t + 1), 1e-5, 1e-4));
    }
    CHECK(dec.cached_tokens() == T);
    CHECK(dec.cache_floats() == dc * T);  // only c_KV: d_c numbers per token

    // Chapter 3's cache for the same layer holds 2·H·d_h per token.
    ch03::MhaDecoder mha(equivalent_mha(w));
    for (std::size_t t = 0; t < T; ++t) mha.step(rows(x, t, t + 1));
    CHECK(mha.cache_floats() == 2 * H * dh * T);
  }
  SECTION("in uneven chunks") {
    LatentDecoder dec(w);
    std::size_t t = 0;
    for (std::size_t n : {3u, 1u, 5u, 3u}) {
      const Mat y = dec.step(rows(x, t, t + n));
      CAPTURE(t, n);
      CHECK(allclose(y, rows(full, t, t + n), 1e-5, 1e-4));
      t += n;
    }
  }
  SECTION("truncate rolls the cache back") {
    LatentDecoder dec(w);
    dec.step(rows(x, 0, 6));
    const Mat first = dec.step(rows(x, 6, 7));
    dec.truncate(6);
    CHECK(dec.cached_tokens() == 6);
    const Mat again = dec.step(rows(x, 6, 7));
    CHECK(allclose(again, first, 0.0, 0.0));
  }
}

TEST_CASE("latent weights with a wrong shape are refused", "[ch04]") {
  Rng rng(1);
  LatentWeights w = random_latent(16, 2, 4, 6, rng);
  REQUIRE_NOTHROW(w.check());
  w.W_o = rng.normal(16, 9);
  CHECK_THROWS_WITH(w.check(), Catch::Contains("W_o"));
  CHECK_THROWS_AS(random_latent(16, 0, 4, 6, rng), std::invalid_argument);
  LatentCache cache(6);
  CHECK_THROWS_AS(cache.append(rng.normal(2, 5)), std::invalid_argument);
}

TEST_CASE("the SVD at full rank reconstructs the matrix", "[ch04]") {
  Rng rng(3);
  for (auto [m, n] : {std::pair<std::size_t, std::size_t>{96, 64}, {40, 72}}) {
    const Mat W = rng.normal(m, n);
    const Svd d = svd(W);
    const std::size_t r = std::min(m, n);
    REQUIRE(d.s.size() == r);
    const LowRank lr = truncate(d, r);
    const double err = relative_frobenius_error(matmul(lr.up, lr.down), W);
    CAPTURE(m, n, err);
    CHECK(err < 1e-5);
    CHECK_THROWS_AS(truncate(d, r + 1), std::invalid_argument);
    CHECK_THROWS_AS(truncate(d, 0), std::invalid_argument);
  }
}

TEST_CASE("reconstruction error decreases with rank, as the singular values say", "[ch04]") {
  Rng rng(4);
  const Mat W = rng.normal(48, 32);
  const Svd d = svd(W);
  double total = 0;
  for (float s : d.s) total += double(s) * s;
  double previous = 2.0;
  for (std::size_t r = 1; r <= 32; ++r) {
    const LowRank lr = truncate(d, r);
    const double err = relative_frobenius_error(matmul(lr.up, lr.down), W);
    // Eckart–Young: the best rank-r error is the energy of the dropped singular values.
    double tail = 0;
    for (std::size_t i = r; i < d.s.size(); ++i) tail += double(d.s(i)) * d.s(i);
    CAPTURE(r, err);
    CHECK(err < previous);
    CHECK(err == Approx(std::sqrt(tail / total)).margin(1e-5));
    previous = err;
  }
}

TEST_CASE("a rank-r key/value projection is compressed without loss by an r-wide latent",
          "[ch04]") {
  Rng rng(9);
  const std::size_t d = 32, H = 2, dh = 8, r = 6, T = 9;
  const Mat W_kv = matmul(rng.normal(H * 2 * dh, r), rng.normal(r, d));  // exactly rank r
  const Svd s = svd(W_kv);
  CHECK(relative_frobenius_error(matmul(truncate(s, r).up, truncate(s, r).down), W_kv) < 1e-5);
  CHECK(relative_frobenius_error(matmul(truncate(s, r - 1).up, truncate(s, r - 1).down), W_kv) >
        1e-2);

  // The latent layer built from the rank-r factors computes the MHA layer with the full W_kv.
  const LowRank lr = truncate(s, r);
  LatentWeights w;
  w.heads = H;
  w.d_k = w.d_v = dh;
  w.d_c = r;
  w.W_q = rng.linear_weight(H * dh, d);
  w.W_dkv = lr.down;
  w.W_ukv = lr.up;
  w.W_o = rng.linear_weight(d, H * dh);
  const Mat x = rng.normal(T, d);
  ch03::MhaWeights mha;
  mha.n_heads = mha.n_kv_heads = H;
  mha.head_dim = dh;
  mha.W_q = w.W_q;
  mha.W_o = w.W_o;
  mha.W_k = xt::empty<float>({H * dh, d});
  mha.W_v = xt::empty<float>({H * dh, d});
  for (std::size_t h = 0; h < H; ++h) {
    xt::view(mha.W_k, xt::range(h * dh, (h + 1) * dh), xt::all()) =
        xt::view(W_kv, xt::range(2 * h * dh, 2 * h * dh + dh), xt::all());
    xt::view(mha.W_v, xt::range(h * dh, (h + 1) * dh), xt::all()) =
        xt::view(W_kv, xt::range(2 * h * dh + dh, 2 * (h + 1) * dh), xt::all());
  }
  const Mat y_latent = latent_forward(x, w), y_mha = ch03::mha_forward(x, mha);
  INFO(compare(y_latent, y_mha).describe());
  CHECK(relative_frobenius_error(y_latent, y_mha) < 1e-4);
}

// ---------------------------------------------------------------------------------------------
// Real low rank: the trained MHA model shipped in data/models/mha, and its initialization
// (init_kv.safetensors, written by train.py --init-kv with the same seed)
// ---------------------------------------------------------------------------------------------

TEST_CASE("energy_captured and rank_for_energy on a known spectrum", "[ch04]") {
  Vec s = {3.0f, 2.0f, 1.0f, 0.0f};  // energies 9, 4, 1, 0 of 14
  const std::vector<double> e = energy_captured(s);
  REQUIRE(e.size() == 4);
  CHECK(e[0] == Approx(9.0 / 14));
  CHECK(e[1] == Approx(13.0 / 14));
  CHECK(e[3] == Approx(1.0));
  CHECK(rank_for_energy(s, 0.5) == 1);
  CHECK(rank_for_energy(s, 0.9) == 2);
  CHECK(rank_for_energy(s, 0.95) == 3);
  CHECK(rank_for_energy(s, 1.0) == 3);
  CHECK_THROWS_AS(rank_for_energy(s, 0.0), std::invalid_argument);
}

TEST_CASE("trained MHA model: the stacked key/value spectra are sorted and reconstruct the weights",
          "[ch04]") {
  const std::string dir = std::string(MLA_TEST_DATA_DIR) + "/models/mha";
  const SafeTensors f = SafeTensors::open(dir + "/model.safetensors");
  REQUIRE(count_kv_layers(f) == 4);
  for (std::size_t l = 0; l < 4; ++l) {
    INFO("layer " << l);
    const KvProjections p = load_kv_projections(f, l, 16);
    const Mat W = stack_kv(p);
    REQUIRE(W.shape(0) == 256);
    REQUIRE(W.shape(1) == 128);
    const Svd d = svd(W);
    for (std::size_t i = 1; i < d.s.size(); ++i) CHECK(d.s(i) <= d.s(i - 1));
    CHECK(d.s(d.s.size() - 1) >= 0.0f);
    // U·diag(s)·Vᵀ = W: the full-rank truncation is the whole decomposition.
    const LowRank lr = truncate(d, d.s.size());
    const double err = relative_frobenius_error(matmul(lr.up, lr.down), W);
    CAPTURE(err);
    CHECK(err < 1e-5);
    // The spectrum kv_spectrum reports is the same one.
    const KvSpectrum k = kv_spectrum(p);
    CHECK(allclose(k.joint, d.s, 1e-6, 1e-5));
  }
  // A layer past the last, and an MLA model (no k_proj), are refused naming the tensor.
  CHECK_THROWS_AS(load_kv_projections(f, 4, 16), InputError);
  const SafeTensors mla =
      SafeTensors::open(std::string(MLA_TEST_DATA_DIR) + "/models/mla/model.safetensors");
  CHECK(count_kv_layers(mla) == 0);
}

TEST_CASE(
    "trained MHA model: training concentrated the joint key/value spectrum, heads kept full rank",
    "[ch04]") {
  // What chapter 4's README reports (part 5 of ch04_low_rank_latents): at initialization
  // (GPT-2's N(0, 0.02²)) [W_K; W_V] needs 85 of 128 directions for 90 % of its energy and its
  // top 16 hold 29 %; trained, 47-64 and 62-75 %. Asserted with wide margins.
  const std::string dir = std::string(MLA_TEST_DATA_DIR) + "/models/mha";
  const SafeTensors trained = SafeTensors::open(dir + "/model.safetensors");
  const SafeTensors init = SafeTensors::open(dir + "/init_kv.safetensors");
  for (std::size_t l = 0; l < 4; ++l) {
    INFO("layer " << l);
    const KvSpectrum t = kv_spectrum(load_kv_projections(trained, l, 16));
    const KvSpectrum i = kv_spectrum(load_kv_projections(init, l, 16));
    const std::size_t rt = rank_for_energy(t.joint, 0.9), ri = rank_for_energy(i.joint, 0.9);
    const double et = energy_captured(t.joint)[15], ei = energy_captured(i.joint)[15];
    CAPTURE(rt, ri, et, ei);
    CHECK(rt + 15 <= ri);    // at least 15 fewer directions for 90 %
    CHECK(et >= ei + 0.25);  // the top 16 hold at least 25 points more of the energy
    CHECK(rt <= 64);         // the MLA twin's kv_lora_rank keeps 90 % or more
    // Yet every head alone keeps keys of full width: all 16 singular values of each W_K^h are
    // at least 5 % of its largest (a rank-deficient head would have one near 0).
    for (const Vec& s : t.head_k) CHECK(s(15) >= 0.05f * s(0));
  }
}
