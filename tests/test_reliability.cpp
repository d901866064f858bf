// Reliability at the edges of the number line: softmax and every attention path of chapters 1-6
// with logits of ±1e4, fully masked rows and denormal inputs, each against a double-precision
// reference written here (not the code under test); and the NaN/Inf policy (tests/README.md):
// non-finite WEIGHTS are refused when a checkpoint is loaded, non-finite INPUTS propagate to
// exactly the outputs that depend on them.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <xtensor/xview.hpp>

#include "01_attention/attention.hpp"
#include "03_multi_head/multi_head.hpp"
#include "04_low_rank_latents/latent.hpp"
#include "05_absorption/absorption.hpp"
#include "06_decoupled_rope/mla_layer.hpp"
#include "mla/checkpoint.hpp"
#include "mla/program.hpp"
#include "mla/random.hpp"
#include "mla/safetensors_writer.hpp"
#include "mla/tensor.hpp"

using namespace mla;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kFltMax = std::numeric_limits<float>::max();

// The logit magnitude of the "large logits" tests: scores are scaled until the largest |score|
// of the reference is this.
constexpr double kBigLogit = 1e4;
// The magnitude of the "denormal" inputs: below FLT_MIN (1.2e-38), so every input is subnormal.
constexpr float kDenormal = 1e-40f;

// ---------------------------------------------------------------------------------------------
// Double-precision references
// ---------------------------------------------------------------------------------------------

// A row-major matrix of doubles: what the references compute in.
struct DMat {
  std::size_t rows = 0, cols = 0;
  std::vector<double> v;
  DMat(std::size_t r, std::size_t c) : rows(r), cols(c), v(r * c, 0.0) {}
  double& operator()(std::size_t i, std::size_t j) { return v[i * cols + j]; }
  double operator()(std::size_t i, std::size_t j) const { return v[i * cols + j]; }
};

DMat to_double(const Mat& m) {
  DMat d(m.shape(0), m.shape(1));
  std::copy(m.begin(), m.end(), d.v.begin());
  return d;
}

// x (n, in) · Wᵀ with W (out, in) -> (n, out), the Linear layout every chapter uses.
DMat mul_t(const DMat& x, const DMat& W) {
  DMat y(x.rows, W.rows);
  for (std::size_t i = 0; i < x.rows; ++i) {
    for (std::size_t o = 0; o < W.rows; ++o) {
      double s = 0;
      for (std::size_t k = 0; k < x.cols; ++k) s += x(i, k) * W(o, k);
      y(i, o) = s;
    }
  }
  return y;
}

struct RefAttention {
  DMat out;                    // (T, H·d_v): per head softmax(scale·q·kᵀ + mask)·v
  double max_abs_score = 0.0;  // the largest |scale·q·k| over every visible (query, key) pair
};

// Multi-head self-attention in double: T tokens, H query heads reading H_kv key/value heads
// (head h reads h / (H / H_kv)). q: (T, H·dk), k: (T, H_kv·dk), v: (T, H_kv·dv). Causal: query
// t sees keys 0..t. Softmax with the max subtracted, so 1e4-sized scores are exact here too.
RefAttention ref_attention(const DMat& q, const DMat& k, const DMat& v, std::size_t H,
                           std::size_t H_kv, std::size_t dk, std::size_t dv, double scale,
                           bool causal = true) {
  const std::size_t T = q.rows, group = H / H_kv;
  RefAttention r{DMat(T, H * dv)};
  std::vector<double> s(T);
  for (std::size_t h = 0; h < H; ++h) {
    const std::size_t g = h / group;
    for (std::size_t t = 0; t < T; ++t) {
      const std::size_t visible = causal ? t + 1 : T;
      double m = -std::numeric_limits<double>::infinity();
      for (std::size_t j = 0; j < visible; ++j) {
        double d = 0;
        for (std::size_t i = 0; i < dk; ++i) d += q(t, h * dk + i) * k(j, g * dk + i);
        s[j] = scale * d;
        m = std::max(m, s[j]);
        r.max_abs_score = std::max(r.max_abs_score, std::fabs(s[j]));
      }
      double sum = 0;
      for (std::size_t j = 0; j < visible; ++j) sum += (s[j] = std::exp(s[j] - m));
      for (std::size_t j = 0; j < visible; ++j) {
        for (std::size_t i = 0; i < dv; ++i) r.out(t, h * dv + i) += s[j] / sum * v(j, g * dv + i);
      }
    }
  }
  return r;
}

