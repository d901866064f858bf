#include "04_low_rank_latents/latent.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "01_attention/attention.hpp"
#include "mla/exercise.hpp"
#include "mla/rows.hpp"

namespace mla::ch04 {

namespace {

void expect_shape(const Mat& m, std::size_t rows, std::size_t cols, const char* name) {
  if (m.shape(0) != rows || m.shape(1) != cols) {
    throw std::invalid_argument(std::string("latent weights: ") + name + " is " + shape_str(m) +
                                ", expected " + shape_str({rows, cols}));
  }
}

}  // namespace

void LatentWeights::check() const {
  if (heads == 0 || d_k == 0 || d_v == 0 || d_c == 0 || W_q.shape(1) == 0) {
    throw std::invalid_argument("latent weights: every size must be positive");
  }
  const std::size_t d = d_model();
  expect_shape(W_q, heads * d_k, d, "W_q");
  expect_shape(W_dkv, d_c, d, "W_dkv");
  expect_shape(W_ukv, heads * (d_k + d_v), d_c, "W_ukv");
  expect_shape(W_o, d, heads * d_v, "W_o");
}

LatentWeights random_latent(std::size_t d_model, std::size_t heads, std::size_t d_k,
                            std::size_t d_c, Rng& rng, std::size_t d_v) {
  if (d_v == 0) d_v = d_k;
  if (d_model == 0 || heads == 0 || d_k == 0 || d_c == 0) {
    throw std::invalid_argument("random_latent: every size must be positive");
  }
  LatentWeights w;
  w.heads = heads;
  w.d_k = d_k;
  w.d_v = d_v;
  w.d_c = d_c;
  w.W_q = rng.linear_weight(heads * d_k, d_model);
  w.W_dkv = rng.linear_weight(d_c, d_model);
  w.W_ukv = rng.linear_weight(heads * (d_k + d_v), d_c);
  w.W_o = rng.linear_weight(d_model, heads * d_v);
  return w;
}

KvUp split_kv_up(const Mat& W_ukv, std::size_t heads, std::size_t d_k, std::size_t d_v) {
  const std::size_t d_c = W_ukv.shape(1), block = d_k + d_v;
  if (heads == 0 || W_ukv.shape(0) != heads * block) {
    throw std::invalid_argument("split_kv_up: W_ukv is " + shape_str(W_ukv) + ", expected [" +
                                std::to_string(heads * block) + ", d_c]");
  }
  KvUp up{xt::empty<float>({heads * d_k, d_c}), xt::empty<float>({heads * d_v, d_c})};
  for (std::size_t h = 0; h < heads; ++h) {
    const float* src =
        W_ukv.data() + h * block * d_c;  // head h's block: d_k key rows, d_v value rows
    std::memcpy(up.W_uk.data() + h * d_k * d_c, src, d_k * d_c * sizeof(float));
    std::memcpy(up.W_uv.data() + h * d_v * d_c, src + d_k * d_c, d_v * d_c * sizeof(float));
  }
  return up;
}

Mat join_kv_up(const Mat& W_uk, const Mat& W_uv, std::size_t heads) {
  const std::size_t d_c = W_uk.shape(1);
  if (heads == 0 || W_uv.shape(1) != d_c || W_uk.shape(0) % heads || W_uv.shape(0) % heads) {
    throw std::invalid_argument("join_kv_up: W_uk " + shape_str(W_uk) + " and W_uv " +
                                shape_str(W_uv) + " do not split into " + std::to_string(heads) +
                                " heads of the same latent width");
  }
  const std::size_t d_k = W_uk.shape(0) / heads, d_v = W_uv.shape(0) / heads;
  Mat out = xt::empty<float>({heads * (d_k + d_v), d_c});
  for (std::size_t h = 0; h < heads; ++h) {
    float* dst = out.data() + h * (d_k + d_v) * d_c;
    std::memcpy(dst, W_uk.data() + h * d_k * d_c, d_k * d_c * sizeof(float));
    std::memcpy(dst + d_k * d_c, W_uv.data() + h * d_v * d_c, d_v * d_c * sizeof(float));
  }
  return out;
}

ch03::MhaWeights equivalent_mha(const LatentWeights& w) {
  w.check();
  if (w.d_v != w.d_k) {
    throw std::invalid_argument("equivalent_mha: chapter 3's layer needs d_v == d_k");
  }
  const KvUp up = split_kv_up(w.W_ukv, w.heads, w.d_k, w.d_v);
  ch03::MhaWeights m;
  m.n_heads = m.n_kv_heads = w.heads;
  m.head_dim = w.d_k;
  m.W_q = w.W_q;
  // (heads·d_k, d_c) · (d_c, d_model): the full-rank-looking matrix MHA would store and cache.
  m.W_k = matmul(up.W_uk, w.W_dkv);
  m.W_v = matmul(up.W_uv, w.W_dkv);
  m.W_o = w.W_o;
  return m;
}

Mat compress_kv(const Mat& x, const LatentWeights& w) {
#if MLA_EXERCISES
  (void)x, (void)w;
  MLA_EXERCISE("4.1", "compress_kv()", "see chapters/04_low_rank_latents/README.md, exercise 4.1");
#else
  return linear(x, w.W_dkv);     // (T, d_model) -> (T, d_c)
#endif
}

Mat expand_kv(const Mat& c_kv, const LatentWeights& w) {
#if MLA_EXERCISES
  (void)c_kv, (void)w;
  MLA_EXERCISE("4.2", "expand_kv()", "see chapters/04_low_rank_latents/README.md, exercise 4.2");
#else
  return linear(c_kv, w.W_ukv);  // (T, d_c) -> (T, heads·(d_k + d_v))
#endif
}

Mat attend_expanded(const Mat& q, const Mat& kv, std::size_t T, const LatentShape& s) {
  const std::size_t n = q.shape(0), H = s.heads, ld_kv = H * (s.d_k + s.d_v);
  if (q.shape(1) != H * s.d_k || kv.shape(1) != ld_kv || kv.shape(0) < T || n > T) {
    throw std::invalid_argument("attend_expanded: q " + shape_str(q) + ", kv " + shape_str(kv) +
                                " do not fit " + std::to_string(H) +
                                " heads and T = " + std::to_string(T));
  }
  Mat out = xt::empty<float>({n, H * s.d_v});
  // The first T rows of kv; head h's keys are columns h·(d_k + d_v) .. + d_k, its values the d_v
  // after them.
  const RowView<const float> rows = RowView(kv).rows_range(0, T);
  const auto keys = [&](std::size_t h) { return rows.cols_range(h * (s.d_k + s.d_v), s.d_k); };
  const auto values = [&](std::size_t h) {
    return rows.cols_range(h * (s.d_k + s.d_v) + s.d_k, s.d_v);
  };
  if (n == 1) {
    // The decode step: one query per head sees all T tokens. Chapter 1's attend_one reads head
    // h's keys and values in place, as strided rows of kv; nothing is copied.
    std::vector<float> scratch(T);
    for (std::size_t h = 0; h < H; ++h) {
      ch01::attend_one(q.data() + h * s.d_k, keys(h), values(h), scratch.data(),
                       out.data() + h * s.d_v);
    }
    return out;
  }
  // Several queries: each head runs chapter 1's (BLAS) attention on a copy of its slices.
  for (std::size_t h = 0; h < H; ++h) {
    const Mat q_h = columns(q, h * s.d_k, s.d_k);                              // (n, d_k)
    const Mat o_h = ch01::attention(q_h, to_mat(keys(h)), to_mat(values(h)));  // (n, d_v)
    // queries = the last n positions; head h's output goes to columns h·d_v of out.
    for (std::size_t i = 0; i < n; ++i) {
      std::memcpy(out.data() + i * H * s.d_v + h * s.d_v, o_h.data() + i * s.d_v,
                  s.d_v * sizeof(float));
    }
  }
  return out;
}

Mat latent_forward(const Mat& x, const LatentWeights& w) {
  w.check();
  const Mat q = linear(x, w.W_q);      // (T, heads·d_k)
  const Mat c_kv = compress_kv(x, w);  // (T, d_c)             eq. 9: the only thing a cache keeps
  const Mat kv = expand_kv(c_kv, w);   // (T, heads·(d_k+d_v)) eqs. 10–11
  const Mat o = attend_expanded(q, kv, x.shape(0), w.shape());  // (T, heads·d_v)
  return linear(o, w.W_o);                                      // (T, d_model)
}

// ---------------------------------------------------------------------------------------------
// LatentCache, LatentDecoder
// ---------------------------------------------------------------------------------------------

void LatentCache::append(const Mat& c) {
  if (c.shape(1) != d_c_) {
    throw std::invalid_argument("LatentCache::append: latents have " + std::to_string(c.shape(1)) +
                                " numbers, the cache holds " + std::to_string(d_c_));
  }
  const std::size_t need = (size_ + c.shape(0)) * d_c_;
  if (need > data_.size()) data_.resize(std::max(need, 2 * data_.size()));
  std::copy(c.data(), c.data() + c.size(),
            data_.begin() + static_cast<std::ptrdiff_t>(size_ * d_c_));
  size_ += c.shape(0);
}

void LatentCache::truncate(std::size_t tokens) {
  size_ = std::min(size_, tokens);
}

LatentDecoder::LatentDecoder(const LatentWeights& w) : w_(&w), cache_(w.d_c) {
  w.check();
}

Mat LatentDecoder::step(const Mat& x_new) {
  const LatentWeights& w = *w_;
  const Mat q = linear(x_new, w.W_q);      // (n, heads·d_k)
  cache_.append(compress_kv(x_new, w));    // cache (T, d_c): the new latents join the old ones
  return linear(attend_cached(q), w.W_o);  // (n, heads·d_v) -> (n, d_model)
}

Mat LatentDecoder::attend_cached(const Mat& q) {
#if MLA_EXERCISES
  (void)q;
  MLA_EXERCISE("4.3", "LatentDecoder::attend_cached()",
               "see chapters/04_low_rank_latents/README.md, exercise 4.3");
#else
  const LatentWeights& w = *w_;
  const std::size_t T = cache_.size(), width = w.heads * (w.d_k + w.d_v);
  if (kv_.shape(0) < T || kv_.shape(1) != width) {
    kv_.resize({std::max(T, 2 * kv_.shape(0)), width});
  }
  // The rebuild: every cached latent goes back through W^UKV, every step — (T, d_c) · (d_c,
  // heads·(d_k+d_v)). This product is what makes the step cost grow as T·d_c·heads·(d_k+d_v).
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), static_cast<int>(width),
              static_cast<int>(w.d_c), 1.0f, cache_.data(), static_cast<int>(w.d_c), w.W_ukv.data(),
              static_cast<int>(w.d_c), 0.0f, kv_.data(), static_cast<int>(width));
  return attend_expanded(q, kv_, T, w.shape());  // (n, heads·d_v)
#endif
}

}  // namespace mla::ch04
