// Chapter 9: DeepSeek Sparse Attention. The golden case of DeepSeek-V3.2-Exp's reference, the
// indexer's pieces (Hadamard, rotate-half RoPE, FP8 blocks), top-k, and the sparse attention
// forms against each other and against dense MLA.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include <xtensor/xview.hpp>
#include "06_decoupled_rope/mla_layer.hpp"
#include "09_sparse_attention/dsa_verify.hpp"
#include "09_sparse_attention/sparse_decode.hpp"
#include "mla/bench.hpp"
#include "mla/compare.hpp"
#include "mla/fp8.hpp"
#include "mla/safetensors_writer.hpp"
#include "support.hpp"

using namespace mla;
using namespace mla::ch09;

namespace {

const std::string kDsa = std::string(MLA_TEST_DATA_DIR) + "/golden/dsa/dsa_tiny";

const DsaCase& golden() {
  static const DsaCase c = load_dsa_case(kDsa + ".config.json", kDsa + ".safetensors");
  return c;
}

// A small DSA config: d_model 64, 4 MLA heads, q_lora 32, d_c 32, rope 8, indexer 4 × 16.
DsaConfig small_config(std::size_t topk) {
  DsaConfig c;
  c.mla = ch06::make_mla_config(64, 4, 32, 32, 16, 8, 16);
  c.index_n_heads = 4;
  c.index_head_dim = 16;
  c.index_topk = topk;
  return c;
}

}  // namespace

TEST_CASE("DSA golden case: outputs, index sets and index scores of every path and variant",
          "[ch09]") {
  const DsaCase& c = golden();
  const std::vector<DsaVerifyRow> rows = verify_dsa_case(c, dsa_paths(), 1e-4);
  REQUIRE(rows.size() == dsa_paths().size() * 4);
  for (const DsaVerifyRow& r : rows) {
    INFO(r.path << " " << r.variant << " " << r.phase << ": " << r.cmp.describe() << ", "
                << r.index_rows_ok << "/" << r.index_rows << " index sets, score err "
                << r.score_err);
    CHECK(r.cmp.finite);
    CHECK(r.cmp.max_abs <= 1e-4);
    CHECK(r.index_rows_ok == r.index_rows);
    CHECK(r.score_err <= (r.variant == "fp8" ? kFp8ScoreTol : kExactScoreTol));
    CHECK(r.pass);
  }
}

TEST_CASE("DSA golden case: the exact index scores match to float32 noise (1e-5 of the row)",
          "[ch09]") {
  for (const DsaVerifyRow& r : verify_dsa_case(golden(), {dsa_paths()[0]}, 1e-4)) {
    if (r.variant == "exact") CHECK(r.score_err <= 1e-5);
  }
}

TEST_CASE("DSA golden case: dense MLA (chapter 6's paths) is output_dense", "[ch09]") {
  for (const ch06::VerifyRow& r :
       ch06::verify_case(dense_case(golden()), ch06::builtin_paths(), 1e-4)) {
    INFO(r.path << " " << r.phase << ": " << r.cmp.describe());
    CHECK(r.pass);
  }
}

TEST_CASE("DSA with index_topk >= the context is dense MLA, in both sparse forms", "[ch09]") {
  const DsaCase& g = golden();
  DsaConfig cfg = g.config;
  cfg.index_topk = 64;  // > 20 + 6 tokens
  for (const SparseForm form : {SparseForm::Gathered, SparseForm::Masked}) {
    DsaOptions opt;
    opt.cores = reference_sparse_cores(form);
    DsaLayer layer(cfg, g.weights, g.prefill_input.shape(0), opt);
    const auto [pre, dec] = run_prefill_decode(layer, g.prefill_input, g.decode_input);
    CHECK(compare(pre, g.prefill_dense).max_abs <= 1e-4);
    CHECK(compare(dec, g.decode_dense).max_abs <= 1e-4);
  }
}

