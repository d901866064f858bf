#include "05_absorption/absorption.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "mla/exercise.hpp"

namespace mla::ch05 {

namespace {

// (maybe_unused: in exercise mode every caller is a stub.)
[[maybe_unused]] int i(std::size_t v) {
  return static_cast<int>(v);
}

// Scores of one block of queries are kept below this many floats (16 MiB): a long prefill chunk
// is processed a few tokens at a time instead of materializing (S·heads, T) at once.
constexpr std::size_t kScoreBudget = std::size_t{1} << 22;

}  // namespace

Mat absorb_query(const Mat& q, const Mat& W_uk, std::size_t heads) {
  const std::size_t d_k = q.shape(1), d_c = W_uk.shape(1);
  if (heads == 0 || q.shape(0) % heads || W_uk.shape(0) != heads * d_k) {
    throw std::invalid_argument("absorb_query: q " + shape_str(q) + " and W_uk " + shape_str(W_uk) +
                                " do not fit " + std::to_string(heads) +
                                " heads (expected q (n·heads, d_k), W_uk (heads·d_k, d_c))");
  }
#if MLA_EXERCISES
  (void)d_c;
  MLA_EXERCISE("5.1", "absorb_query()", "see chapters/05_absorption/README.md, exercise 5.1");
#else
  const std::size_t n = q.shape(0) / heads;
  Mat out = xt::empty<float>({n * heads, d_c});
  if (n == 0) return out;
  for (std::size_t h = 0; h < heads; ++h) {
    // Head h's n queries are rows h, h + heads, …: a (n, d_k) matrix with row stride heads·d_k.
    // (n, d_k) · W^UK_h (d_k, d_c) -> (n, d_c), written with row stride heads·d_c.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i(n), i(d_c), i(d_k), 1.0f,
                q.data() + h * d_k, i(heads * d_k), W_uk.data() + h * d_k * d_c, i(d_c), 0.0f,
                out.data() + h * d_c, i(heads * d_c));
  }
  return out;
#endif
}

Mat expand_output(const Mat& o_lat, const Mat& W_uv, std::size_t heads) {
  const std::size_t d_c = o_lat.shape(1);
  if (heads == 0 || o_lat.shape(0) % heads || W_uv.shape(1) != d_c || W_uv.shape(0) % heads) {
    throw std::invalid_argument("expand_output: o_lat " + shape_str(o_lat) + " and W_uv " +
                                shape_str(W_uv) + " do not fit " + std::to_string(heads) +
                                " heads (expected o_lat (n·heads, d_c), W_uv (heads·d_v, d_c))");
  }
#if MLA_EXERCISES
  MLA_EXERCISE("5.2", "expand_output()", "see chapters/05_absorption/README.md, exercise 5.2");
#else
  const std::size_t n = o_lat.shape(0) / heads, d_v = W_uv.shape(0) / heads;
  Mat out = xt::empty<float>({n * heads, d_v});
  if (n == 0) return out;
  for (std::size_t h = 0; h < heads; ++h) {
    // (n, d_c) · W^UV_hᵀ (d_c, d_v) -> (n, d_v); strided rows in and out, as in absorb_query.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i(n), i(d_v), i(d_c), 1.0f,
                o_lat.data() + h * d_c, i(heads * d_c), W_uv.data() + h * d_v * d_c, i(d_c), 0.0f,
                out.data() + h * d_v, i(heads * d_v));
  }
  return out;
#endif
}