// Chapter 4/5's latent layer in double: q = x W_qᵀ, c = x W_dkvᵀ, [k|v] per head = c W_ukvᵀ
// (kv_b_proj layout), causal attention with scale 1/sqrt(d_k), then W_o.
RefAttention ref_latent(const Mat& x, const ch04::LatentWeights& w) {
  const DMat xd = to_double(x);
  const DMat q = mul_t(xd, to_double(w.W_q));
  const DMat kv = mul_t(mul_t(xd, to_double(w.W_dkv)), to_double(w.W_ukv));
  const std::size_t H = w.heads, dk = w.d_k, dv = w.d_v, T = x.shape(0);
  DMat k(T, H * dk), v(T, H * dv);
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t h = 0; h < H; ++h) {
      for (std::size_t i = 0; i < dk; ++i) k(t, h * dk + i) = kv(t, h * (dk + dv) + i);
      for (std::size_t i = 0; i < dv; ++i) v(t, h * dv + i) = kv(t, h * (dk + dv) + dk + i);
    }
  }
  RefAttention r = ref_attention(q, k, v, H, H, dk, dv, 1.0 / std::sqrt(double(dk)));
  r.out = mul_t(r.out, to_double(w.W_o));
  return r;
}

// Chapter 3's layer in double.
RefAttention ref_mha(const Mat& x, const ch03::MhaWeights& w) {
  const DMat xd = to_double(x);
  RefAttention r = ref_attention(mul_t(xd, to_double(w.W_q)), mul_t(xd, to_double(w.W_k)),
                                 mul_t(xd, to_double(w.W_v)), w.n_heads, w.n_kv_heads, w.head_dim,
                                 w.head_dim, 1.0 / std::sqrt(double(w.head_dim)));
  r.out = mul_t(r.out, to_double(w.W_o));
  return r;
}

// Chapter 6's layer on one whole sequence x (T, d_model) at positions 0..T-1, in double from the
// attention on: the layer's own projections (queries with RoPE, normalized latents, rotated rope
// keys) feed per-head keys [W_UK c | k_rope] and values W_UV c, a double softmax and o_proj.
// What it checks is the attention and everything after it, where the extreme values bite.
RefAttention ref_mla(const ch06::MlaLayer& layer, const Mat& x) {
  const MlaConfig& c = layer.config();
  const std::size_t T = x.shape(0), H = c.num_attention_heads, dn = c.qk_nope_head_dim,
                    dr = c.qk_rope_head_dim, dv = c.v_head_dim, dqk = dn + dr;
  const DMat q = to_double(layer.project_queries(x, T, 0));  // (T, H·dqk)
  Mat c_kv, k_rope;
  layer.project_latents(x, T, 0, c_kv, k_rope);
  const DMat kv = mul_t(to_double(c_kv), to_double(layer.weights().kv_b_proj));
  DMat k(T, H * dqk), v(T, H * dv);
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t h = 0; h < H; ++h) {
      for (std::size_t i = 0; i < dn; ++i) k(t, h * dqk + i) = kv(t, h * (dn + dv) + i);
      for (std::size_t i = 0; i < dr; ++i) k(t, h * dqk + dn + i) = k_rope(t, i);
      for (std::size_t i = 0; i < dv; ++i) v(t, h * dv + i) = kv(t, h * (dn + dv) + dn + i);
    }
  }
  RefAttention r = ref_attention(q, k, v, H, H, dqk, dv, layer.softmax_scale());
  r.out = mul_t(r.out, to_double(layer.weights().o_proj));
  return r;
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

// Every element of a finite and within atol + rtol·|ref| of the double reference.
void check_close(const float* a, const DMat& ref, double atol, double rtol,
                 const std::string& what) {
  std::size_t bad = 0, nonfinite = 0, worst = 0;
  double worst_err = -1;
  for (std::size_t i = 0; i < ref.v.size(); ++i) {
    if (!std::isfinite(a[i])) {
      ++nonfinite;
      continue;
    }
    const double err = std::fabs(double(a[i]) - ref.v[i]);
    if (err > atol + rtol * std::fabs(ref.v[i])) ++bad;
    if (err > worst_err) {
      worst_err = err;
      worst = i;
    }
  }
  INFO(what << ": " << ref.v.size() << " values, worst |error| " << worst_err << " at " << worst
            << " (got " << a[worst] << ", reference " << ref.v[worst] << "), atol " << atol
            << ", rtol " << rtol);
  CHECK(nonfinite == 0);
  CHECK(bad == 0);
}