TEST_CASE("Hadamard: H·Hᵀ = n·I, so the scaled rotation keeps dot products", "[ch09]") {
  for (const std::size_t n : {1, 2, 8, 32, 128}) {
    // Column j of H/√n is hadamard(e_j); H[i][j] = (-1)^popcount(i & j).
    std::vector<float> H(n * n);
    for (std::size_t j = 0; j < n; ++j) {
      std::vector<float> e(n, 0.0f);
      e[j] = 1.0f;
      hadamard(e.data(), n);
      for (std::size_t i = 0; i < n; ++i) {
        const float want = (__builtin_popcountll(i & j) % 2 ? -1.0f : 1.0f) / std::sqrt(float(n));
        CHECK(e[i] == Approx(want).margin(1e-6));
        H[i * n + j] = e[i] * std::sqrt(float(n));
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t j = 0; j < n; ++j) {
        double dot = 0;
        for (std::size_t k = 0; k < n; ++k) dot += H[i * n + k] * H[j * n + k];
        CHECK(dot == Approx(i == j ? double(n) : 0.0).margin(1e-4));
      }
    }
  }
  Rng rng(5);
  std::vector<float> a = test::random_vector(rng, 64), b = test::random_vector(rng, 64);
  const double before = std::inner_product(a.begin(), a.end(), b.begin(), 0.0);
  hadamard(a.data(), 64);
  hadamard(b.data(), 64);
  CHECK(std::inner_product(a.begin(), a.end(), b.begin(), 0.0) == Approx(before).margin(1e-4));
  std::vector<float> odd(12);
  CHECK_THROWS_AS(hadamard(odd.data(), 12), std::invalid_argument);
}

TEST_CASE("FP8 blocks: ue8m0 scales are powers of two and put the block max above 224, at most 448",
          "[ch09]") {
  CHECK(ue8m0_scale(448.0f) == 1.0f);  // an exact power of two stays put
  CHECK(ue8m0_scale(449.0f) == 2.0f);
  CHECK(ue8m0_scale(0.0f) == ue8m0_scale(1e-4f));  // amax floor 1e-4
  Rng rng(9);
  std::vector<float> x = test::random_vector(rng, 128);
  std::vector<std::uint8_t> codes(128);
  float s = 0;
  quantize_fp8_blocks(x.data(), 128, 128, codes.data(), &s);
  CHECK(std::log2(s) == std::round(std::log2(s)));
  float amax = 0, qmax = 0;
  for (std::size_t i = 0; i < 128; ++i) {
    amax = std::max(amax, std::fabs(x[i]));
    qmax = std::max(qmax, std::fabs(e4m3_to_float(codes[i])));
    CHECK(codes[i] == float_to_e4m3(x[i] / s));  // the shared codec, nothing of its own
  }
  CHECK(amax / s > 224.0f);
  CHECK(amax / s <= 448.0f);
  CHECK(qmax > 224.0f);
}

TEST_CASE("Hadamard leaves exact index scores unchanged, FP8 scores differ only by quantization",
          "[ch09]") {
  // Scores computed with keys and queries rotated (what the indexer does) equal the plain dot
  // products of the unrotated vectors; the FP8 ones are close but not equal.
  Rng rng(11);
  const std::size_t DI = 32;
  std::vector<float> q = test::random_vector(rng, DI), k = test::random_vector(rng, DI);
  const double plain = std::inner_product(q.begin(), q.end(), k.begin(), 0.0);
  hadamard(q.data(), DI);
  hadamard(k.data(), DI);
  CHECK(std::inner_product(q.begin(), q.end(), k.begin(), 0.0) == Approx(plain).margin(1e-5));
  std::vector<std::uint8_t> qc(DI), kc(DI);
  float qs = 0, ks = 0;
  quantize_fp8_blocks(q.data(), DI, DI, qc.data(), &qs);
  quantize_fp8_blocks(k.data(), DI, DI, kc.data(), &ks);
  double fp8 = 0;
  for (std::size_t i = 0; i < DI; ++i) fp8 += e4m3_to_float(qc[i]) * e4m3_to_float(kc[i]);
  fp8 *= double(qs) * ks;
  CHECK(fp8 != plain);
  CHECK(std::fabs(fp8 - plain) <= 0.05 * std::sqrt(double(DI)));  // e4m3: 3 mantissa bits
}

