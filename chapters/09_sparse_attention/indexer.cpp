#include "09_sparse_attention/indexer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include <fmt/format.h>
#include <xsimd/xsimd.hpp>

#include "mla/fp8.hpp"
#include "mla/parallel.hpp"
#include "mla/rows.hpp"  // shape_str

namespace mla::ch09 {

using ch06::WeightShape;

namespace {

template <class T>
bool has_shape(const T& t, const WeightShape& shape) {
  return std::equal(t.shape().begin(), t.shape().end(), shape.begin(), shape.end());
}

template <class T>
void require_finite(const T& t, const std::string& origin, const std::string& name) {
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (!std::isfinite(t.data()[i])) {
      throw InputError(fmt::format(
          "{}: tensor '{}' holds a non-finite value at index {}; weights must be finite", origin,
          name, i));
    }
  }
}

/// LayerNorm over the last axis, with bias: (x - mean) / sqrt(var + eps) · w + b, biased
/// variance. x: (n, d) in place.
void layernorm_rows(Mat& x, const Vec& w, const Vec& b, float eps) {
  const std::size_t d = x.shape(1);
  for (std::size_t r = 0; r < x.shape(0); ++r) {
    float* v = x.data() + r * d;
    double mean = 0, var = 0;
    for (std::size_t i = 0; i < d; ++i) mean += v[i];
    mean /= static_cast<double>(d);
    for (std::size_t i = 0; i < d; ++i) var += (v[i] - mean) * (v[i] - mean);
    var /= static_cast<double>(d);
    const float inv = static_cast<float>(1.0 / std::sqrt(var + eps));
    const float m = static_cast<float>(mean);
    for (std::size_t i = 0; i < d; ++i) v[i] = (v[i] - m) * inv * w(i) + b(i);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Weights: every job walks the one list (for_each_weight)
// ---------------------------------------------------------------------------------------------

void check_indexer_weights(const DsaIndexerWeights& w, const DsaConfig& cfg) {
  for_each_weight(w, cfg, [](const std::string& name, const auto& t, const WeightShape& shape) {
    if (!has_shape(t, shape)) {
      throw InputError(fmt::format("{}: expected shape {}, found {}",
                                   name.substr(std::string("self_attn.").size()), shape_str(shape),
                                   shape_str(t)));
    }
  });
}

DsaIndexerWeights load_indexer_weights(const Checkpoint& ckpt, const DsaConfig& cfg,
                                       std::size_t layer) {
  check_dsa_config(cfg);
  DsaIndexerWeights w;
  const std::string prefix = ch06::layer_prefix(layer);
  for_each_weight(
      w, cfg,
      ch06::with_prefix(prefix, [&](const std::string& n, auto& t, const WeightShape& shape) {
        if (!ckpt.contains(n)) {
          throw InputError(
              fmt::format("{}: no tensor '{}' (a DSA layer needs the indexer's wq_b, wk, "
                          "k_norm.weight, k_norm.bias and weights_proj)",
                          ckpt.origin(), n));
        }
        ckpt.load_into(n, shape, t);
      }));
  for_each_weight(
      std::as_const(w), cfg,
      ch06::with_prefix(prefix, [&](const std::string& n, const auto& t, const WeightShape&) {
        require_finite(t, ckpt.origin(), n);
      }));
  return w;
}

DsaIndexerWeights random_indexer_weights(const DsaConfig& cfg, Rng& rng) {
  check_dsa_config(cfg);
  DsaIndexerWeights w;
  for_each_weight(w, cfg, [&](const std::string& name, auto& t, const WeightShape& shape) {
    if constexpr (std::decay_t<decltype(t)>::rank == 2) {
      t = rng.linear_weight(shape[0], shape[1]);
    } else {
      t = rng.normal_vec(shape[0], 0.1f);
      if (name.find(".bias") == std::string::npos) t += 1.0f;  // a norm weight: near 1
    }
  });
  return w;
}

std::vector<TensorData> indexer_weight_tensors(const DsaIndexerWeights& w, const DsaConfig& cfg,
                                               std::size_t layer, DType dtype) {
  std::vector<TensorData> out;
  for_each_weight(
      w, cfg,
      ch06::with_prefix(
          ch06::layer_prefix(layer), [&](const std::string& n, const auto& t, const WeightShape&) {
            out.push_back({n, dtype, {t.shape().begin(), t.shape().end()}, {t.begin(), t.end()}});
          }));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Hadamard, rotate-half RoPE, FP8 blocks
// ---------------------------------------------------------------------------------------------

void hadamard(float* x, std::size_t n) {
  if (n == 0 || (n & (n - 1)) != 0) {
    throw std::invalid_argument("hadamard: size " + std::to_string(n) + " is not a power of two");
  }
  // Sylvester's recursion H_2n = [[H_n, H_n], [H_n, -H_n]], one butterfly level at a time.
  for (std::size_t h = 1; h < n; h *= 2) {
    for (std::size_t i = 0; i < n; i += 2 * h) {
      for (std::size_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(n));
  for (std::size_t i = 0; i < n; ++i) x[i] *= scale;
}

void rotate_half(const ch06::Rope& rope, float* x, std::size_t pos) {
  const std::size_t half = rope.dim() / 2;
  std::vector<float> c(half), s(half);
  rope.angles(pos, c.data(), s.data());
  for (std::size_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * c[i] - b * s[i];
    x[i + half] = a * s[i] + b * c[i];
  }
}

float ue8m0_scale(float amax) {
  const float x = std::max(amax, 1e-4f) * (1.0f / kE4m3Max);
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  std::uint32_t e = (bits >> 23) & 0xFFu;
  if ((bits & 0x7FFFFFu) != 0) ++e;  // not a power of two already: round the exponent up
  const std::uint32_t out = e << 23;
  float s;
  std::memcpy(&s, &out, sizeof s);
  return s;
}

void quantize_fp8_blocks(const float* x, std::size_t n, std::size_t block, std::uint8_t* codes,
                         float* scales) {
  for (std::size_t b0 = 0, k = 0; b0 < n; b0 += block, ++k) {
    const std::size_t e = std::min(n, b0 + block);
    float amax = 0.0f;
    for (std::size_t i = b0; i < e; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float s = ue8m0_scale(amax);
    scales[k] = s;
    for (std::size_t i = b0; i < e; ++i) {
      codes[i] = float_to_e4m3(std::clamp(x[i] / s, -kE4m3Max, kE4m3Max));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The indexer key cache
// ---------------------------------------------------------------------------------------------

IndexerKeyCache::IndexerKeyCache(std::size_t DI, bool fp8)
    : DI_(DI), block_(indexer_fp8_block(DI)), fp8_(fp8) {}

void IndexerKeyCache::append(const float* k, std::size_t n) {
  if (!fp8_) {
    keys_.insert(keys_.end(), k, k + n * DI_);
  } else {
    const std::size_t nb = (DI_ + block_ - 1) / block_;
    codes_.resize((size_ + n) * DI_);
    scales_.resize((size_ + n) * nb);
    for (std::size_t i = 0; i < n; ++i) {
      quantize_fp8_blocks(k + i * DI_, DI_, block_, codes_.data() + (size_ + i) * DI_,
                          scales_.data() + (size_ + i) * nb);
    }
  }
  size_ += n;
}

std::size_t IndexerKeyCache::bytes_per_token() const {
  return fp8_ ? DI_ + 4 * ((DI_ + block_ - 1) / block_) : 4 * DI_;
}

void IndexerKeyCache::key(std::size_t t, float* out) const {
  if (!fp8_) {
    std::copy_n(keys_.data() + t * DI_, DI_, out);
    return;
  }
  const std::size_t nb = (DI_ + block_ - 1) / block_;
  for (std::size_t i = 0; i < DI_; ++i) {
    out[i] = e4m3_to_float(codes_[t * DI_ + i]) * scales_[t * nb + i / block_];
  }
}

// ---------------------------------------------------------------------------------------------
// The indexer
// ---------------------------------------------------------------------------------------------

Indexer::Indexer(const DsaConfig& cfg, const ch06::MlaWeights& mla, const DsaIndexerWeights& w,
                 std::size_t batch, IndexerOptions opt)
    : cfg_(cfg), mla_(mla), w_(w), opt_(opt), rope_(ch06::Rope::from_config(cfg.mla)) {
  check_dsa_config(cfg_);
  check_indexer_weights(w_, cfg_);
  if (opt_.fp8 && cfg_.index_head_dim > 128 && cfg_.index_head_dim % 128 != 0) {
    throw std::invalid_argument("Indexer: FP8 blocks of 128 must tile index_head_dim");
  }
  for (std::size_t b = 0; b < batch; ++b) caches_.emplace_back(cfg_.index_head_dim, opt_.fp8);
}

Mat Indexer::query_latent(const Mat& h) const {
  // The same qr that MLA feeds to q_b_proj: RMSNorm(h · W_q_aᵀ) · q_a_layernorm, (N, q_lora).
  return rmsnorm(linear(h, mla_.q_a_proj), mla_.q_a_layernorm,
                 static_cast<float>(cfg_.mla.rms_norm_eps));
}

IndexerQueries Indexer::project(const Mat& h, std::size_t S, std::size_t start) {
  const std::size_t N = h.shape(0), HI = cfg_.index_n_heads, DI = cfg_.index_head_dim;
  const auto rotate = [&](float* v, std::size_t pos) {
    // The rope part is the FIRST r features of an indexer vector.
    if (opt_.interleaved_rope) {
      rope_.rotate(v, pos);  // the bug: MLA's interleaved pairs
    } else {
      rotate_half(rope_, v, pos);
    }
    hadamard(v, DI);
  };
  IndexerQueries out;
  out.N = N;
  out.HI = HI;
  out.DI = DI;
  // qI: (N, HI·DI) from qr; each head rotated at its token's position, then the Hadamard.
  const Mat q = linear(query_latent(h), w_.wq_b);
  out.q.assign(q.begin(), q.end());
  for (std::size_t n = 0; n < N; ++n) {
    for (std::size_t hh = 0; hh < HI; ++hh)
      rotate(out.q.data() + (n * HI + hh) * DI, start + n % S);
  }
  // kI: (N, DI) = LayerNorm(h · W_kᵀ), rotated the same way; then into each sequence's cache.
  Mat k = linear(h, w_.wk);
  layernorm_rows(k, w_.k_norm, w_.k_norm_bias, 1e-6f);
  for (std::size_t n = 0; n < N; ++n) rotate(k.data() + n * DI, start + n % S);
  for (std::size_t b = 0; b < caches_.size(); ++b) caches_[b].append(k.data() + b * S * DI, S);
  // w: (N, HI) = h · W_wᵀ · HI^-0.5, from the layer input, signed.
  const Mat w = linear(h, w_.weights_proj);
  const float hs = 1.0f / std::sqrt(static_cast<float>(HI));
  out.w.resize(N * HI);
  for (std::size_t i = 0; i < N * HI; ++i) out.w[i] = w.data()[i] * hs;
  if (opt_.fp8) {
    // One block per (token, head) when DI <= 128; DI = 256 would give two (handled the same way
    // below by the per-block scales).
    const std::size_t blk = indexer_fp8_block(DI), nb = DI / blk;
    std::vector<std::uint8_t> codes(DI);
    out.q_code.resize(N * HI * DI);
    out.q_scale.resize(N * HI * nb);
    for (std::size_t r = 0; r < N * HI; ++r) {
      quantize_fp8_blocks(out.q.data() + r * DI, DI, blk, codes.data(),
                          out.q_scale.data() + r * nb);
      for (std::size_t i = 0; i < DI; ++i) out.q_code[r * DI + i] = e4m3_to_float(codes[i]);
    }
  }
  return out;
}

namespace {

using V = xsimd::batch<float>;
constexpr std::size_t W = V::size;  // floats per vector: 16 with AVX-512, 8 with AVX2

// The fast index scores are a small matrix product and a reduction: S (HI, T) = Q (HI, DI) ·
// Kᵀ, then out[t] = Σ_h coef_h · ReLU(S[h][t]). Heads go in the vector lanes: Q is transposed
// once per query into Qt (DI, HP) (HP = HI rounded up to a vector; padded heads have q = 0 and
// coef = 0, so they add ReLU(0) · 0 = 0), which stays in L1 (128 × 64 floats = 32 KiB). A
// micro-kernel then takes kKeyRows keys and kHeadVecs vectors of heads: per feature i, kHeadVecs
// loads of Qt, kKeyRows broadcasts of K[t][i] and kKeyRows · kHeadVecs FMAs into as many
// accumulators (24 of AVX-512's 32 registers; 9 of AVX2's 16). K is read in its own row-major
// layout, once: no transposed copy of the keys (an earlier version transposed every block of
// keys element by element, which cost about as much as the FMAs).
constexpr int kKeyRows = W >= 16 ? 6 : 3;
constexpr int kHeadVecs = W >= 16 ? 4 : 3;

// tot[j] += Σ over NV head vectors of coef · ReLU(q · k_j), for NK keys at K (rows of DI).
template <int NK, int NV>
inline void index_micro(const float* K, std::size_t DI, const float* qt, std::size_t HP,
                        const float* cf, float* tot) {
  V acc[NK][NV];
  for (int j = 0; j < NK; ++j)
    for (int v = 0; v < NV; ++v) acc[j][v] = V(0.0f);
  for (std::size_t i = 0; i < DI; ++i) {
    V q[NV];
    for (int v = 0; v < NV; ++v) q[v] = V::load_aligned(qt + i * HP + std::size_t(v) * W);
    for (int j = 0; j < NK; ++j) {
      const V k(K[std::size_t(j) * DI + i]);
      for (int v = 0; v < NV; ++v) acc[j][v] = xsimd::fma(k, q[v], acc[j][v]);
    }
  }
  const V zero(0.0f);
  for (int j = 0; j < NK; ++j) {
    V sum(0.0f);
    for (int v = 0; v < NV; ++v)
      sum = xsimd::fma(V::load_aligned(cf + std::size_t(v) * W), xsimd::max(acc[j][v], zero), sum);
    tot[j] += xsimd::hadd(sum);
  }
}

// NK keys against every head: the head vectors kHeadVecs at a time, then the rest.
template <int NK>
void index_keys(const float* K, std::size_t DI, const float* qt, std::size_t HP, const float* cf,
                float* out) {
  float tot[NK] = {};
  const std::size_t nv = HP / W;
  std::size_t v = 0;
  for (; v + kHeadVecs <= nv; v += kHeadVecs)
    index_micro<NK, kHeadVecs>(K, DI, qt + v * W, HP, cf + v * W, tot);
  for (; v < nv; ++v) index_micro<NK, 1>(K, DI, qt + v * W, HP, cf + v * W, tot);
  for (int j = 0; j < NK; ++j) out[j] = tot[j];
}

}  // namespace

void indexer_scores_fast(const float* K, std::size_t T, std::size_t DI, const float* Q,
                         std::size_t HI, const float* coef, float* out, int threads) {
  threads = default_threads(threads);
  const std::size_t HP = (HI + W - 1) / W * W;
  std::vector<float, xsimd::aligned_allocator<float, 64>> qt(DI * HP, 0.0f), cf(HP, 0.0f);
  for (std::size_t h = 0; h < HI; ++h) {
    cf[h] = coef[h];
    for (std::size_t i = 0; i < DI; ++i) qt[i * HP + h] = Q[h * DI + i];
  }
  constexpr std::size_t kKeys = kKeyRows;
  const std::size_t blocks = T / kKeys;
  // Below 64 blocks of keys a second thread costs more to wake than it saves.
  const int nt = blocks >= 64 ? threads : 1;
  // Dynamic, in runs of 32 blocks: on a shared machine a thread that loses its core for a while
  // leaves its blocks to the other instead of making it wait at the end.
#pragma omp parallel for num_threads(nt) schedule(dynamic, 32) if (nt > 1)
  for (std::size_t b = 0; b < blocks; ++b) {
    index_keys<kKeyRows>(K + b * kKeys * DI, DI, qt.data(), HP, cf.data(), out + b * kKeys);
  }
  // The last T mod kKeyRows keys, one at a time.
  for (std::size_t t = blocks * kKeys; t < T; ++t)
    index_keys<1>(K + t * DI, DI, qt.data(), HP, cf.data(), out + t);
}

void Indexer::scores(const IndexerQueries& q, std::size_t n, std::size_t b, std::size_t visible,
                     float* out) const {
  if (opt_.fp8 || opt_.reference) {
    scores_reference(q, n, b, visible, out);
    return;
  }
  const std::size_t HI = q.HI, DI = q.DI;
  const IndexerKeyCache& kc = caches_[b];
  if (visible > kc.size()) throw std::invalid_argument("Indexer::scores: beyond the cache");
  const float ds = 1.0f / std::sqrt(static_cast<float>(DI));
  std::vector<float> coef(HI);
  for (std::size_t hh = 0; hh < HI; ++hh) coef[hh] = q.w[n * HI + hh] * ds;
  indexer_scores_fast(kc.keys(), visible, DI, q.q.data() + n * HI * DI, HI, coef.data(), out,
                      opt_.threads);
}

void Indexer::scores_reference(const IndexerQueries& q, std::size_t n, std::size_t b,
                               std::size_t visible, float* out) const {
  const std::size_t HI = q.HI, DI = q.DI;
  const IndexerKeyCache& kc = caches_[b];
  if (visible > kc.size()) throw std::invalid_argument("Indexer::scores: beyond the cache");
  const float ds = 1.0f / std::sqrt(static_cast<float>(DI));
  std::vector<float> coef(HI);
  if (!opt_.fp8) {
    // I[t] = Σ_h (w_h · DI^-0.5) · ReLU(q_h · k_t)
    for (std::size_t hh = 0; hh < HI; ++hh) coef[hh] = q.w[n * HI + hh] * ds;
    for (std::size_t t = 0; t < visible; ++t) {
      const float* k = kc.keys() + t * DI;
      float acc = 0.0f;
      for (std::size_t hh = 0; hh < HI; ++hh) {
        const float* qh = q.q.data() + (n * HI + hh) * DI;
        float dot = 0.0f;
        for (std::size_t i = 0; i < DI; ++i) dot += qh[i] * k[i];
        acc += coef[hh] * std::max(dot, 0.0f);
      }
      out[t] = acc;
    }
    return;
  }
  // FP8 (fp8_index): I[t] = k_s[t] · Σ_h ReLU(q8_h · k8_t) · (w_h · q_s_h · DI^-0.5), one block
  // per vector when DI <= 128; with several blocks every block's partial product gets its scales.
  const std::size_t blk = kc.block(), nb = DI / blk;
  const float* table = e4m3_table();
  std::vector<float> k8(DI);
  for (std::size_t t = 0; t < visible; ++t) {
    const std::uint8_t* kcodes = kc.codes() + t * DI;
    const float* ks = kc.scales() + t * nb;
    for (std::size_t i = 0; i < DI; ++i) k8[i] = table[kcodes[i]];
    float acc = 0.0f;
    for (std::size_t hh = 0; hh < HI; ++hh) {
      const float* qh = q.q_code.data() + (n * HI + hh) * DI;
      const float* qs = q.q_scale.data() + (n * HI + hh) * nb;
      float dot = 0.0f;
      for (std::size_t c = 0; c < nb; ++c) {
        float part = 0.0f;
        for (std::size_t i = c * blk; i < (c + 1) * blk; ++i) part += qh[i] * k8[i];
        dot += nb == 1 ? part : part * qs[c] * ks[c];
      }
      const float w = q.w[n * HI + hh] * ds * (nb == 1 ? qs[0] : 1.0f);
      acc += std::max(dot, 0.0f) * w;
    }
    out[t] = nb == 1 ? ks[0] * acc : acc;
  }
}

void select_topk(const float* scores, std::size_t visible, std::size_t topk, std::int32_t* out) {
  const std::size_t k = std::min(topk, visible);
  std::vector<std::int32_t> idx(visible);
  std::iota(idx.begin(), idx.end(), 0);
  // Largest score first; equal scores: the earlier position first (deterministic).
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                    [&](std::int32_t a, std::int32_t b) {
                      return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
                    });
  std::copy_n(idx.begin(), k, out);
  std::fill(out + k, out + topk, -1);
}

}  // namespace mla::ch09
