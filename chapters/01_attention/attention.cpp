#include "01_attention/attention.hpp"

#include <cblas.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <map>
#include <stdexcept>

#include "mla/exercise.hpp"

namespace mla::ch01 {

Mat attention_weights(const Mat& q, const Mat& k, Masking masking) {
  const std::size_t n = q.shape(0), m = k.shape(0), d_k = q.shape(1);
  if (k.shape(1) != d_k) {
    throw std::invalid_argument("attention: queries have " + std::to_string(d_k) +
                                " features, keys " + std::to_string(k.shape(1)));
  }
  if (masking == Masking::causal && n > m) {
    throw std::invalid_argument("attention: a causal mask needs at least as many keys (" +
                                std::to_string(m) + ") as queries (" + std::to_string(n) + ")");
  }
#if MLA_EXERCISES
  MLA_EXERCISE("1.1", "attention_weights()", "see chapters/01_attention/README.md, exercise 1.1");
#else
  // scores (n, m) = q · kᵀ: one BLAS call (mla::linear computes x · Wᵀ, and k is laid out as W).
  Mat scores = linear(q, k);
  // Why 1/sqrt(d_k): a dot product of d_k unit-variance terms has variance d_k; without the scale
  // the softmax of long vectors saturates to one-hot and its gradient vanishes.
  scores *= 1.0f / std::sqrt(static_cast<float>(d_k));
  if (masking == Masking::causal) {
    apply_causal_mask(scores, m - n);  // query i sits at position m-n+i: later keys become -inf
  }
  softmax_rows(scores);  // -inf -> weight 0; each row now sums to 1
  return scores;
#endif
}

Mat attention(const Mat& q, const Mat& k, const Mat& v, Masking masking) {
  if (v.shape(0) != k.shape(0)) {
    throw std::invalid_argument("attention: " + std::to_string(k.shape(0)) + " keys but " +
                                std::to_string(v.shape(0)) + " values");
  }
#if MLA_EXERCISES
  (void)q, (void)masking;
  MLA_EXERCISE("1.2", "attention()", "see chapters/01_attention/README.md, exercise 1.2");
#else
  // (n, m) · (m, d_v) -> (n, d_v)
  const Mat P = attention_weights(q, k, masking);
  if (masking == Masking::none) return matmul(P, v);
  // Causal: a masked key has weight exactly 0, but 0 · NaN is NaN, so multiplying by the whole of
  // v would let a NaN in token j reach every earlier token's output. Sum only the keys each query
  // may see (one gemv per query over its visible prefix): a NaN stays where the math puts it.
  const std::size_t n = P.shape(0), m = P.shape(1), d_v = v.shape(1);
  Mat out = xt::zeros<float>({n, d_v});
  if (d_v == 0) return out;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t visible = m - n + i + 1;  // queries are the last n of the m positions
    // out(i, :) = v[0:visible]ᵀ · P(i, 0:visible)
    cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<int>(visible), static_cast<int>(d_v), 1.0f,
                v.data(), static_cast<int>(d_v), &P(i, 0), 1, 0.0f, &out(i, 0), 1);
  }
  return out;
#endif
}

void attend_one(const float* q, RowView<const float> keys, RowView<const float> values,
                float* scratch, float* out, float scale) {
  const std::size_t m = keys.rows(), d_k = keys.cols(), d_v = values.cols();
  if (values.rows() != m) {
    throw std::invalid_argument("attend_one: " + std::to_string(m) + " keys but " +
                                std::to_string(values.rows()) + " values");
  }
  if (m == 0) {  // nothing to attend to: the zero vector, as softmax_rows gives a masked row
    for (std::size_t j = 0; j < d_v; ++j) out[j] = 0.0f;
    return;
  }
  if (scale == 0.0f) scale = 1.0f / std::sqrt(static_cast<float>(d_k));
#if MLA_EXERCISES
  (void)q, (void)scratch;
  MLA_EXERCISE("1.3", "attend_one()", "see chapters/01_attention/README.md, exercise 1.3");
#else
  const auto M = static_cast<int>(m), DK = static_cast<int>(d_k), DV = static_cast<int>(d_v);
  // scratch (m) = scale · K q: one matrix-vector product over the strided rows of K.
  cblas_sgemv(CblasRowMajor, CblasNoTrans, M, DK, scale, keys.data(),
              static_cast<int>(keys.stride()), q, 1, 0.0f, scratch, 1);
  softmax(scratch, m);
  // out (d_v) = Vᵀ p: the weighted sum of the value rows.
  cblas_sgemv(CblasRowMajor, CblasTrans, M, DV, 1.0f, values.data(),
              static_cast<int>(values.stride()), scratch, 1, 0.0f, out, 1);
#endif
}

