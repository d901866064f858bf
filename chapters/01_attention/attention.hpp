/// @file attention.hpp
/// @brief Chapter 1: single-head scaled dot-product attention with a causal mask, and the toy
///        sentence whose attention pattern the chapter draws.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "mla/random.hpp"
#include "mla/rows.hpp"
#include "mla/tensor.hpp"

namespace mla::ch01 {

/// @defgroup ch01 Chapter 1 — Attention
/// @brief Scaled dot-product attention with a causal mask, shown on a nine-word sentence.
/// @{

/// Whether a query may look at keys after its own position.
enum class Masking {
  causal,  ///< query i sees keys 0..i only (what a decoder that generates text needs)
  none,    ///< every query sees every key (an encoder; shown for comparison)
};

/// The attention weights \f$P = \mathrm{softmax}(q k^\top / \sqrt{d_k} + M)\f$.
///
/// With Masking::causal the n queries are the *last* n positions of the m keys (query i sits at
/// position m − n + i), so that n = m is ordinary self-attention and n < m is "new tokens against
/// everything so far" (chapter 2's cached decoding). Masked entries are `-inf` before the softmax,
/// so they get weight exactly 0, and every row sums to 1.
/// @param q (n, d_k) queries
/// @param k (m, d_k) keys, n <= m when causal
/// @return  (n, m) weights, row i a probability distribution over the keys query i may see
Mat attention_weights(const Mat& q, const Mat& k, Masking masking = Masking::causal);

/// Scaled dot-product attention: \f$\mathrm{softmax}(q k^\top / \sqrt{d_k} + M)\, v\f$.
/// @param q (n, d_k)
/// @param k (m, d_k)
/// @param v (m, d_v)
/// @return  (n, d_v): row i is the weighted mean of the value rows query i attends to
Mat attention(const Mat& q, const Mat& k, const Mat& v, Masking masking = Masking::causal);

/// One query against m keys it may all see (the decode step: the cache holds only the past).
/// Reads keys and values as row views, so a caller can point it at one head's columns of a
/// bigger cache without copying (`cache.cols_range(g·d_h, d_h)`).
/// @param q        (d_k) the query
/// @param keys     (m, d_k) keys, any row stride
/// @param values   (m, d_v) values, any row stride (std::invalid_argument if not m rows)
/// @param scratch  (m) room for the scores
/// @param out      (d_v) \f$\mathrm{softmax}(k\,q/\sqrt{d_k})^\top v\f$
/// @param scale    the factor on the scores; 0 means \f$1/\sqrt{d_k}\f$
void attend_one(const float* q, RowView<const float> keys, RowView<const float> values,
                float* scratch, float* out, float scale = 0.0f);

// ---------------------------------------------------------------------------------------------
// The toy sentence
// ---------------------------------------------------------------------------------------------

/// The chapter's sentence, "The American flag is red, white, and".
inline constexpr const char* kSentence = "The American flag is red, white, and";

/// Words and punctuation of a sentence as tokens: "red, white" -> {"red", ",", "white"}.
/// The chapter's sentence gives 9 tokens.
std::vector<std::string> tokenize(const std::string& sentence);

/// Names of the toy embedding's features, one per column (see toy_embeddings).
const std::vector<std::string>& toy_feature_names();

/// Hand-made embeddings of the tokens, one row per token: (T, toy_feature_names().size()).
///
/// Each known word is a 0/1 vector of interpretable features (article, nationality, noun, verb,
/// colour, comma, conjunction); a word the table does not know gets a deterministic random
/// vector (N(0, 0.5²), seeded by a hash of the word), so any sentence works.
Mat toy_embeddings(const std::vector<std::string>& tokens);

/// Projections of the toy example, each (d, d) with d = toy_feature_names().size().
struct ToyProjections {
  Mat W_q;  ///< (d, d): what each token looks for
  Mat W_k;  ///< (d, d): what each token offers to be found by
  Mat W_v;  ///< (d, d): what each token hands over when attended to
};

/// The hand-made projections of the chapter: keys and values are the features themselves; a
/// query asks for the features a word of that kind looks for (a noun asks for its article and
/// adjectives, a verb and a colour ask for the noun, a comma and "and" ask for colours).
ToyProjections toy_projections();

/// Random projections (Rng::linear_weight, N(0, 1/d)) for comparison with the hand-made ones.
ToyProjections random_projections(std::size_t d, Rng& rng);

/// @}

}  // namespace mla::ch01