void check_close(const Mat& a, const DMat& ref, double atol, double rtol, const std::string& what) {
  REQUIRE(a.shape(0) == ref.rows);
  REQUIRE(a.shape(1) == ref.cols);
  check_close(a.data(), ref, atol, rtol, what);
}

double max_abs(const DMat& m) {
  double r = 0;
  for (double x : m.v) r = std::max(r, std::fabs(x));
  return r;
}

// Tolerances of the large-logit comparisons. A float score of magnitude 1e4 carries a rounding
// error of ~1e4 · 2^-24 · sqrt(d) ≈ 1e-3 (absolute); a weight moves by at most 1/4 of its
// score's error (dp_i/ds_i = p_i(1 - p_i)), so only where two top scores tie to within a few
// units does an output move by more than float rounding. The seeded data here has no such tie:
// measured worst errors are ~3e-7 of max|ref|, these bounds leave a factor ~300. A NaN or a wrong
// argmax is an O(1) error.
constexpr double kBigAtol = 1e-4, kBigRtol = 1e-4;

void check_big(const Mat& a, const DMat& ref, const std::string& what) {
  check_close(a, ref, kBigAtol * max_abs(ref), kBigRtol, what);
}

// Tolerance of the denormal comparisons (outputs of ~1e-40): subnormal numbers are multiples of
// 2^-149 ≈ 1.4e-45, so every operation on them rounds *absolutely* by up to that. Measured worst
// errors are ~5 of those steps; 1e-43 is ~70. A flush-to-zero (FTZ/DAZ) would err by ~1e-40.
constexpr double kDenormAtol = 1e-43, kDenormRtol = 0;

void scale_in_place(Mat& m, double f) {
  for (float& x : m) x = static_cast<float>(x * f);
}

Mat rows_of(const Tensor3& x, std::size_t b) {
  Mat m = xt::empty<float>({x.shape(1), x.shape(2)});
  std::copy_n(x.data() + b * x.shape(1) * x.shape(2), m.size(), m.data());
  return m;
}

bool row_all_nonfinite(const float* p, std::size_t n) {
  return std::none_of(p, p + n, [](float v) { return std::isfinite(v); });
}

bool row_all_finite(const float* p, std::size_t n) {
  return std::all_of(p, p + n, [](float v) { return std::isfinite(v); });
}

}  // namespace

// =============================================================================================
// Softmax
// =============================================================================================

TEST_CASE("softmax_rows: logits of ±1e4 match a double-precision softmax", "[reliability]") {
  Rng rng(kDefaultSeed);
  const std::size_t R = 8, C = 64;
  Mat s = rng.normal(R, C, 1e4f);
  // Rows where the top logits nearly tie, so the result is not just one-hot.
  for (std::size_t j = 0; j < C; ++j) s(1, j) = 1e4f - static_cast<float>(j % 7);
  for (std::size_t j = 0; j < C; ++j) s(2, j) = -1e4f + 0.5f * static_cast<float>(j % 5);
  DMat ref = to_double(s);
  for (std::size_t i = 0; i < R; ++i) {
    double m = -std::numeric_limits<double>::infinity(), sum = 0;
    for (std::size_t j = 0; j < C; ++j) m = std::max(m, ref(i, j));
    for (std::size_t j = 0; j < C; ++j) sum += (ref(i, j) = std::exp(ref(i, j) - m));
    for (std::size_t j = 0; j < C; ++j) ref(i, j) /= sum;
  }
  softmax_rows(s);
  // Differences to the max within a factor 2 of it are exact in float, so only exp and the sum
  // round: a few ulps.
  check_close(s, ref, 1e-7, 1e-6, "softmax_rows at ±1e4");
}

TEST_CASE("softmax_rows: the largest floats, equal logits and subnormal logits", "[reliability]") {
  Mat s = xt::zeros<float>({4, 3});
  s(0, 0) = kFltMax, s(0, 1) = kFltMax, s(0, 2) = -kFltMax;  // x - max = -inf: weight 0
  s(1, 0) = -kFltMax, s(1, 1) = -kFltMax, s(1, 2) = -kFltMax;
  s(2, 0) = kDenormal, s(2, 1) = -kDenormal, s(2, 2) = 0.0f;  // e^(±1e-40) = 1 in float
  s(3, 0) = 1e30f, s(3, 1) = 1e30f, s(3, 2) = 1e30f;
  softmax_rows(s);
  CHECK(s(0, 0) == 0.5f);
  CHECK(s(0, 1) == 0.5f);
  CHECK(s(0, 2) == 0.0f);
  for (std::size_t r = 1; r < 4; ++r) {
    for (std::size_t j = 0; j < 3; ++j) CHECK(s(r, j) == Approx(1.0 / 3).epsilon(1e-6));
  }
}

