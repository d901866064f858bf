// From MHA to MLA without training: chapter 4's conversion (mha_to_mla.hpp) on random
// projections, and chapter 8's converted model (mla_from_mha.hpp) on the trained MHA model in
// data/models/mha: exact at full rank, worse as the rank falls, non-MHA input refused.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "04_low_rank_latents/mha_to_mla.hpp"
#include "07_optimized_mla/fast_latent_attention.hpp"
#include "08_serving/mla_from_mha.hpp"
#include "mla/errors.hpp"
#include "mla/json.hpp"
#include "mla/random.hpp"

using namespace mla;

namespace {

namespace fs = std::filesystem;

fs::path models_dir() {
  return fs::path(MLA_TEST_DATA_DIR) / "models";
}

ch04::MhaProjections random_mha(std::size_t H, std::size_t d, std::size_t D, std::uint64_t seed) {
  Rng rng(seed);
  return {rng.linear_weight(H * d, D), rng.linear_weight(H * d, D), rng.linear_weight(H * d, D), H,
          d};
}

/// The MHA layer's score of head h, query at position s, key at t (rotate_half RoPE, θ = 10000).
double mha_score(const ch04::MhaProjections& p, const Vec& xs, const Vec& xt_, std::size_t h,
                 std::size_t s, std::size_t t) {
  const std::size_t d = p.head_dim, half = d / 2;
  const Vec q = linear(xs, p.W_q), k = linear(xt_, p.W_k);
  double sum = 0;
  for (std::size_t i = 0; i < half; ++i) {
    const double f = std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(d));
    const double a = f * (static_cast<double>(t) - static_cast<double>(s));  // R_{t−s}
    const double qx = q(h * d + i), qy = q(h * d + i + half);
    const double kx = k(h * d + i), ky = k(h * d + i + half);
    sum += qx * (std::cos(a) * kx - std::sin(a) * ky) + qy * (std::sin(a) * kx + std::cos(a) * ky);
  }
  return sum;
}

/// The converted layer's score of the same pair (no-RoPE part through the latent, rope part
/// through the shared key).
double mla_score(const ch04::MlaFromMha& w, const Vec& xs, const Vec& xt_, std::size_t h,
                 std::size_t s, std::size_t t) {
  const std::size_t d = w.head_dim, dr = w.rope_dim(), U = w.units();
  const Vec q = linear(xs, w.W_q), qr = linear(xs, w.W_qr), kr = linear(xt_, w.W_kr);
  const Vec c = linear(xt_, w.W_dkv), k = linear(c, w.W_uk);
  double sum = 0;
  for (std::size_t i = 0; i < d; ++i) sum += q(h * d + i) * k(h * d + i);
  for (std::size_t u = 0; u < U; ++u) {
    const double f =
        std::pow(10000.0, -2.0 * static_cast<double>(w.rope_pair[u]) / static_cast<double>(d));
    const double a = f * (static_cast<double>(t) - static_cast<double>(s));
    const double qx = qr(h * dr + u), qy = qr(h * dr + u + U), kx = kr(u), ky = kr(u + U);
    sum += qx * (std::cos(a) * kx - std::sin(a) * ky) + qy * (std::sin(a) * kx + std::cos(a) * ky);
  }
  return sum;
}

std::vector<int> excerpt(std::size_t bytes) {
  std::ifstream in(models_dir() / "val_excerpt.txt", std::ios::binary);
  const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(s.size() >= bytes);
  return ch08::encode_bytes(s.substr(0, bytes));
}

}  // namespace

