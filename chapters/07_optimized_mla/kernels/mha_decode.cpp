// Multi-head attention decode, the baseline MLA is measured against. One file, two versions:
//
// version 1 is the scalar reference: per (sequence, head): scores against K_h, softmax, weighted
//           sum of V_h.
// version 2 is what a careful engineer would ship for MHA on a CPU: the head-major cache read as
//           two sequential streams per head, SIMD dot products and weighted sums, the online
//           softmax fused into one pass over tiles of 64 tokens, and threads over
//           (sequence, head, chunk of the cache) combined with a log-sum-exp. Each cached number
//           is used by exactly one head for two FLOPs, so nothing can be reused from cache:
//           the step is bound by DRAM read bandwidth, and v2's job is to run at it.

#include "07_optimized_mla/kernels/mha_decode.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "07_optimized_mla/kernels/flash_decoding.hpp"
#include "mla/parallel.hpp"
#include "mla/rows.hpp"
#include "mla/tensor.hpp"

namespace mla::ch07 {

namespace {
using V = xsimd::batch<float>;
constexpr std::size_t W = V::size;
constexpr std::size_t kTile = 64;  // tokens per online-softmax step

void check(const MhaCache* caches, const MhaArgs& a) {
  for (std::size_t b = 0; b < a.batch; ++b) {
    const MhaCache& c = caches[b];
    if (c.heads() != a.heads || c.d_k() != a.d_k || c.d_v() != a.d_v) {
      throw std::invalid_argument("mha_decode: cache " + std::to_string(b) +
                                  " does not match the heads or widths of the queries");
    }
  }
}
}  // namespace

MhaCache::MhaCache(std::size_t heads, std::size_t d_k, std::size_t d_v)
    : heads_(heads), d_k_(d_k), d_v_(d_v), k_(heads), v_(heads) {}

void MhaCache::reserve(std::size_t tokens) {
  for (std::size_t h = 0; h < heads_; ++h) {
    k_[h].reserve(tokens * d_k_);
    v_[h].reserve(tokens * d_v_);
  }
}

void MhaCache::append(const float* k, const float* v, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t h = 0; h < heads_; ++h) {
      const float* kh = k + (i * heads_ + h) * d_k_;
      const float* vh = v + (i * heads_ + h) * d_v_;
      k_[h].insert(k_[h].end(), kh, kh + d_k_);
      v_[h].insert(v_[h].end(), vh, vh + d_v_);
    }
  }
  size_ += n;
}

double MhaCache::bytes_per_step() const {
  return static_cast<double>(size_) * static_cast<double>(heads_ * (d_k_ + d_v_) * sizeof(float));
}

float* MhaCache::resize_k(std::size_t h, std::size_t tokens) {
  k_[h].resize(tokens * d_k_);
  return k_[h].data();
}

float* MhaCache::resize_v(std::size_t h, std::size_t tokens) {
  v_[h].resize(tokens * d_v_);
  return v_[h].data();
}

// ============================================================================================
// version 1: scalar reference
// ============================================================================================

void mha_decode_v1(const MhaCache* caches, const MhaArgs& a) {
  check(caches, a);
  for (std::size_t b = 0; b < a.batch; ++b) {
    const std::size_t T = caches[b].size();
    std::vector<float> p(T);
    for (std::size_t h = 0; h < a.heads; ++h) {
      const float* q = a.q + (b * a.heads + h) * a.d_k;  // (d_k)
      const float* K = caches[b].k(h);                   // (T, d_k)
      const float* Vh = caches[b].v(h);                  // (T, d_v)
      for (std::size_t t = 0; t < T; ++t) {
        float s = 0.0f;
        for (std::size_t k = 0; k < a.d_k; ++k) s += q[k] * K[t * a.d_k + k];
        p[t] = a.scale * s;
      }
      mla::softmax(p.data(), T);
      float* o = a.out + (b * a.heads + h) * a.d_v;
      std::fill(o, o + a.d_v, 0.0f);
      for (std::size_t t = 0; t < T; ++t) {
        for (std::size_t j = 0; j < a.d_v; ++j) o[j] += p[t] * Vh[t * a.d_v + j];
      }
    }
  }
}