TEST_CASE("softmax_rows: a fully masked row becomes zeros, its neighbours are untouched",
          "[reliability]") {
  Mat s = {{kMasked, kMasked, kMasked, kMasked},
           {1e4f, kMasked, -1e4f, kMasked},
           {kMasked, kMasked, kMasked, -1e4f},
           {kMasked, kMasked, kMasked, kMasked}};
  softmax_rows(s);
  for (std::size_t j = 0; j < 4; ++j) {
    CHECK(s(0, j) == 0.0f);
    CHECK(s(3, j) == 0.0f);
  }
  // Row 1: exp(-2e4) underflows to exactly 0 in float (and is ~1e-8686 in exact arithmetic).
  CHECK(s(1, 0) == 1.0f);
  CHECK(s(1, 1) == 0.0f);
  CHECK(s(1, 2) == 0.0f);
  CHECK(s(1, 3) == 0.0f);
  // Row 2: one visible key, however small its score, takes all the weight.
  CHECK(s(2, 3) == 1.0f);
  CHECK(s(2, 0) == 0.0f);

  // The single-vector form: the same rules.
  std::vector<float> v(5, kMasked);
  softmax(v.data(), v.size());
  for (float x : v) CHECK(x == 0.0f);
  softmax(v.data(), 0);  // an empty row is nothing to do, not an error

  // An attention path with nothing to attend to (chapter 1's decode step on an empty cache): the
  // zero vector, as a fully masked row gives, without touching keys or values.
  std::vector<float> q(4, 1.0f), out(3, kNaN);
  ch01::attend_one(q.data(), nullptr, 4, nullptr, 3, 0, 4, 3, nullptr, out.data());
  for (float x : out) CHECK(x == 0.0f);
}

TEST_CASE("softmax_rows: NaN or Inf in a row makes that row non-finite, only that row",
          "[reliability]") {
  Rng rng(kDefaultSeed);
  Mat s = rng.normal(4, 6);
  const Mat clean = s;
  s(1, 3) = kNaN;
  s(2, 0) = kInf;
  Mat expected = clean;
  softmax_rows(s);
  softmax_rows(expected);
  CHECK(row_all_nonfinite(&s(1, 0), 6));
  CHECK(row_all_nonfinite(&s(2, 0), 6));
  for (std::size_t r : {0, 3}) {
    for (std::size_t j = 0; j < 6; ++j) CHECK(s(r, j) == expected(r, j));
  }
}

// =============================================================================================
// Logits of ±1e4 through every attention path
// =============================================================================================

TEST_CASE("ch01 attention: scores of ±1e4 match double precision, causal and unmasked",
          "[reliability]") {
  Rng rng(kDefaultSeed);
  const std::size_t T = 16, d = 32;
  Mat q = rng.normal(T, d);
  const Mat k = rng.normal(T, d), v = rng.normal(T, d);
  const double scale = 1.0 / std::sqrt(double(d));
  for (bool causal : {true, false}) {
    Mat qs = q;
    const double s0 =
        ref_attention(to_double(qs), to_double(k), to_double(v), 1, 1, d, d, scale, causal)
            .max_abs_score;
    scale_in_place(qs, kBigLogit / s0);
    const RefAttention ref =
        ref_attention(to_double(qs), to_double(k), to_double(v), 1, 1, d, d, scale, causal);
    REQUIRE(ref.max_abs_score > 0.99 * kBigLogit);
    const Mat out = ch01::attention(qs, k, v, causal ? ch01::Masking::causal : ch01::Masking::none);
    check_big(out, ref.out, causal ? "ch01 causal" : "ch01 no mask");
  }
}