void attend_latent(RowView<const float> q_lat, std::size_t heads, RowView<const float> cache,
                   std::size_t start, float scale, RowView<float> out) {
  const std::size_t T = cache.rows(), d_c = cache.cols();
  if (heads == 0 || q_lat.rows() % heads || q_lat.cols() != d_c || out.rows() != q_lat.rows() ||
      out.cols() != d_c) {
    throw std::invalid_argument(
        "attend_latent: queries " + shape_str({q_lat.rows(), q_lat.cols()}) + " and outputs " +
        shape_str({out.rows(), out.cols()}) + " do not fit " + std::to_string(heads) +
        " heads over latents of width " + std::to_string(d_c));
  }
  const std::size_t S = q_lat.rows() / heads;
  if (start + S > T) {
    throw std::invalid_argument("attend_latent: queries at positions " + std::to_string(start) +
                                ".." + std::to_string(start + S) + " but only " +
                                std::to_string(T) + " tokens cached");
  }
  if (S == 0) return;
#if MLA_EXERCISES
  (void)scale;
  MLA_EXERCISE("5.3", "attend_latent()", "see chapters/05_absorption/README.md, exercise 5.3");
#else
  // Tokens per block, so that a block's scores (block·heads, T) stay within the budget.
  const std::size_t block = std::max<std::size_t>(1, kScoreBudget / (heads * T));
  Mat scores;
  for (std::size_t s0 = 0; s0 < S; s0 += block) {
    const std::size_t s1 = std::min(S, s0 + block), rows = (s1 - s0) * heads;
    const std::size_t visible = start + s1;  // the block's last token sees cache rows 0..visible-1
    scores.resize({rows, visible});
    // scores (rows, visible) = scale · q̃ (rows, d_c) · C (visible, d_c)ᵀ: every head of every
    // token of the block against the same latents, in one product — the cache is read once per
    // block, not once per head.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i(rows), i(visible), i(d_c), scale,
                q_lat.row(s0 * heads), i(q_lat.stride()), cache.data(), i(cache.stride()), 0.0f,
                scores.data(), i(visible));
    for (std::size_t r = 0; r < rows; ++r) {
      const std::size_t sees = start + s0 + r / heads + 1;  // causal: token s sees 0..start+s
      float* row = scores.data() + r * visible;
      std::fill(row + sees, row + visible, kMasked);
      softmax(row, visible);
    }
    // out (rows, d_c) = P (rows, visible) · C (visible, d_c): the latents are the values too.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i(rows), i(d_c), i(visible), 1.0f,
                scores.data(), i(visible), cache.data(), i(cache.stride()), 0.0f,
                out.row(s0 * heads), i(out.stride()));
  }
#endif
}

Mat attend_latent(const Mat& q_lat, const ch04::LatentCache& cache, std::size_t start, float scale,
                  std::size_t heads) {
  if (heads == 0 || q_lat.shape(0) % heads || q_lat.shape(1) != cache.width()) {
    throw std::invalid_argument("attend_latent: q_lat " + shape_str(q_lat) + " does not fit " +
                                std::to_string(heads) + " heads over latents of width " +
                                std::to_string(cache.width()));
  }
  Mat out = xt::empty<float>(q_lat.shape());
  attend_latent(RowView(q_lat), heads, cache.view(), start, scale, RowView(out));
  return out;
}

Mat absorbed_forward(const Mat& x, const ch04::LatentWeights& w) {
  AbsorbedDecoder decoder(w);  // a forward pass is one step over an empty cache
  return decoder.step(x);
}

AbsorbedDecoder::AbsorbedDecoder(const ch04::LatentWeights& w)
    : w_(&w),
      up_(ch04::split_kv_up(w.W_ukv, w.heads, w.d_k, w.d_v)),
      cache_(w.d_c),
      scale_(1.0f / std::sqrt(static_cast<float>(w.d_k))) {
  w.check();
}

Mat AbsorbedDecoder::step(const Mat& x_new) {
  const ch04::LatentWeights& w = *w_;
  const Mat q = linear(x_new, w.W_q);          // (n, H·d_k)
  cache_.append(ch04::compress_kv(x_new, w));  // (T, d_c), exactly chapter 4's cache
  return linear(attend_cached(q), w.W_o);      // (n, H·d_v) -> (n, d_model)
}