TEST_CASE("The indexer RoPE is rotate-half, the interleaved layout (the bug) changes the scores",
          "[ch09]") {
  const DsaCase& g = golden();
  const std::size_t B = g.prefill_input.shape(0);
  std::vector<float> good, bad;
  for (const bool interleaved : {false, true}) {
    DsaOptions opt;
    opt.indexer.interleaved_rope = interleaved;
    DsaLayer layer(g.config, g.weights, B, opt);
    layer.forward(g.prefill_input);
    (interleaved ? bad : good) = layer.scores()[0];
  }
  const std::size_t S = g.prefill_input.shape(1);
  double err_good = 0, err_bad = 0, row_max = 0;
  for (std::size_t i = 0; i < S * S; ++i) {
    row_max = std::max(row_max, double(std::fabs(g.exact.prefill_scores.data()[i])));
    err_good = std::max(err_good, double(std::fabs(good[i] - g.exact.prefill_scores.data()[i])));
    err_bad = std::max(err_bad, double(std::fabs(bad[i] - g.exact.prefill_scores.data()[i])));
  }
  CHECK(err_good <= 1e-4 * row_max);
  CHECK(err_bad > 1e-2 * row_max);  // the interleaved layout moves scores far beyond noise

  // rotate_half turns (x[i], x[i+d/2]); Rope::rotate turns (x[2i], x[2i+1]).
  const ch06::Rope rope({1.0f, 0.5f});
  std::vector<float> v{1, 2, 3, 4}, w = v;
  rotate_half(rope, v.data(), 1);
  CHECK(v[0] == Approx(1 * std::cos(1.0f) - 3 * std::sin(1.0f)));
  CHECK(v[2] == Approx(1 * std::sin(1.0f) + 3 * std::cos(1.0f)));
  rope.rotate(w.data(), 1);
  CHECK(w[0] == Approx(1 * std::cos(1.0f) - 2 * std::sin(1.0f)));
}

TEST_CASE("top-k keeps min(index_topk, visible) tokens with the largest scores, -1 padded",
          "[ch09]") {
  const std::vector<float> s{0.5f, -1.0f, 3.0f, 2.0f, 3.0f};
  std::vector<std::int32_t> out(3);
  select_topk(s.data(), 5, 3, out.data());
  CHECK(out == std::vector<std::int32_t>{2, 4, 3});  // ties: earlier position first
  std::vector<std::int32_t> pad(4);
  select_topk(s.data(), 2, 4, pad.data());
  CHECK(pad == std::vector<std::int32_t>{0, 1, -1, -1});
}

TEST_CASE("Sparse gathered = masked = dense when the list holds every token, NaN rows unread",
          "[ch09]") {
  Rng rng(21);
  const std::size_t T = 40, d_c = 32, d_r = 8, H = 4;
  std::vector<float> C = test::random_vector(rng, T * d_c), KR = test::random_vector(rng, T * d_r);
  std::vector<float> ql = test::random_vector(rng, H * d_c), qr = test::random_vector(rng, H * d_r);
  const LatentRows rows{C.data(), KR.data(), T, d_c, d_r};
  // Dense MLA through chapter 6's reference core.
  auto dense_core = ch06::make_reference_latent_attention(H, d_c, d_r);
  dense_core->append(C.data(), KR.data(), T);
  std::vector<float> dense(H * d_c), gathered(H * d_c), masked(H * d_c);
  dense_core->attend(ql.data(), qr.data(), 1, T - 1, 0.2f, dense.data());
  std::vector<std::int32_t> all(T + 5, -1);  // every token, shuffled, some -1 among them
  std::iota(all.begin(), all.begin() + T, 0);
  std::reverse(all.begin(), all.end());
  sparse_attend_gathered(rows, all.data(), all.size(), T,
                         {H, ql.data(), qr.data(), 0.2f, gathered.data()});
  sparse_attend_masked(rows, all.data(), all.size(), T,
                       {H, ql.data(), qr.data(), 0.2f, masked.data()});
  CHECK(compare(gathered, dense).max_abs <= 1e-5);
  CHECK(compare(masked, dense).max_abs <= 1e-5);

  // A subset, with every other row of the cache NaN: the gathered form never reads them.
  std::vector<std::int32_t> some{3, -1, 17, 0, 39, -1, 22};
  std::vector<float> Cn = C, KRn = KR;
  std::vector<bool> chosen(T, false);
  for (auto t : some) {
    if (t >= 0) chosen[t] = true;
  }
  for (std::size_t t = 0; t < T; ++t) {
    if (chosen[t]) continue;
    std::fill_n(Cn.data() + t * d_c, d_c, std::numeric_limits<float>::quiet_NaN());
    std::fill_n(KRn.data() + t * d_r, d_r, std::numeric_limits<float>::quiet_NaN());
  }
  std::vector<float> g_nan(H * d_c), m_clean(H * d_c);
  sparse_attend_gathered({Cn.data(), KRn.data(), T, d_c, d_r}, some.data(), some.size(), T,
                         {H, ql.data(), qr.data(), 0.2f, g_nan.data()});
  sparse_attend_masked(rows, some.data(), some.size(), T,
                       {H, ql.data(), qr.data(), 0.2f, m_clean.data()});
  CHECK(compare(g_nan, m_clean).finite);
  CHECK(compare(g_nan, m_clean).max_abs <= 1e-5);

  // Nothing selected (all -1): the output is 0, not NaN.
  std::vector<std::int32_t> none(4, -1);
  sparse_attend_gathered(rows, none.data(), 4, T, {H, ql.data(), qr.data(), 0.2f, g_nan.data()});
  CHECK(std::all_of(g_nan.begin(), g_nan.end(), [](float v) { return v == 0.0f; }));
}

