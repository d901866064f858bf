// Chapter 1: scaled dot-product attention against a triple loop, causality, stable softmax.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "01_attention/attention.hpp"
#include "mla/compare.hpp"
#include "mla/random.hpp"
#include "mla/rows.hpp"
#include "support.hpp"

using namespace mla;
using namespace mla::ch01;
using mla::test::reference_attention;

TEST_CASE("attention equals a straightforward triple loop", "[ch01]") {
  Rng rng(11);
  SECTION("causal self-attention (n = m)") {
    const Mat q = rng.normal(13, 16), k = rng.normal(13, 16), v = rng.normal(13, 8);
    const Mat ref = reference_attention(q, k, v, true);
    const Mat out = attention(q, k, v, Masking::causal);
    INFO(compare(out, ref).describe());
    CHECK(allclose(out, ref, 1e-5, 1e-4));
  }
  SECTION("causal, new queries against a longer past (n < m)") {
    const Mat q = rng.normal(3, 16), k = rng.normal(20, 16), v = rng.normal(20, 5);
    const Mat out = attention(q, k, v, Masking::causal);
    CHECK(allclose(out, reference_attention(q, k, v, true), 1e-5, 1e-4));
  }
  SECTION("no mask") {
    const Mat q = rng.normal(7, 4), k = rng.normal(9, 4), v = rng.normal(9, 6);
    const Mat out = attention(q, k, v, Masking::none);
    CHECK(allclose(out, reference_attention(q, k, v, false), 1e-5, 1e-4));
  }
  SECTION("more queries than keys cannot be causal") {
    CHECK_THROWS_AS(attention(rng.normal(5, 4), rng.normal(3, 4), rng.normal(3, 4)),
                    std::invalid_argument);
  }
}

TEST_CASE("attend_one, on strided memory, equals the last row of attention", "[ch01]") {
  Rng rng(12);
  const std::size_t m = 17, d = 8, stride = 3 * d;
  // K and V live in columns d..2d of wider (m, 3d) buffers, as one head of a cache would.
  const Mat wide_k = rng.normal(m, stride), wide_v = rng.normal(m, stride);
  Mat k = xt::empty<float>({m, d}), v = xt::empty<float>({m, d});
  for (std::size_t r = 0; r < m; ++r) {
    for (std::size_t c = 0; c < d; ++c) {
      k(r, c) = wide_k(r, d + c);
      v(r, c) = wide_v(r, d + c);
    }
  }
  const Mat q = rng.normal(1, d);
  std::vector<float> scratch(m), out(d);
  attend_one(q.data(), RowView(wide_k).cols_range(d, d), RowView(wide_v).cols_range(d, d),
             scratch.data(), out.data());
  const Mat ref = reference_attention(q, k, v, true);
  CHECK(allclose(out.data(), ref.data(), d, 1e-5, 1e-4));
  // Keys and values must be the same number of rows.
  CHECK_THROWS_AS(
      attend_one(q.data(), RowView(wide_k).cols_range(d, d),
                 RowView(wide_v).cols_range(d, d).rows_range(0, m - 1), scratch.data(), out.data()),
      std::invalid_argument);
}

TEST_CASE("every row of the weights sums to 1 and masked weights are exactly 0", "[ch01]") {
  const auto tokens = tokenize(kSentence);
  REQUIRE(tokens.size() == 9);
  CHECK(tokens[4] == "red");
  CHECK(tokens[5] == ",");
  const Mat x = toy_embeddings(tokens);
  const ToyProjections w = toy_projections();
  const Mat P = attention_weights(linear(x, w.W_q), linear(x, w.W_k));
  for (std::size_t i = 0; i < 9; ++i) {
    double sum = 0;
    for (std::size_t j = 0; j < 9; ++j) {
      sum += P(i, j);
      if (j > i) CHECK(P(i, j) == 0.0f);
    }
    CHECK(sum == Approx(1.0).margin(1e-6));
  }
  // The story the chapter tells: "and" looks at the colours of the list it continues.
  const std::size_t top =
      static_cast<std::size_t>(std::max_element(&P(8, 0), &P(8, 0) + 9) - &P(8, 0));
  CHECK((tokens[top] == "red" || tokens[top] == "white"));
}