TEST_CASE("ch03 mha_forward and MhaDecoder: scores of ±1e4 match double precision",
          "[reliability]") {
  Rng rng(kDefaultSeed);
  const std::size_t d_model = 64, heads = 4, head_dim = 16, T = 12;
  const Mat x = rng.normal(T, d_model);
  for (std::size_t n_kv : {heads, std::size_t{2}, std::size_t{1}}) {  // MHA, GQA, MQA
    ch03::MhaWeights w = ch03::random_mha(d_model, heads, n_kv, head_dim, rng);
    scale_in_place(w.W_q, kBigLogit / ref_mha(x, w).max_abs_score);
    const RefAttention ref = ref_mha(x, w);
    REQUIRE(ref.max_abs_score > 0.99 * kBigLogit);
    const std::string kind = "ch03 with " + std::to_string(n_kv) + " kv heads";
    check_big(ch03::mha_forward(x, w), ref.out, kind + ": mha_forward");
    ch03::MhaDecoder dec(w);
    Mat stepped = xt::empty<float>({T, d_model});
    for (std::size_t t = 0; t < T; ++t) {
      const Mat row = dec.step(xt::eval(xt::view(x, xt::range(t, t + 1), xt::all())));
      std::copy_n(row.data(), d_model, &stepped(t, 0));
    }
    check_big(stepped, ref.out, kind + ": MhaDecoder");
  }
}

TEST_CASE("ch04 latent_forward and ch05 absorbed_forward: scores of ±1e4 match double precision",
          "[reliability]") {
  Rng rng(kDefaultSeed);
  const std::size_t d_model = 64, heads = 4, d_k = 16, d_c = 24, T = 12;
  const Mat x = rng.normal(T, d_model);
  ch04::LatentWeights w = ch04::random_latent(d_model, heads, d_k, d_c, rng);
  scale_in_place(w.W_q, kBigLogit / ref_latent(x, w).max_abs_score);
  const RefAttention ref = ref_latent(x, w);
  REQUIRE(ref.max_abs_score > 0.99 * kBigLogit);
  check_big(ch04::latent_forward(x, w), ref.out, "ch04 latent_forward");
  check_big(ch05::absorbed_forward(x, w), ref.out, "ch05 absorbed_forward");
}

namespace {

// A small DeepSeek-V3-shaped layer (query latent, YaRN) for the chapter 6 tests.
MlaConfig small_mla_config() {
  MlaConfig c =
      ch06::make_mla_config(64, 4, 32, 32, 16, 8, 16, YarnScaling{4, 16, 32, 1, 1.0, 1.0});
  c.max_position_embeddings = 64;
  return c;
}

// Run one path of chapter 6 on prefill (B, S, D) then decode (B, N, D).
std::pair<Tensor3, Tensor3> run_path(const ch06::MlaPath& path, const MlaConfig& cfg,
                                     const std::shared_ptr<const ch06::MlaWeights>& w,
                                     const Tensor3& pre, const Tensor3& dec) {
  std::unique_ptr<ch06::MlaLayer> layer = path.make(cfg, w, pre.shape(0));
  return ch06::run_prefill_decode(*layer, pre, dec);
}

// Compare a chapter 6 path with ref_mla on every sequence; `atol_scale` multiplies max|ref|.
void check_mla_paths(const MlaConfig& cfg, const std::shared_ptr<const ch06::MlaWeights>& w,
                     const Tensor3& pre, const Tensor3& dec, double atol, double rtol,
                     bool relative_atol, const std::string& what) {
  const std::size_t B = pre.shape(0), S = pre.shape(1), N = dec.shape(1), D = pre.shape(2);
  const ch06::NaiveMla probe(cfg, w, 1);  // for its projections only
  for (const ch06::MlaPath& path : ch06::builtin_paths()) {
    const auto [out_pre, out_dec] = run_path(path, cfg, w, pre, dec);
    for (std::size_t b = 0; b < B; ++b) {
      // The whole sequence (prefill then decode) at positions 0..S+N-1, in one reference pass.
      Mat x = xt::empty<float>({S + N, D});
      std::copy_n(pre.data() + b * S * D, S * D, x.data());
      std::copy_n(dec.data() + b * N * D, N * D, x.data() + S * D);
      const RefAttention ref = ref_mla(probe, x);
      DMat ref_pre(S, D), ref_dec(N, D);
      std::copy_n(ref.out.v.begin(), S * D, ref_pre.v.begin());
      std::copy_n(ref.out.v.begin() + S * D, N * D, ref_dec.v.begin());
      const double a = relative_atol ? atol * max_abs(ref.out) : atol;
      const std::string name = what + ", " + path.name + ", sequence " + std::to_string(b);
      check_close(out_pre.data() + b * S * D, ref_pre, a, rtol, name + ", prefill");
      check_close(out_dec.data() + b * N * D, ref_dec, a, rtol, name + ", decode");
    }
  }
}

// The largest |score| ref_mla sees over the sequences of x (B, T, D).
double max_mla_score(const MlaConfig& cfg, const std::shared_ptr<const ch06::MlaWeights>& w,
                     const Tensor3& x) {
  const ch06::NaiveMla probe(cfg, w, 1);
  double m = 0;
  for (std::size_t b = 0; b < x.shape(0); ++b) {
    m = std::max(m, ref_mla(probe, rows_of(x, b)).max_abs_score);
  }
  return m;
}

}  // namespace