TEST_CASE("Sparse attention refuses duplicate and out-of-range indices with a clear error",
          "[ch09]") {
  std::vector<float> C(10 * 4, 1.0f), KR(10 * 2, 1.0f), q(4 + 2, 1.0f), out(4);
  const LatentRows rows{C.data(), KR.data(), 10, 4, 2};
  const SparseQuery sq{1, q.data(), q.data() + 4, 1.0f, out.data()};
  const std::vector<std::int32_t> dup{1, 2, 1}, far{1, 10}, neg{-2}, ok{9, -1, 0};
  CHECK_THROWS_WITH(sparse_attend_gathered(rows, dup.data(), 3, 10, sq),
                    Catch::Contains("position 1 is listed twice"));
  CHECK_THROWS_WITH(sparse_attend_gathered(rows, far.data(), 2, 10, sq),
                    Catch::Contains("index 1 is 10, outside 0..9"));
  CHECK_THROWS_WITH(sparse_attend_masked(rows, neg.data(), 1, 10, sq), Catch::Contains("is -2"));
  // Causality: a query at position 4 sees 0..4 only.
  CHECK_THROWS_WITH(sparse_attend_gathered(rows, ok.data(), 3, 5, sq),
                    Catch::Contains("outside 0..4"));
  CHECK_NOTHROW(sparse_attend_gathered(rows, ok.data(), 3, 10, sq));
}

TEST_CASE("DSA layer: the two sparse forms agree with a small top-k, prefill and decode",
          "[ch09]") {
  const DsaConfig cfg = small_config(5);
  Rng rng(3);
  auto w = std::make_shared<const DsaWeights>(random_dsa_weights(cfg, rng));
  const Tensor3 pre = test::random_tensor3(rng, 2, 12, 64),
                dec = test::random_tensor3(rng, 2, 4, 64);
  std::vector<Tensor3> outs;
  for (const SparseForm form : {SparseForm::Gathered, SparseForm::Masked}) {
    DsaOptions opt;
    opt.cores = reference_sparse_cores(form);
    DsaLayer layer(cfg, w, 2, opt);
    auto [p, d] = run_prefill_decode(layer, pre, dec);
    outs.push_back(p);
    outs.push_back(d);
    // Causal selection: query s of the prefill keeps min(5, s+1) tokens, all <= s.
    layer.forward(xt::view(pre, xt::all(), xt::range(0, 1), xt::all()));
  }
  CHECK(compare(outs[0], outs[2]).max_abs <= 1e-5);
  CHECK(compare(outs[1], outs[3]).max_abs <= 1e-5);
  // And the dense layer differs (5 of up to 16 tokens kept).
  ch06::AbsorbedMla dense(cfg.mla, w->mla, 2);
  const auto [dp, dd] = ch06::run_prefill_decode(dense, pre, dec);
  CHECK(compare(outs[1], dd).max_abs > 1e-3);
}