Mat AbsorbedDecoder::attend_cached(const Mat& q) const {
  const ch04::LatentWeights& w = *w_;
  const std::size_t n = q.shape(0), H = w.heads, T = cache_.size();
  if (q.shape(1) != H * w.d_k || n > T) {
    throw std::invalid_argument("AbsorbedDecoder: queries " + shape_str(q) + " do not fit " +
                                std::to_string(H) + " heads of " + std::to_string(w.d_k) + " and " +
                                std::to_string(T) + " cached tokens");
  }
  Mat q_heads = q;
  q_heads.reshape({n * H, w.d_k});                       // the same numbers seen as (n·H, d_k)
  const Mat q_lat = absorb_query(q_heads, up_.W_uk, H);  // (n·H, d_c)
  const Mat o_lat = attend_latent(q_lat, cache_, T - n, scale_, H);  // (n·H, d_c)
  Mat o = expand_output(o_lat, up_.W_uv, H);                         // (n·H, d_v)
  o.reshape({n, H * w.d_v});
  return o;
}

// ---------------------------------------------------------------------------------------------
// Costs
// ---------------------------------------------------------------------------------------------

namespace {

struct Counts {
  double d, H, dk, dv, dc;
};

Counts counts(const ch04::LatentShape& s) {
  return {double(s.d_model), double(s.heads), double(s.d_k), double(s.d_v), double(s.d_c)};
}

// What both paths share: the three projections, and (bytes) reading every weight once plus the
// input and output rows.
Cost common_cost(const Counts& c, double S) {
  const double proj = c.H * c.dk + c.dc + c.H * c.dv;  // outputs of W^Q and W^DKV, inputs of W^O
  const double weights = c.d * proj + c.H * (c.dk + c.dv) * c.dc;  // + W^UKV
  return {2 * S * c.d * proj, 4 * (weights + 2 * S * c.d)};
}

}  // namespace

Cost projection_cost(const ch04::LatentShape& s, std::size_t S) {
  return common_cost(counts(s), double(S));
}

Cost rebuild_cost(const ch04::LatentShape& s, std::size_t S_, std::size_t T_) {
  const Counts c = counts(s);
  const double S = double(S_), T = double(T_);
  Cost cost = common_cost(c, S);
  cost.flops += 2 * T * c.dc * c.H * (c.dk + c.dv)  // rebuild K and V of all T tokens
                + 2 * S * T * c.H * (c.dk + c.dv);  // scores, weighted sum
  cost.bytes += 4 * (T * c.dc                       // read the latent cache
                     + 2 * T * c.H * (c.dk + c.dv)  // write the rebuilt K/V, read it back
                     + 2 * S * c.H * T);            // scores written, read
  return cost;
}

Cost absorbed_cost(const ch04::LatentShape& s, std::size_t S_, std::size_t T_) {
  const Counts c = counts(s);
  const double S = double(S_), T = double(T_);
  Cost cost = common_cost(c, S);
  cost.flops += 2 * S * c.H * c.dc * (c.dk + c.dv)  // absorb queries, expand outputs
                + 2 * S * T * c.H * 2 * c.dc;       // scores, weighted sum of latents
  cost.bytes += 4 * (2 * T * c.dc                   // two passes over the latent cache
                     + 2 * S * c.H * T);            // scores written, read
  return cost;
}

double crossover_chunk(const ch04::LatentShape& s, std::size_t T_) {
  const Counts c = counts(s);
  const double T = double(T_);
  // absorbed − rebuild = 2H·[S·d_c(d_k+d_v) + S·T·(2d_c − d_k − d_v) − T·d_c(d_k+d_v)] = 0
  const double per_token = 2 * c.dc - c.dk - c.dv;
  if (per_token <= 0) return std::numeric_limits<double>::infinity();
  const double up = c.dc * (c.dk + c.dv);
  return T * up / (up + T * per_token);
}

}  // namespace mla::ch05