TEST_CASE(
    "ch06 NaiveMla and AbsorbedMla: scores of ±1e4 match double precision, prefill and decode",
    "[reliability]") {
  Rng rng(kDefaultSeed);
  const MlaConfig cfg = small_mla_config();
  const std::size_t B = 2, S = 10, N = 4;
  ch06::MlaWeights w = ch06::random_mla_weights(cfg, rng);
  Tensor3 pre = xt::empty<float>({B, S, cfg.hidden_size});
  Tensor3 dec = xt::empty<float>({B, N, cfg.hidden_size});
  for (float& v : pre) v = rng.normal();
  for (float& v : dec) v = rng.normal();
  Tensor3 all = xt::empty<float>({B, S + N, cfg.hidden_size});
  for (std::size_t b = 0; b < B; ++b) {
    xt::view(all, b, xt::range(0, S), xt::all()) = xt::view(pre, b);
    xt::view(all, b, xt::range(S, S + N), xt::all()) = xt::view(dec, b);
  }
  // Queries scale linearly with q_b_proj (it comes after the query latent's RMSNorm).
  const double s0 = max_mla_score(cfg, std::make_shared<const ch06::MlaWeights>(w), all);
  scale_in_place(w.q_b_proj, kBigLogit / s0);
  const auto ws = std::make_shared<const ch06::MlaWeights>(w);
  REQUIRE(max_mla_score(cfg, ws, all) > 0.99 * kBigLogit);
  check_mla_paths(cfg, ws, pre, dec, kBigAtol, kBigRtol, true, "ch06 at ±1e4");
}

// =============================================================================================
// Denormal inputs
// =============================================================================================

TEST_CASE("ch01-ch05: denormal inputs give finite outputs equal to double precision",
          "[reliability]") {
  Rng rng(kDefaultSeed);
  SECTION("ch01: q, k, v of ~1e-40 (scores underflow to 0: uniform weights)") {
    const std::size_t T = 8, d = 16;
    const Mat q = rng.normal(T, d, kDenormal), k = rng.normal(T, d, kDenormal),
              v = rng.normal(T, d, kDenormal);
    const RefAttention ref = ref_attention(to_double(q), to_double(k), to_double(v), 1, 1, d, d,
                                           1.0 / std::sqrt(double(d)));
    check_close(ch01::attention(q, k, v), ref.out, kDenormAtol, kDenormRtol, "ch01 denormal");
  }
  SECTION("ch01: ordinary scores, values of ~1e-40 (the output is a mix of subnormals)") {
    const std::size_t T = 8, d = 16;
    const Mat q = rng.normal(T, d), k = rng.normal(T, d), v = rng.normal(T, d, kDenormal);
    const RefAttention ref = ref_attention(to_double(q), to_double(k), to_double(v), 1, 1, d, d,
                                           1.0 / std::sqrt(double(d)));
    const Mat out = ch01::attention(q, k, v);
    REQUIRE(max_abs(ref.out) < 1e-38);  // the outputs really are subnormal
    check_close(out, ref.out, kDenormAtol, kDenormRtol, "ch01 denormal values");
  }
  SECTION("ch03, ch04, ch05: layer inputs of ~1e-40") {
    const std::size_t d_model = 32, heads = 2, head_dim = 8, d_c = 8, T = 6;
    const Mat x = rng.normal(T, d_model, kDenormal);
    const ch03::MhaWeights mw = ch03::random_mha(d_model, heads, heads, head_dim, rng);
    const RefAttention mref = ref_mha(x, mw);
    check_close(ch03::mha_forward(x, mw), mref.out, kDenormAtol, kDenormRtol, "ch03 denormal");
    const ch04::LatentWeights lw = ch04::random_latent(d_model, heads, head_dim, d_c, rng);
    const RefAttention lref = ref_latent(x, lw);
    check_close(ch04::latent_forward(x, lw), lref.out, kDenormAtol, kDenormRtol, "ch04 denormal");
    check_close(ch05::absorbed_forward(x, lw), lref.out, kDenormAtol, kDenormRtol, "ch05 denormal");
  }
}