TEST_CASE("DSA layer: prefill selection is causal with min(index_topk, s+1) tokens", "[ch09]") {
  const DsaConfig cfg = small_config(5);
  Rng rng(4);
  auto w = std::make_shared<const DsaWeights>(random_dsa_weights(cfg, rng));
  DsaLayer layer(cfg, w, 1);
  layer.forward(test::random_tensor3(rng, 1, 9, 64));
  const Selection& sel = layer.selection();
  for (std::size_t s = 0; s < 9; ++s) {
    std::size_t valid = 0;
    for (std::size_t j = 0; j < 5; ++j) {
      const std::int32_t t = sel.row(0, s)[j];
      if (t < 0) continue;
      ++valid;
      CHECK(t <= static_cast<std::int32_t>(s));
    }
    CHECK(valid == std::min<std::size_t>(5, s + 1));
  }
}

TEST_CASE("DSA config: bad indexer fields are refused by name", "[ch09]") {
  DsaConfig c = small_config(4);
  CHECK_NOTHROW(check_dsa_config(c));
  DsaConfig small_dim = c;
  small_dim.index_head_dim = 4;  // < qk_rope_head_dim 8
  CHECK_THROWS_WITH(check_dsa_config(small_dim),
                    Catch::Contains("index_head_dim") && Catch::Contains("qk_rope_head_dim"));
  DsaConfig odd = c;
  odd.index_head_dim = 24;
  CHECK_THROWS_WITH(check_dsa_config(odd),
                    Catch::Contains("index_head_dim") && Catch::Contains("power of two"));
  DsaConfig zero = c;
  zero.index_topk = 0;
  CHECK_THROWS_WITH(check_dsa_config(zero), Catch::Contains("index_topk"));
  DsaConfig no_q = c;
  no_q.mla.q_lora_rank.reset();
  CHECK_THROWS_WITH(check_dsa_config(no_q), Catch::Contains("q_lora_rank"));
  CHECK_THROWS_AS(check_dsa_config(zero), InputError);
}

TEST_CASE("DSA weights: one list, a missing indexer tensor is refused by name", "[ch09]") {
  const DsaConfig cfg = small_config(4);
  Rng rng(8);
  const DsaWeights w = random_dsa_weights(cfg, rng);
  std::vector<std::string> names;
  for_each_weight(w.indexer, cfg, [&](const std::string& n, const auto&, const ch06::WeightShape&) {
    names.push_back(n);
  });
  CHECK(names ==
        std::vector<std::string>{"self_attn.indexer.wq_b.weight", "self_attn.indexer.wk.weight",
                                 "self_attn.indexer.k_norm.weight", "self_attn.indexer.k_norm.bias",
                                 "self_attn.indexer.weights_proj.weight"});
  std::vector<TensorData> tensors = dsa_weight_tensors(w, cfg, 0, DType::F32);
  const std::string path =
      (std::filesystem::temp_directory_path() / "mla_ch09_test_weights.safetensors").string();
  write_safetensors(path, tensors);
  const DsaWeights back = load_dsa_weights(Checkpoint::open(path), cfg, 0);
  CHECK(compare(back.indexer.wq_b, w.indexer.wq_b).max_abs == 0);
  CHECK(compare(back.indexer.k_norm_bias, w.indexer.k_norm_bias).max_abs == 0);
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [](const TensorData& t) {
                                 return t.name == "model.layers.0.self_attn.indexer.k_norm.bias";
                               }),
                tensors.end());
  write_safetensors(path, tensors);
  CHECK_THROWS_WITH(load_dsa_weights(Checkpoint::open(path), cfg, 0),
                    Catch::Contains("self_attn.indexer.k_norm.bias"));
}