// ---------------------------------------------------------------------------------------------
// The toy sentence
// ---------------------------------------------------------------------------------------------

namespace {

enum Feature : std::size_t { kArticle, kNationality, kNoun, kVerb, kColour, kComma, kConj, kD };

// How strongly a query matches the key it looks for, as the *scaled* score q·k/sqrt(d):
// e^3 ≈ 20 times the weight of a token that does not match.
constexpr float kMatchScore = 3.0f;

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

std::vector<std::string> tokenize(const std::string& sentence) {
  std::vector<std::string> out;
  std::string word;
  auto flush = [&] {
    if (!word.empty()) out.push_back(word);
    word.clear();
  };
  for (char c : sentence) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      flush();
    } else if (std::ispunct(static_cast<unsigned char>(c)) && c != '\'' && c != '-') {
      flush();
      out.emplace_back(1, c);  // punctuation is a token of its own, as in real tokenizers
    } else {
      word += c;
    }
  }
  flush();
  return out;
}

const std::vector<std::string>& toy_feature_names() {
  static const std::vector<std::string> names = {"article", "nationality", "noun",       "verb",
                                                 "colour",  "comma",       "conjunction"};
  return names;
}

Mat toy_embeddings(const std::vector<std::string>& tokens) {
  static const std::map<std::string, std::vector<Feature>> table = {
      {"the", {kArticle}}, {"a", {kArticle}},  {"american", {kNationality}}, {"flag", {kNoun}},
      {"is", {kVerb}},     {"red", {kColour}}, {"white", {kColour}},         {"blue", {kColour}},
      {",", {kComma}},     {"and", {kConj}},
  };
  Mat x = xt::zeros<float>({tokens.size(), std::size_t{kD}});
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    auto it = table.find(lower(tokens[t]));
    if (it != table.end()) {
      for (Feature f : it->second) x(t, f) = 1.0f;
    } else {
      Rng rng(fnv1a(lower(tokens[t])));  // same word, same vector, on every run
      for (std::size_t f = 0; f < kD; ++f) x(t, f) = rng.normal(0.5f);
    }
  }
  return x;
}

ToyProjections toy_projections() {
  // A query entry W_q(sought, own) = s means "a token with feature `own` looks for `sought`".
  // With keys = features, q·k/sqrt(d) = kMatchScore exactly when the key has the sought feature.
  const float s = kMatchScore * std::sqrt(static_cast<float>(kD));
  ToyProjections p;
  p.W_q = xt::zeros<float>({std::size_t{kD}, std::size_t{kD}});
  p.W_q(kArticle, kNoun) = s;         // "flag" looks for its article ...
  p.W_q(kNationality, kNoun) = s;     // ... and its adjective
  p.W_q(kArticle, kNationality) = s;  // "American" looks for the article it follows
  p.W_q(kNoun, kVerb) = s;            // "is" looks for its subject
  p.W_q(kNoun, kColour) = s;          // a colour looks for the noun it describes
  p.W_q(kColour, kComma) = s;         // a comma looks for the list item before it
  p.W_q(kColour, kConj) = s;          // "and" looks for the list it continues
  p.W_k = xt::eye<float>(kD);         // keys: the features themselves
  p.W_v = xt::eye<float>(kD);         // values: hand over the features, so outputs stay readable
  return p;
}

ToyProjections random_projections(std::size_t d, Rng& rng) {
  ToyProjections p;
  p.W_q = rng.linear_weight(d, d);
  p.W_k = rng.linear_weight(d, d);
  p.W_v = rng.linear_weight(d, d);
  return p;
}

}  // namespace mla::ch01