TEST_CASE("ch06: denormal inputs give finite outputs equal to double precision, both paths",
          "[reliability]") {
  // The RMSNorms lift the latents to ~1e-40/sqrt(eps), so the outputs are tiny (~1e-37) but
  // normal; the rope keys stay subnormal. Compared relative to the output's scale: measured
  // worst error ~3e-7 of it.
  Rng rng(kDefaultSeed);
  const MlaConfig cfg = small_mla_config();
  const auto w = std::make_shared<const ch06::MlaWeights>(ch06::random_mla_weights(cfg, rng));
  Tensor3 pre = xt::empty<float>({std::size_t{2}, std::size_t{6}, cfg.hidden_size});
  Tensor3 dec = xt::empty<float>({std::size_t{2}, std::size_t{3}, cfg.hidden_size});
  for (float& v : pre) v = rng.normal(kDenormal);
  for (float& v : dec) v = rng.normal(kDenormal);
  check_mla_paths(cfg, w, pre, dec, 1e-5, 1e-5, true, "ch06 denormal");
}

// =============================================================================================
// NaN/Inf policy, inputs: propagated to exactly the outputs that depend on them
// =============================================================================================

namespace {

// Chapter 1's attention on x (T, d) with the random projections w; token `bad` of x poisoned.
struct Ch01Poisoned {
  Mat clean, causal, unmasked;  // (T, d) outputs: clean input; poisoned, causal; poisoned, no mask
};

Ch01Poisoned ch01_poisoned(std::size_t T, std::size_t d, std::size_t bad, float poison) {
  Rng rng(kDefaultSeed);
  const ch01::ToyProjections w = ch01::random_projections(d, rng);
  const Mat x = rng.normal(T, d);
  auto run = [&](const Mat& in, ch01::Masking m) {
    return ch01::attention(linear(in, w.W_q), linear(in, w.W_k), linear(in, w.W_v), m);
  };
  Mat xp = x;
  xp(bad, 3) = poison;
  return {run(x, ch01::Masking::causal), run(xp, ch01::Masking::causal),
          run(xp, ch01::Masking::none)};
}

}  // namespace

TEST_CASE("ch01: NaN or Inf in one token's input makes it and every later token non-finite",
          "[reliability]") {
  const std::size_t T = 10, d = 16, bad = 4;
  for (float poison : {kNaN, kInf, -kInf}) {
    const Ch01Poisoned r = ch01_poisoned(T, d, bad, poison);
    for (std::size_t t = bad; t < T; ++t) {
      INFO("causal, token " << t << ", poison " << poison);
      CHECK(row_all_nonfinite(&r.causal(t, 0), d));
    }
    // Without the mask every token looks at the poisoned one.
    for (std::size_t t = 0; t < T; ++t) {
      INFO("no mask, token " << t << ", poison " << poison);
      CHECK(row_all_nonfinite(&r.unmasked(t, 0), d));
    }
  }
}

TEST_CASE("ch01: NaN or Inf in one token's input leaves earlier tokens' outputs unchanged",
          "[reliability]") {
  // A masked key gets weight exactly 0, but 0 · NaN = NaN: a dense P·v lets a later token's
  // non-finite value into every earlier row. Earlier tokens never look at it, so their outputs
  // must be bit-for-bit what they were.
  const std::size_t T = 10, d = 16, bad = 4;
  for (float poison : {kNaN, kInf, -kInf}) {
    const Ch01Poisoned r = ch01_poisoned(T, d, bad, poison);
    for (std::size_t t = 0; t < bad; ++t) {
      INFO("token " << t << ", poison " << poison);
      CHECK(row_all_finite(&r.causal(t, 0), d));
      CHECK(std::equal(&r.causal(t, 0), &r.causal(t, 0) + d, &r.clean(t, 0)));
    }
  }
}