TEST_CASE("Sparse decode on chapter 7's kernel = the reference gathered form, NaN rows unread",
          "[ch09]") {
  Rng rng(31);
  const std::size_t T = 300, d_c = 64, d_r = 16, H = 16;  // 16 heads: the head-blocked kernel
  std::vector<float> C = test::random_vector(rng, T * d_c), KR = test::random_vector(rng, T * d_r);
  std::vector<float> ql = test::random_vector(rng, H * d_c), qr = test::random_vector(rng, H * d_r);
  std::vector<std::int32_t> idx;
  for (std::int32_t t = 5; t < 300; t += 7) idx.push_back(t);
  idx.insert(idx.begin() + 3, -1);
  // The tiled cache with every unselected row NaN.
  std::vector<float> Cn = C, KRn = KR;
  std::vector<bool> chosen(T, false);
  for (auto t : idx) {
    if (t >= 0) chosen[t] = true;
  }
  for (std::size_t t = 0; t < T; ++t) {
    if (chosen[t]) continue;
    std::fill_n(Cn.data() + t * d_c, d_c, std::numeric_limits<float>::quiet_NaN());
    std::fill_n(KRn.data() + t * d_r, d_r, std::numeric_limits<float>::quiet_NaN());
  }
  ch07::LatentCache cache(d_c, d_r), scratch(d_c, d_r);
  cache.append(Cn.data(), KRn.data(), T);
  std::vector<float> fast(H * d_c), ref(H * d_c);
  const ch07::DecodeArgs a =
      ch07::make_decode_args(1, H, d_c, d_r, ql.data(), qr.data(), 0.1f, fast.data(), 2);
  sparse_decode_gathered(cache, idx.data(), idx.size(), T, a, scratch);
  sparse_attend_gathered({C.data(), KR.data(), T, d_c, d_r}, idx.data(), idx.size(), T,
                         {H, ql.data(), qr.data(), 0.1f, ref.data()});
  CHECK(compare(fast, ref).finite);
  CHECK(compare(fast, ref).max_abs <= 1e-5);
  std::vector<std::int32_t> dup = idx;
  dup.push_back(idx[0]);
  CHECK_THROWS_WITH(sparse_decode_gathered(cache, dup.data(), dup.size(), T, a, scratch),
                    Catch::Contains("listed twice"));
}

TEST_CASE("Fast top-k and the fast index scores = the reference ones", "[ch09]") {
  Rng rng(41);
  const std::size_t T = 500;
  std::vector<float> s = test::random_vector(rng, T);
  std::vector<std::int32_t> a(64), b(64);
  select_topk(s.data(), T, 64, a.data());
  select_topk_fast(s.data(), T, 64, b.data());
  CHECK(a == b);
  select_topk_fast(s.data(), 10, 64, b.data());
  select_topk(s.data(), 10, 64, a.data());
  CHECK(a == b);
  // Ties (a few distinct values, +0 and -0 among them) go to the earlier position; negative
  // scores. A NaN has no order ('>' is false both ways): a row holding one still gets k
  // distinct positions (which ones is not specified, here or in select_topk).
  std::vector<float> tied(T);
  for (std::size_t t = 0; t < T; ++t)
    tied[t] = t % 5 == 0 ? -0.0f : t % 5 == 1 ? 0.0f : float(int(t % 7) - 3);
  select_topk(tied.data(), T, 64, a.data());
  select_topk_fast(tied.data(), T, 64, b.data());
  CHECK(a == b);
  tied[17] = std::numeric_limits<float>::quiet_NaN();
  select_topk_fast(tied.data(), T, 64, b.data());
  std::vector<std::int32_t> sorted = b;
  std::sort(sorted.begin(), sorted.end());
  CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
  CHECK(sorted.front() >= 0);
  CHECK(sorted.back() < std::int32_t(T));
  // T = 500 is no multiple of a block of keys (a tail); 6 heads no multiple of 4 (a head tail);
  // T = 5000 is enough blocks for two threads.
  for (const std::size_t HI : {4, 6}) {
    for (const std::size_t n : {std::size_t{500}, std::size_t{5000}}) {
      const std::size_t DI = 16;
      const Mat K = rng.normal(n, DI), Q = rng.normal(HI, DI);
      std::vector<float> coef(HI);
      for (float& c : coef) c = rng.normal();
      std::vector<float> got(n);
      indexer_scores_fast(K.data(), n, DI, Q.data(), HI, coef.data(), got.data(), 2);
      for (std::size_t t = 0; t < n; ++t) {
        double want = 0;
        for (std::size_t h = 0; h < HI; ++h) {
          double dot = 0;
          for (std::size_t i = 0; i < DI; ++i) dot += K(t, i) * Q(h, i);
          want += coef[h] * std::max(dot, 0.0);
        }
        INFO("HI " << HI << ", T " << n << ", key " << t);
        REQUIRE(got[t] == Approx(want).margin(1e-4).epsilon(1e-4));
      }
    }
  }
}

