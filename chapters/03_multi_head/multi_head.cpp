#include "03_multi_head/multi_head.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "01_attention/attention.hpp"
#include "mla/exercise.hpp"
#include "mla/rows.hpp"

namespace mla::ch03 {

namespace {

void check_shape(const MhaWeights& w) {
  if (w.n_heads == 0 || w.n_kv_heads == 0 || w.head_dim == 0) {
    throw std::invalid_argument("MhaWeights: n_heads, n_kv_heads and head_dim must be positive");
  }
  if (w.n_heads % w.n_kv_heads != 0) {
    throw std::invalid_argument("MhaWeights: n_heads (" + std::to_string(w.n_heads) +
                                ") is not a multiple of n_kv_heads (" +
                                std::to_string(w.n_kv_heads) + ")");
  }
  const std::size_t d = w.W_q.shape(1);
  if (w.W_q.shape(0) != w.n_heads * w.head_dim || w.W_k.shape(0) != w.n_kv_heads * w.head_dim ||
      w.W_v.shape(0) != w.n_kv_heads * w.head_dim || w.W_k.shape(1) != d || w.W_v.shape(1) != d ||
      w.W_o.shape(0) != d || w.W_o.shape(1) != w.n_heads * w.head_dim) {
    throw std::invalid_argument("MhaWeights: projection shapes do not match the head counts");
  }
}

}  // namespace

MhaWeights random_mha(std::size_t d_model, std::size_t n_heads, std::size_t n_kv_heads,
                      std::size_t head_dim, Rng& rng) {
  if (d_model == 0) throw std::invalid_argument("random_mha: d_model must be positive");
  MhaWeights w;
  w.n_heads = n_heads;
  w.n_kv_heads = n_kv_heads;
  w.head_dim = head_dim;
  if (n_heads == 0 || n_kv_heads == 0 || head_dim == 0 || n_heads % n_kv_heads != 0) {
    check_shape(w);  // throws with the reason
  }
  w.W_q = rng.linear_weight(n_heads * head_dim, d_model);
  w.W_k = rng.linear_weight(n_kv_heads * head_dim, d_model);
  w.W_v = rng.linear_weight(n_kv_heads * head_dim, d_model);
  w.W_o = rng.linear_weight(d_model, n_heads * head_dim);
  return w;
}

Mat mha_forward(const Mat& x, const MhaWeights& w) {
  check_shape(w);
#if MLA_EXERCISES
  (void)x;
  MLA_EXERCISE("3.1", "mha_forward()", "see chapters/03_multi_head/README.md, exercise 3.1");
#else
  const std::size_t T = x.shape(0), dh = w.head_dim, group = w.group_size();
  // x (T, d_model) -> q (T, n_h·d_h), k and v (T, n_kv·d_h): head h owns columns h·d_h .. +d_h.
  const Mat q = linear(x, w.W_q), k = linear(x, w.W_k), v = linear(x, w.W_v);
  Mat heads = xt::empty<float>({T, w.n_heads * dh});  // concat of the head outputs
  for (std::size_t g = 0; g < w.n_kv_heads; ++g) {
    // One key/value head serves `group` query heads: n_h/n_g fewer keys and values to cache.
    const Mat k_g = columns(k, g * dh, dh), v_g = columns(v, g * dh, dh);  // (T, d_h)
    for (std::size_t h = g * group; h < (g + 1) * group; ++h) {
      // Each head is chapter 1's attention, on its own d_h-wide slice: (T, d_h) -> (T, d_h).
      const Mat o = ch01::attention(columns(q, h * dh, dh), k_g, v_g, ch01::Masking::causal);
      for (std::size_t t = 0; t < T; ++t) std::copy_n(&o(t, 0), dh, &heads(t, h * dh));
    }
  }
  return linear(heads, w.W_o);  // (T, n_h·d_h) -> (T, d_model)
#endif
}

std::vector<Mat> attention_weights_per_head(const Mat& x, const MhaWeights& w) {
  check_shape(w);
  if (x.shape(1) != w.d_model()) {
    throw std::invalid_argument("attention_weights_per_head: x has " + std::to_string(x.shape(1)) +
                                " columns, the layer's d_model is " + std::to_string(w.d_model()));
  }
  // x (T, d_model) -> q (T, n_h·d_h), k (T, n_kv·d_h) -> per head (T, d_h) slices -> P_h (T, T)
  const std::size_t dh = w.head_dim;
  const Mat q = linear(x, w.W_q), k = linear(x, w.W_k);
  std::vector<Mat> P;
  P.reserve(w.n_heads);
  for (std::size_t h = 0; h < w.n_heads; ++h) {
    const std::size_t g = h / w.group_size();  // the key head query head h reads, as mha_forward
    P.push_back(ch01::attention_weights(columns(q, h * dh, dh), columns(k, g * dh, dh),
                                        ch01::Masking::causal));
  }
  return P;
}

MhaDecoder::MhaDecoder(const MhaWeights& w) : w_(w), cache_(1, w.n_kv_heads * w.head_dim) {
  check_shape(w_);
}

Mat MhaDecoder::step(const Mat& x_new) {
  if (x_new.shape(1) != w_.d_model()) {
    throw std::invalid_argument("MhaDecoder::step: expected (n, " + std::to_string(w_.d_model()) +
                                ") inputs");
  }
#if MLA_EXERCISES
  MLA_EXERCISE("3.2", "MhaDecoder::step()", "see chapters/03_multi_head/README.md, exercise 3.2");
#else
  const std::size_t n = x_new.shape(0), dh = w_.head_dim, group = w_.group_size();
  const std::size_t past = cache_.tokens();
  // Only the new tokens are projected; their keys and values join the cache, (n, n_kv·d_h) each.
  const Mat q = linear(x_new, w_.W_q), k = linear(x_new, w_.W_k), v = linear(x_new, w_.W_v);
  cache_.append(0, k, v);
  cache_.commit(n);
  // The cache: (past + n, n_kv·d_h) keys and values; head g's are columns g·d_h .. g·d_h + d_h.
  const RowView<const float> keys = cache_.keys(0), values = cache_.values(0);
  Mat heads = xt::empty<float>({n, w_.n_heads * dh});
  std::vector<float> scratch(past + n);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t h = 0; h < w_.n_heads; ++h) {
      const std::size_t g = h / group;
      // Head h's query against its group's cached keys and values, read in place (a column
      // range of the cache rows). Token past+i sees positions 0..past+i.
      ch01::attend_one(&q(i, h * dh), keys.cols_range(g * dh, dh).rows_range(0, past + i + 1),
                       values.cols_range(g * dh, dh).rows_range(0, past + i + 1), scratch.data(),
                       &heads(i, h * dh));
    }
  }
  return linear(heads, w_.W_o);
#endif
}

}  // namespace mla::ch03