TEST_CASE("causality: the output at t does not change when later tokens change", "[ch01]") {
  const auto a = tokenize("The American flag is red, white, and");
  const auto b = tokenize("The American flag is green and very blue .");  // same first 4 tokens
  REQUIRE(a.size() == b.size());
  const ToyProjections w = toy_projections();
  auto run = [&](const std::vector<std::string>& tokens, Masking masking) {
    const Mat x = toy_embeddings(tokens);
    return attention(linear(x, w.W_q), linear(x, w.W_k), linear(x, w.W_v), masking);
  };
  const std::size_t t = 3;  // "is": tokens 0..3 agree, 4.. differ
  const Mat oa = run(a, Masking::causal), ob = run(b, Masking::causal);
  for (std::size_t i = 0; i <= t; ++i) {
    for (std::size_t c = 0; c < oa.shape(1); ++c) CHECK(oa(i, c) == Approx(ob(i, c)).margin(1e-7));
  }
  // Without the mask the same positions do see the change: the check above is not vacuous.
  const Mat na = run(a, Masking::none), nb = run(b, Masking::none);
  double diff = 0;
  for (std::size_t c = 0; c < na.shape(1); ++c)
    diff = std::max(diff, double(std::abs(na(t, c) - nb(t, c))));
  CHECK(diff > 1e-3);

  SECTION("random inputs, every t") {
    Rng rng(13);
    const std::size_t T = 12, d = 8;
    const Mat q = rng.normal(T, d), k = rng.normal(T, d), v = rng.normal(T, d);
    const Mat base = attention(q, k, v);
    for (std::size_t tt = 0; tt + 1 < T; ++tt) {
      Mat k2 = k, v2 = v, q2 = q;
      for (std::size_t r = tt + 1; r < T; ++r) {
        for (std::size_t c = 0; c < d; ++c) {
          k2(r, c) += 5.0f;
          v2(r, c) -= 3.0f;
          q2(r, c) *= -1.0f;
        }
      }
      const Mat changed = attention(q2, k2, v2);
      for (std::size_t i = 0; i <= tt; ++i) {
        for (std::size_t c = 0; c < d; ++c)
          REQUIRE(changed(i, c) == Approx(base(i, c)).margin(1e-6));
      }
    }
  }
}

TEST_CASE("softmax stays finite with logits of +-1e4 and with masked entries", "[ch01]") {
  // q·k/sqrt(d) = +-1e4: with d = 1, q = 100 and keys +-100.
  Mat q = {{100.0f}, {-100.0f}, {100.0f}};
  Mat k = {{100.0f}, {-100.0f}, {100.0f}};
  Mat v = {{1.0f, 2.0f}, {3.0f, 4.0f}, {5.0f, 6.0f}};
  for (Masking masking : {Masking::causal, Masking::none}) {
    const Mat P = attention_weights(q, k, masking);
    const Mat out = attention(q, k, v, masking);
    for (float p : P) CHECK(std::isfinite(p));
    for (float o : out) CHECK(std::isfinite(o));
    for (std::size_t i = 0; i < 3; ++i) {
      CHECK(P(i, 0) + P(i, 1) + P(i, 2) == Approx(1.0f).margin(1e-6));
    }
  }
  // Causal: query 1 (logit -1e4·-1e4 pattern) sees keys 0 and 1 with scores -1e4 and +1e4.
  const Mat P = attention_weights(q, k, Masking::causal);
  CHECK(P(1, 1) == Approx(1.0f));
  CHECK(P(1, 2) == 0.0f);  // masked
  CHECK(P(2, 0) == Approx(0.5f));
  CHECK(P(2, 2) == Approx(0.5f));

  // The decode path: the same huge logits through attend_one.
  std::vector<float> scratch(3), out(2);
  const float qq = -100.0f;
  attend_one(&qq, RowView(k), RowView(v), scratch.data(), out.data());
  CHECK(std::isfinite(out[0]));
  CHECK(out[0] == Approx(3.0f));  // all weight on key 1 (score +1e4)
  CHECK(out[1] == Approx(4.0f));
}