namespace {

// Chapter 6: poison element (b, t, 0) of prefill (if in_prefill) or of decode, run both paths, and
// check the policy: in sequence b, outputs before the poisoned token are unchanged, it and every
// later one are entirely non-finite; the other sequences are unchanged.
void check_mla_poison(bool in_prefill, std::size_t b, std::size_t t, float poison) {
  Rng rng(kDefaultSeed);
  const MlaConfig cfg = small_mla_config();
  const auto w = std::make_shared<const ch06::MlaWeights>(ch06::random_mla_weights(cfg, rng));
  const std::size_t B = 2, S = 6, N = 4, D = cfg.hidden_size;
  Tensor3 pre = xt::empty<float>({B, S, D}), dec = xt::empty<float>({B, N, D});
  for (float& v : pre) v = rng.normal();
  for (float& v : dec) v = rng.normal();
  Tensor3 pre_p = pre, dec_p = dec;
  (in_prefill ? pre_p(b, t, 0) : dec_p(b, t, 0)) = poison;
  const std::size_t first_bad = in_prefill ? t : S + t;  // position of the poisoned token
  for (const ch06::MlaPath& path : ch06::builtin_paths()) {
    const auto [clean_pre, clean_dec] = run_path(path, cfg, w, pre, dec);
    const auto [out_pre, out_dec] = run_path(path, cfg, w, pre_p, dec_p);
    for (std::size_t s = 0; s < B; ++s) {
      for (std::size_t pos = 0; pos < S + N; ++pos) {
        const bool prefill = pos < S;
        const Tensor3& out = prefill ? out_pre : out_dec;
        const Tensor3& clean = prefill ? clean_pre : clean_dec;
        const std::size_t i = prefill ? pos : pos - S;
        const float* o = &out(s, i, 0);
        const float* c = &clean(s, i, 0);
        INFO(path.name << ": sequence " << s << ", position " << pos << " ("
                       << (prefill ? "prefill" : "decode") << "), poison " << poison << " at "
                       << (in_prefill ? "prefill" : "decode") << " (" << b << ", " << t << ")");
        if (s == b && pos >= first_bad) {
          CHECK(row_all_nonfinite(o, D));
        } else {
          REQUIRE(row_all_finite(o, D));
          // Same computation on the same numbers (rows of a batch are independent): equal.
          CHECK(std::equal(o, o + D, c));
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("ch06: NaN or Inf in a prefill token propagates through the cache, both paths",
          "[reliability]") {
  check_mla_poison(true, 0, 2, kNaN);
  check_mla_poison(true, 1, 5, kInf);  // the last prefill token: only decode sees it later
  check_mla_poison(true, 1, 0, -kInf);
}

TEST_CASE("ch06: NaN or Inf in a decoded token propagates to the later decode steps, both paths",
          "[reliability]") {
  check_mla_poison(false, 1, 1, kNaN);
  check_mla_poison(false, 0, 3, kInf);
}

// =============================================================================================
// NaN/Inf policy, weights: refused when loaded, naming the tensor and the first bad value
// =============================================================================================

namespace {

ch06::MlaWeights load_from(const std::vector<TensorData>& t, const MlaConfig& cfg) {
  const Checkpoint ckpt =
      Checkpoint::from_file(SafeTensors::from_bytes(safetensors_bytes(t), "poisoned.safetensors"));
  return ch06::load_mla_weights(ckpt, cfg, 0);
}

}  // namespace

TEST_CASE("load_mla_weights refuses NaN and Inf in any weight, naming the tensor and the index",
          "[reliability]") {
  Rng rng(kDefaultSeed);
  for (bool q_lora : {true, false}) {
    MlaConfig cfg = small_mla_config();
    if (!q_lora) cfg.q_lora_rank.reset();
    const ch06::MlaWeights w = ch06::random_mla_weights(cfg, rng);
    for (DType dtype : {DType::F32, DType::BF16}) {
      const std::vector<TensorData> clean = ch06::mla_weight_tensors(w, cfg, 0, dtype);
      CHECK_NOTHROW(load_from(clean, cfg));  // the control: the same file without the poison
      for (std::size_t k = 0; k < clean.size(); ++k) {
        for (float poison : {kNaN, kInf, -kInf}) {
          std::vector<TensorData> t = clean;
          // A value inside the tensor (not the first), and a later one that must not be named.
          const std::size_t n = t[k].values.size(), i = n / 3 + 1;
          t[k].values[i] = poison;
          t[k].values[n - 1] = kNaN;
          INFO(t[k].name << "[" << i << "] = " << poison << (q_lora ? ", q_lora" : ", q_proj")
                         << (dtype == DType::BF16 ? ", bf16" : ", f32"));
          try {
            load_from(t, cfg);
            FAIL("no error");
          } catch (const InputError& e) {
            const std::string msg = e.what();
            INFO(msg);
            CHECK_THAT(msg, Catch::Contains("'" + t[k].name + "'"));
            CHECK_THAT(msg, Catch::Contains("at index " + std::to_string(i)));
            CHECK_THAT(msg, Catch::Contains(std::isnan(poison) ? "nan"
                                            : poison > 0       ? "(inf)"
                                                               : "(-inf)"));
          }
        }
      }
    }
  }
}