TEST_CASE("mha_to_mla: every rotation kept and full rank give the MHA scores and values",
          "[ch04]") {
  const std::size_t H = 4, d = 8, D = 24;
  const auto p = random_mha(H, d, D, 11);
  Rng rng(12);
  const Vec xs = rng.normal_vec(D, 1.0f), xt_ = rng.normal_vec(D, 1.0f);
  const ch04::MlaFromMha w = ch04::mha_to_mla(p, {D, d / 2, H});
  REQUIRE(w.rope_dim() == 2 * H * d / 2);
  REQUIRE(w.cache_floats() == D + H * d);
  for (std::size_t h = 0; h < H; ++h) {
    for (auto [s, t] : {std::pair<std::size_t, std::size_t>{5, 2}, {40, 3}, {7, 7}}) {
      const double want = mha_score(p, xs, xt_, h, s, t);
      CHECK(mla_score(w, xs, xt_, h, s, t) == Approx(want).margin(1e-4).epsilon(1e-4));
    }
  }
  // Values: W^UV·W^DKV·x = W_V·x.
  const Vec v = linear(linear(xt_, w.W_dkv), w.W_uv), want = linear(xt_, p.W_v);
  for (std::size_t i = 0; i < v.size(); ++i) CHECK(v(i) == Approx(want(i)).margin(1e-4));
  CHECK(w.energy_kept() == Approx(1.0));
}

TEST_CASE("mha_to_mla: the values' error falls as the rank grows (Eckart–Young)", "[ch04]") {
  const auto p = random_mha(4, 8, 48, 21);
  double last = 1e30;
  for (std::size_t r : {4, 8, 16, 32, 48}) {
    const ch04::MlaFromMha w = ch04::mha_to_mla(p, {r, 2, 1});
    // [W_K^nope; W_V] ≈ [W^UK; W^UV]·W^DKV: the values' part.
    const double err = ch04::relative_frobenius_error(matmul(w.W_uv, w.W_dkv), p.W_v);
    INFO("rank " << r << " error " << err);
    CHECK(err <= last + 1e-6);
    last = err;
  }
  CHECK(last < 1e-4);  // full rank: exact
}

TEST_CASE("mha_to_mla: refuses rank 0, rank above full, and impossible rope choices", "[ch04]") {
  const auto p = random_mha(4, 8, 24, 31);
  CHECK_THROWS_AS(ch04::mha_to_mla(p, {0, 2, 1}), InputError);
  CHECK_THROWS_WITH(ch04::mha_to_mla(p, {25, 2, 1}), Catch::Contains("rank 25 is not in 1..24"));
  CHECK_THROWS_WITH(ch04::mha_to_mla(p, {8, 5, 1}), Catch::Contains("rope pairs 5"));
  CHECK_THROWS_WITH(ch04::mha_to_mla(p, {8, 2, 5}), Catch::Contains("rope components 5"));
  auto bad = p;
  bad.W_k = Rng(1).linear_weight(8, 24);  // GQA-shaped keys
  CHECK_THROWS_WITH(ch04::mha_to_mla(bad, {8, 2, 1}), Catch::Contains("W_k has shape"));
}