TEST_CASE("DSA layer: the fast exact indexer = the reference loops, scores and selections",
          "[ch09]") {
  // 70 prefill tokens: more than two blocks of keys with AVX-512, so the vector path runs.
  const DsaConfig cfg = small_config(9);
  Rng rng(8);
  auto w = std::make_shared<const DsaWeights>(random_dsa_weights(cfg, rng));
  const Tensor3 pre = test::random_tensor3(rng, 2, 70, 64),
                dec = test::random_tensor3(rng, 2, 3, 64);
  DsaOptions fast, ref;
  ref.indexer.reference = true;
  fast.indexer.threads = 2;
  DsaLayer a(cfg, w, 2, fast), b(cfg, w, 2, ref);
  std::size_t same_rows = 0, rows = 0;
  const auto check_call = [&] {
    for (std::size_t q = 0; q < 2; ++q) {
      const std::vector<float>&sa = a.scores()[q], &sb = b.scores()[q];
      REQUIRE(sa.size() == sb.size());
      float big = 0.0f;
      for (float v : sb) big = std::max(big, std::abs(v));
      for (std::size_t i = 0; i < sa.size(); ++i)
        REQUIRE(sa[i] == Approx(sb[i]).margin(1e-5 * big));
      for (std::size_t s = 0; s < a.selection().S; ++s) {
        std::vector<std::int32_t> ia(a.selection().row(q, s), a.selection().row(q, s) + 9),
            ib(b.selection().row(q, s), b.selection().row(q, s) + 9);
        std::sort(ia.begin(), ia.end());
        std::sort(ib.begin(), ib.end());
        same_rows += ia == ib;
        ++rows;
      }
    }
  };
  const Tensor3 pa = a.forward(pre), pb = b.forward(pre);
  check_call();
  CHECK(compare(pa, pb).max_abs <= 1e-5);
  for (std::size_t s = 0; s < 3; ++s) {
    const Tensor3 x = xt::view(dec, xt::all(), xt::range(s, s + 1), xt::all());
    const Tensor3 da = a.forward(x), db = b.forward(x);
    check_call();
    CHECK(compare(da, db).max_abs <= 1e-5);
  }
  // Random scores have no near-ties at this size: every selection is the same set.
  CHECK(same_rows == rows);
}

TEST_CASE("A sparse decode step is much faster than chapter 7's dense step at long context",
          "[ch09][speed]") {
#ifdef MLA_SANITIZE
  return;  // instrumentation distorts the ratio; the release build asserts it
#endif
  // H 128, d_c 512 + 64, indexer 64 x 128, T = 16,384, top-k 1,024: FLOPs say 8x. One thread
  // on both sides (a second may not get a core on a shared machine); timed alternately.
  const std::size_t H = 128, d_c = 512, d_r = 64, HI = 64, DI = 128, T = 16384, K = 1024;
  Rng rng(5);
  ch07::LatentCache cache(d_c, d_r), scratch(d_c, d_r);
  {
    const Mat c = rng.normal(T, d_c), r = rng.normal(T, d_r);
    cache.append(c.data(), r.data(), T);
  }
  const Mat keys = rng.normal(T, DI), q_index = rng.normal(HI, DI);
  const std::vector<float> coef(HI, 0.01f);
  std::vector<float> q_lat = test::random_vector(rng, H * d_c),
                     q_rope = test::random_vector(rng, H * d_r), out(H * d_c), scores(T);
  std::vector<std::int32_t> idx(K);
  const ch07::DecodeArgs a =
      ch07::make_decode_args(1, H, d_c, d_r, q_lat.data(), q_rope.data(), 0.07f, out.data(), 1);
  const ch07::SeqRef seq{&cache, T};
  const double ratio = speedup([&] { ch07::mla_decode_best(&seq, a); },
                               [&] {
                                 indexer_scores_fast(keys.data(), T, DI, q_index.data(), HI,
                                                     coef.data(), scores.data(), 1);
                                 select_topk_fast(scores.data(), T, K, idx.data());
                                 sparse_decode_gathered(cache, idx.data(), K, T, a, scratch);
                               },
                               3);
  INFO("sparse step is " << ratio << "x faster than dense (FLOPs: 8x)");
  // 8.2x measured on a quiet AVX-512 machine: half of it leaves room for a busy one.
  CHECK(ratio >= 4.0);
}