// ============================================================================================
// version 2: SIMD, fused, threaded
// ============================================================================================
// The flash-decoding pieces (dot_simd, the online-softmax step, the log-sum-exp combine, the
// chunking) are the MLA kernels', from flash_decoding.hpp.

namespace {

// One (sequence, head, token range): the partial softmax of q against K and V's rows.
// q: (d_k); K: (n, d_k), V: (n, d_v) the range's rows; o: (d_v) the unnormalized output.
void head_chunk(const float* q, RowView<const float> K, RowView<const float> Vh, float scale,
                float* o, OnlineSoftmax& sm) {
  alignas(64) float s[kTile];
  const std::size_t d_k = K.cols(), d_v = Vh.cols();
  std::fill(o, o + d_v, 0.0f);
  for (std::size_t t0 = 0; t0 < K.rows(); t0 += kTile) {
    const std::size_t nt = std::min(kTile, K.rows() - t0);
    float tmax = kNegInf;
    for (std::size_t t = 0; t < nt; ++t) {
      s[t] = scale * dot_simd(q, K.row(t0 + t), d_k);
      tmax = std::max(tmax, s[t]);
    }
    const float alpha = sm.step(s, nt, kTile, tmax);
    // o = alpha·o + Σ_t p_t·v_t, two tokens per sweep over o.
    const V va(alpha);
    std::size_t j = 0;
    for (; j + W <= d_v; j += W) (V::load_unaligned(o + j) * va).store_unaligned(o + j);
    for (; j < d_v; ++j) o[j] *= alpha;
    std::size_t t = 0;
    for (; t + 2 <= nt; t += 2) {
      const float* v0 = Vh.row(t0 + t);
      const float* v1 = Vh.row(t0 + t + 1);
      const V p0(s[t]), p1(s[t + 1]);
      for (j = 0; j + W <= d_v; j += W) {
        V acc = V::load_unaligned(o + j);
        acc = xsimd::fma(p0, V::load_unaligned(v0 + j), acc);
        acc = xsimd::fma(p1, V::load_unaligned(v1 + j), acc);
        acc.store_unaligned(o + j);
      }
      for (; j < d_v; ++j) o[j] += s[t] * v0[j] + s[t + 1] * v1[j];
    }
    for (; t < nt; ++t) {
      const float* v0 = Vh.row(t0 + t);
      for (j = 0; j < d_v; ++j) o[j] += s[t] * v0[j];
    }
  }
}

}  // namespace

void mha_decode_v2(const MhaCache* caches, const MhaArgs& a) {
  check(caches, a);
  const std::size_t B = a.batch, H = a.heads;
  const int threads = std::max(a.threads, 1);
  // Chunks per (sequence, head), so that every thread gets the same share of the work.
  const std::size_t pairs = B * H, chunks = kv_chunks(pairs, threads);
  const std::size_t part = a.d_v + 2;  // o (d_v), m, l
  std::vector<float> parts(pairs * chunks * part);
  mla::parallel_for(static_cast<long>(pairs * chunks), threads, [&](long i) {
    const std::size_t pair = static_cast<std::size_t>(i) / chunks,
                      c = static_cast<std::size_t>(i) % chunks;
    const std::size_t b = pair / H, h = pair % H, T = caches[b].size();
    const std::size_t t0 = chunk_begin(T, c, chunks), n = chunk_begin(T, c + 1, chunks) - t0;
    const RowView<const float> K(caches[b].k(h), T, a.d_k), Vh(caches[b].v(h), T, a.d_v);
    float* p = parts.data() + static_cast<std::size_t>(i) * part;
    OnlineSoftmax sm;
    head_chunk(a.q + (b * H + h) * a.d_k, K.rows_range(t0, n), Vh.rows_range(t0, n), a.scale, p,
               sm);
    p[a.d_v] = sm.m;
    p[a.d_v + 1] = sm.l;
  });
  // Log-sum-exp combine of the chunks of each (sequence, head).
  for (std::size_t pair = 0; pair < pairs; ++pair) {
    combine_partials(
        chunks,
        [&](std::size_t c) {
          const float* p = parts.data() + (pair * chunks + c) * part;
          return Partial{p, p[a.d_v], p[a.d_v + 1]};
        },
        a.d_v, a.out + pair * a.d_v);
  }
}

}  // namespace mla::ch07