TEST_CASE("mha_to_mla: the trained MHA model converted at full rank gives its golden logits",
          "[ch08]") {
  const fs::path dir = models_dir() / "mha";
  auto base = std::make_shared<const ch08::Model>(ch08::load_model(dir.string()));
  const auto& c = base->config;
  const nlohmann::json g = load_json_file((dir / "golden.json").string());
  const std::vector<int> prompt = g.at("prompt_tokens").get<std::vector<int>>();
  const auto& want = g.at("logits");
  // The SVDs weighted by input_layernorm, then by the inputs measured on training bytes (the
  // calibration excerpt's first 1024): either way, at full rank nothing is approximated.
  std::ifstream in(models_dir() / "calib_excerpt.txt", std::ios::binary);
  const std::string calib((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(calib.size() >= 1024);
  const std::vector<Mat> moments = ch08::attention_input_moments(
      *base, ch08::encode_bytes(calib.substr(0, 1024)), c.max_position_embeddings);
  for (const bool calibrated : {false, true}) {
    INFO((calibrated ? "calibrated" : "input_layernorm"));
    // Every rotation kept (8 pairs × 8 heads) and r = d_model.
    auto m = std::make_shared<const ch08::MlaFromMhaModel>(
        ch08::convert_mha_model(base, {c.hidden_size, c.gqa.head_dim / 2, c.gqa.heads},
                                calibrated ? moments : std::vector<Mat>{}));
    ch08::Decoder d = ch08::converted_decoder(m);
    const Mat got = d.forward(prompt);
    double worst = 0;
    for (std::size_t s = 0; s < prompt.size(); ++s) {
      for (std::size_t v = 0; v < got.shape(1); ++v) {
        const double w = want[s][v].get<double>();
        worst = std::max(worst, std::abs(got(s, v) - w) / (1e-4 + 1e-4 * std::abs(w)));
      }
    }
    INFO("largest |error| / (1e-4 + 1e-4·|logit|) = " << worst);
    CHECK(worst <= 1.0);
  }
}

TEST_CASE("mha_to_mla: the converted model's loss rises as the rank falls", "[ch08]") {
  auto base =
      std::make_shared<const ch08::Model>(ch08::load_model((models_dir() / "mha").string()));
  const std::vector<int> text = excerpt(2 * 256 + 1);  // two windows of the validation bytes
  const double mha = ch08::bits_per_byte([&] { return ch08::Decoder(base, "gqa"); }, text, 256, 2);
  double last = 0;
  for (std::size_t r : {128, 64, 32, 16}) {
    auto m =
        std::make_shared<const ch08::MlaFromMhaModel>(ch08::convert_mha_model(base, {r, 8, 8}));
    const double bpb =
        ch08::bits_per_byte([&] { return ch08::converted_decoder(m); }, text, 256, 2);
    INFO("rank " << r << ": " << bpb << " bits/byte (MHA " << mha << ")");
    if (r == 128) CHECK(bpb == Approx(mha).margin(1e-4));
    CHECK(bpb >= last - 1e-3);
    last = bpb;
  }
  CHECK(last > mha + 0.01);  // rank 16 of 128 costs, visibly
}

TEST_CASE("mha_to_mla: the converted model on chapter 7's core gives the reference core's logits",
          "[ch08]") {
  auto base =
      std::make_shared<const ch08::Model>(ch08::load_model((models_dir() / "mha").string()));
  const std::vector<int> prompt = excerpt(48);
  // RoPE on 4 directions of 5 pairs (a 40-float rope key read by every head), and no RoPE at all
  // (d_r = 0): the fp32 tiled cache and its kernel against the plain loops, prefill then decode.
  for (const ch04::MhaToMlaOptions& o :
       {ch04::MhaToMlaOptions{64, 5, 4}, ch04::MhaToMlaOptions{32, 0, 1}}) {
    INFO("r = " << o.rank << ", rope " << o.rope_pairs << ":" << o.rope_components);
    auto m = std::make_shared<const ch08::MlaFromMhaModel>(ch08::convert_mha_model(base, o));
    ch08::Decoder ref = ch08::converted_decoder(m);
    ch08::Decoder fast = ch08::converted_decoder(m, ch07::fast_latent_attention_factory(1));
    const std::pair<std::size_t, std::size_t> chunks[] = {{0, 40}, {40, 41}};  // [from, to)
    for (const auto& [from, to] : chunks) {
      const std::vector<int> chunk(prompt.begin() + from, prompt.begin() + to);
      const Mat want = ref.forward(chunk), got = fast.forward(chunk);
      REQUIRE(got.shape() == want.shape());
      double worst = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        const double w = want.data()[i];
        worst = std::max(worst, std::abs(got.data()[i] - w) / (1e-4 + 1e-4 * std::abs(w)));
      }
      INFO("tokens " << from << ".." << to
                     << ": largest |error| / (1e-4 + 1e-4·|logit|) = " << worst);
      CHECK(worst <= 1.0);
    }
  }
}

TEST_CASE("mha_to_mla: a model that is not MHA is refused, naming its attention", "[ch08]") {
  for (const char* name : {"gqa", "mla"}) {
    auto base =
        std::make_shared<const ch08::Model>(ch08::load_model((models_dir() / name).string()));
    CHECK_THROWS_WITH(ch08::convert_mha_model(base, {16, 2, 1}),
                      Catch::Contains("the conversion starts from MHA"));
  }
}
