// Prefill in two modes (see mla_prefill.hpp): MHA mode (decompress, then causal flash attention
// per head) and MQA mode (absorbed, on the latent), both on one flash-attention kernel, and the
// cost model that picks one per chunk.
//
// The kernel, flash_rows: a block of G = 2·(SIMD width) query rows sits in the lanes of two
// vectors (32 rows with AVX-512, 16 with AVX2); kBlocks such blocks share each tile of 64 keys
// while it is in L2, and for every tile each block runs:
//   1. scores S (nt, G) = K_tile (nt, d_k) · Qᵀ (d_k, G): `rows_times_panel`, kRows keys × 2
//      vectors of accumulators (16 with AVX-512, 12 with AVX2's 16 registers), per k one key
//      number broadcast per row and two query vectors loaded;
//   2. causal mask (only on tiles that reach past the block's first query), online softmax per
//      lane: max, rescale factor, exponentials, sum — whole-vector operations, no horizontal sum;
//   3. Oᵀ (d_v, G) = alpha · Oᵀ + V_tileᵀ (d_v, nt) · P (nt, G): `panel_update`, kRows value
//      columns × 2 vectors, the rescale folded into the load of the accumulators.
// The queries are packed once per block (scale folded in), the outputs transposed back once.
// Keys and values are read where they lie: MHA mode's decompressed rows (one block per head),
// MQA mode's cache tiles.

#include "07_optimized_mla/kernels/mla_prefill.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include <cblas.h>

#include "04_low_rank_latents/latent.hpp"
#include "05_absorption/absorption.hpp"
#include "07_optimized_mla/kernels/flash_decoding.hpp"
#include "07_optimized_mla/kernels/mla_blas.hpp"
#include "07_optimized_mla/kernels/transpose.hpp"
#include "mla/parallel.hpp"
#include "mla/random.hpp"

namespace mla::ch07 {

namespace {

using V = xsimd::batch<float>;
constexpr std::size_t W = V::size;  // floats per vector: 4 (SSE), 8 (AVX2), 16 (AVX-512)
constexpr std::size_t G = 2 * W;    // query rows per block: two vectors of lanes
// Rows (keys, or value columns) per micro-kernel: 2·kRows accumulators + 2 loaded vectors + 1
// broadcast. With AVX-512 (32 registers) 8 rows: 16 accumulators, enough independent FMA chains
// for two full-width FMA units of latency 4, and 8 divides the 64-key tile and DeepSeek's value
// widths (128, 512), so no tail micro-kernel runs (12 rows, 24 accumulators, left a 4-key and an
// 8-column tail and measured about 10% slower on the MHA-mode attention). With AVX2's (and SSE's)
// 16 registers 6 rows: 15 of them.
constexpr int kRows = W >= 16 ? 8 : 6;
constexpr std::size_t kKeyTile = LatentCache::kTileTokens;  // keys per tile: the cache's tiles
using AlignedVec = std::vector<float, xsimd::aligned_allocator<float, 64>>;

std::size_t round_up(std::size_t n, std::size_t m) {
  return (n + m - 1) / m * m;
}

// c (R, G) = a (R rows of lda floats, first K used) · panel (K, G): R rows × two vectors of
// accumulators; per k, R broadcasts and two vector loads for 2R FMAs. c rows at c + r·ldc, any
// alignment. The scores (a = keys, panel = packed queries) and the decompression (a = latents,
// panel = packed kv_b_proj) are both this product.
template <int R>
inline void rows_times_panel(const float* a, std::size_t lda, const float* panel, std::size_t K,
                             float* c, std::size_t ldc) {
  V acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = V(0.0f);
  for (std::size_t k = 0; k < K; ++k) {
    const V p0 = V::load_aligned(panel + k * G), p1 = V::load_aligned(panel + k * G + W);
    for (int r = 0; r < R; ++r) {
      const V ar(a[r * lda + k]);
      acc0[r] = xsimd::fma(ar, p0, acc0[r]);
      acc1[r] = xsimd::fma(ar, p1, acc1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    acc0[r].store_unaligned(c + r * ldc);
    acc1[r].store_unaligned(c + r * ldc + W);
  }
}

// ot (R, G) = alpha · ot + Σ_t v[t][0..R) ⊗ p[t] over nt rows: R value columns (row stride
// ldv between tokens) × two vectors of query lanes. ot: (R, G) aligned, p: (nt, G) aligned.
template <int R>
inline void panel_update(float* ot, const float* p, const float* v, std::size_t ldv, std::size_t nt,
                         V al0, V al1) {
  V acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) {
    acc0[r] = V::load_aligned(ot + r * G) * al0;
    acc1[r] = V::load_aligned(ot + r * G + W) * al1;
  }
  for (std::size_t t = 0; t < nt; ++t) {
    const V p0 = V::load_aligned(p + t * G), p1 = V::load_aligned(p + t * G + W);
    for (int r = 0; r < R; ++r) {
      const V vr(v[t * ldv + r]);
      acc0[r] = xsimd::fma(vr, p0, acc0[r]);
      acc1[r] = xsimd::fma(vr, p1, acc1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    acc0[r].store_aligned(ot + r * G);
    acc1[r].store_aligned(ot + r * G + W);
  }
}

// The micro-kernels for n < R rows (a tile's or a row's tail), chosen at run time.
template <int R>
void rows_times_panel_n(std::size_t n, const float* a, std::size_t lda, const float* panel,
                        std::size_t K, float* c, std::size_t ldc) {
  if constexpr (R > 0) {
    if (n == R) return rows_times_panel<R>(a, lda, panel, K, c, ldc);
    rows_times_panel_n<R - 1>(n, a, lda, panel, K, c, ldc);
  }
}

template <int R>
void panel_update_n(std::size_t n, float* ot, const float* p, const float* v, std::size_t ldv,
                    std::size_t nt, V al0, V al1) {
  if constexpr (R > 0) {
    if (n == R) return panel_update<R>(ot, p, v, ldv, nt, al0, al1);
    panel_update_n<R - 1>(n, ot, p, v, ldv, nt, al0, al1);
  }
}

// One part of a query row: `width` numbers at base + row·stride, going to columns
// [col, col + width) of the key rows it is multiplied with.
struct QueryPart {
  const float* base;
  std::size_t stride, width, col;
};

// A causal attention of `rows` query rows against shared key tiles (what both modes are).
struct FlashProblem {
  std::size_t rows = 0;          // query rows
  std::size_t d_k = 0;           // numbers of a key row the scores read (padding included)
  std::size_t d_v = 0;           // value width
  std::size_t ldk = 0;           // floats from one key row to the next within a tile
  std::size_t v_off = 0;         // a key row's value starts at row + v_off
  QueryPart part[2] = {};        // the query, in two parts
  float scale = 1.0f;            // softmax scale, folded into the packed queries
  std::size_t pos0 = 0;          // row r sits at position pos0 + r / rows_per_pos and sees the
  std::size_t rows_per_pos = 1;  // keys 0 .. that position
  float* out = nullptr;          // row r's output (d_v) at out + r·out_stride
  std::size_t out_stride = 0;
};

// Query blocks per item: kBlocks blocks of G rows take each key tile in turn while it is in L2,
// so a tile comes from the last-level cache (or memory) once per kBlocks · G query rows. At
// T + S = 8,192 tokens one head's keys and values are 10 MiB: without the sharing every block of
// 32 queries streams them from L3, which other programs on the machine share.
constexpr std::size_t kBlocks = 2;

// Per-thread scratch, grown to the largest problem seen and kept.
struct FlashScratch {
  AlignedVec q;   // (kBlocks, d_k, G) packed queries, rows in lanes
  AlignedVec s;   // (kKeyTile, G) scores, then probabilities (one block at a time)
  AlignedVec ot;  // (kBlocks, round_up(d_v, kRows), G) output accumulators, transposed
};

FlashScratch& flash_scratch() {
  static thread_local FlashScratch ws;
  return ws;
}

void grow(AlignedVec& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
}

// One block of G query rows [r0, r0 + nr) and its running softmax.
struct RowBlock {
  std::size_t r0 = 0, nr = 0;
  float *Q = nullptr, *Ot = nullptr;  // (d_k, G) packed queries, (dv_pad, G) accumulators
  V lim0, lim1;                       // per lane: keys [0, limit) are visible
  std::size_t first_limit = 0;        // the block's first row's limit: no mask below it
  std::size_t keys = 0;               // the block's last row's limit: no key at or past it is read
  V m0 = V(kNegInf), m1 = V(kNegInf), l0 = V(0.0f), l1 = V(0.0f);

  // Pack the queries (scaled; zero in padding columns and in lanes past the rows, whose scores
  // are then 0: finite, and never written out), zero the accumulators, set the limits.
  void init(const FlashProblem& fp, std::size_t row0, float* q, float* ot, std::size_t dv_pad) {
    r0 = row0;
    nr = std::min(G, fp.rows - r0);
    Q = q;
    Ot = ot;
    std::fill(Q, Q + fp.d_k * G, 0.0f);
    for (const QueryPart& qp : fp.part)  // (nr, width) rows → (width, G) panel columns
      transpose_scaled(qp.base + r0 * qp.stride, qp.stride, nr, qp.width, Q + qp.col * G, G,
                       fp.scale);
    std::fill(Ot, Ot + dv_pad * G, 0.0f);
    // Lane l sees keys [0, position + 1); lanes past the rows get the last row's limit.
    alignas(64) float lim[G];
    for (std::size_t l = 0; l < G; ++l) {
      lim[l] = static_cast<float>(fp.pos0 + (r0 + std::min(l, nr - 1)) / fp.rows_per_pos + 1);
    }
    lim0 = V::load_aligned(lim);
    lim1 = V::load_aligned(lim + W);
    first_limit = static_cast<std::size_t>(lim[0]);
    keys = static_cast<std::size_t>(lim[nr - 1]);
  }

  // The key tile starting at key k0 (rows kt, its first nt keys) for this block; S: scratch.
  void step(const FlashProblem& fp, const float* kt, std::size_t k0, std::size_t nt, float* S) {
    // 1. scores
    for (std::size_t t = 0; t < nt; t += kRows) {
      rows_times_panel_n<kRows>(std::min<std::size_t>(kRows, nt - t), kt + t * fp.ldk, fp.ldk, Q,
                                fp.d_k, S + t * G, G);
    }
    // 2. mask (only where some lane's limit falls inside this tile), online softmax per lane.
    //    Every lane sees key 0, so after the first tile no running max is −inf.
    V mt0(kNegInf), mt1(kNegInf);
    const bool mask = k0 + nt > first_limit;
    for (std::size_t t = 0; t < nt; ++t) {
      V s0 = V::load_aligned(S + t * G), s1 = V::load_aligned(S + t * G + W);
      if (mask) {
        const V key(static_cast<float>(k0 + t));
        s0 = xsimd::select(key < lim0, s0, V(kNegInf));
        s1 = xsimd::select(key < lim1, s1, V(kNegInf));
        s0.store_aligned(S + t * G);
        s1.store_aligned(S + t * G + W);
      }
      mt0 = xsimd::max(mt0, s0);
      mt1 = xsimd::max(mt1, s1);
    }
    const V mn0 = xsimd::max(m0, mt0), mn1 = xsimd::max(m1, mt1);
    const V al0 = rescale_factor(m0, mn0), al1 = rescale_factor(m1, mn1);
    V sum0(0.0f), sum1(0.0f);
    for (std::size_t t = 0; t < nt; ++t) {
      const V e0 = xsimd::exp(V::load_aligned(S + t * G) - mn0);
      const V e1 = xsimd::exp(V::load_aligned(S + t * G + W) - mn1);
      e0.store_aligned(S + t * G);
      e1.store_aligned(S + t * G + W);
      sum0 += e0;
      sum1 += e1;
    }
    l0 = l0 * al0 + sum0;
    l1 = l1 * al1 + sum1;
    m0 = mn0;
    m1 = mn1;
    // 3. weighted sum
    for (std::size_t j = 0; j < fp.d_v; j += kRows) {
      panel_update_n<kRows>(std::min<std::size_t>(kRows, fp.d_v - j), Ot + j * G, S,
                            kt + fp.v_off + j, fp.ldk, nt, al0, al1);
    }
  }

  // Out: row r0 + l = Oᵀ[:, l] / l_l.
  void finish(const FlashProblem& fp) const {
    alignas(64) float inv[G];
    (V(1.0f) / l0).store_aligned(inv);
    (V(1.0f) / l1).store_aligned(inv + W);
    for (std::size_t l = 0; l < nr; ++l) {
      float* o = fp.out + (r0 + l) * fp.out_stride;
      for (std::size_t j = 0; j < fp.d_v; ++j) o[j] = Ot[j * G + l] * inv[l];
    }
  }
};

// Rows [r0, r0 + kBlocks·G) of the problem (those < rows) against every key tile they see, in
// blocks of G rows that take each tile in turn. tile(i) returns tile i's first key row
// (kKeyTile rows of ldk floats; rows past the last key are never read).
template <class Tiles>
void flash_rows(const FlashProblem& fp, Tiles&& tile, std::size_t r0) {
  const std::size_t dv_pad = round_up(fp.d_v, kRows);
  const std::size_t nb = std::min(kBlocks, (fp.rows - r0 + G - 1) / G);
  FlashScratch& ws = flash_scratch();
  grow(ws.q, kBlocks * fp.d_k * G);
  grow(ws.s, kKeyTile * G);
  grow(ws.ot, kBlocks * dv_pad * G);
  RowBlock blocks[kBlocks];
  std::size_t keys = 0;
  for (std::size_t b = 0; b < nb; ++b) {
    blocks[b].init(fp, r0 + b * G, ws.q.data() + b * fp.d_k * G, ws.ot.data() + b * dv_pad * G,
                   dv_pad);
    keys = std::max(keys, blocks[b].keys);
  }
  for (std::size_t k0 = 0, i = 0; k0 < keys; k0 += kKeyTile, ++i) {
    const float* kt = tile(i);
    for (std::size_t b = 0; b < nb; ++b) {
      if (k0 >= blocks[b].keys) continue;  // past this block's last query
      blocks[b].step(fp, kt, k0, std::min(kKeyTile, blocks[b].keys - k0), ws.s.data());
    }
  }
  for (std::size_t b = 0; b < nb; ++b) blocks[b].finish(fp);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// FLOPs
// ---------------------------------------------------------------------------------------------

double causal_pairs(std::size_t S, std::size_t T) {
  const double s = static_cast<double>(S), t = static_cast<double>(T);
  return s * t + s * (s + 1) / 2;
}

double decompress_flops(const PrefillDims& d, std::size_t n) {
  return 2.0 * double(n) * double(d.d_c) * double(d.heads) * double(d.d_nope + d.d_v);
}

double mha_attention_flops(const PrefillDims& d, std::size_t S, std::size_t T) {
  return 2.0 * causal_pairs(S, T) * double(d.heads) * double(d.d_qk() + d.d_v);
}

double mqa_attention_flops(const PrefillDims& d, std::size_t S, std::size_t T) {
  return 2.0 * causal_pairs(S, T) * double(d.heads) * double(2 * d.d_c + d.d_r);
}

double absorb_flops(const PrefillDims& d, std::size_t S) {
  return 2.0 * double(S) * double(d.heads) * double(d.d_c) * double(d.d_nope + d.d_v);
}

// ---------------------------------------------------------------------------------------------
// MHA mode
// ---------------------------------------------------------------------------------------------

PackedKvUp::PackedKvUp(const float* kv_b_proj, const PrefillDims& d)
    : dims_(d), panels_((d.d_nope + d.d_v + G - 1) / G) {
  const std::size_t per_head = d.d_nope + d.d_v;
  data_.assign(d.heads * panels_ * d.d_c * G, 0.0f);
  for (std::size_t h = 0; h < d.heads; ++h) {
    for (std::size_t j = 0; j < per_head; ++j) {
      const float* w = kv_b_proj + (h * per_head + j) * d.d_c;  // output column j of head h
      float* panel = data_.data() + (h * panels_ + j / G) * d.d_c * G + j % G;
      for (std::size_t c = 0; c < d.d_c; ++c) panel[c * G] = w[c];
    }
  }
}

const float* PackedKvUp::panel(std::size_t h, std::size_t p) const {
  return data_.data() + (h * panels_ + p) * dims_.d_c * G;
}

void decompress_kv(const LatentCache& cache, std::size_t n, const PackedKvUp& w, int threads,
                   MhaKv& out) {
  const PrefillDims& d = w.dims();
  if (cache.type() != CacheType::F32 || cache.d_c() != d.d_c || cache.d_r() != d.d_r) {
    throw std::invalid_argument("decompress_kv: needs an fp32 cache of d_c " +
                                std::to_string(d.d_c) + ", d_r " + std::to_string(d.d_r));
  }
  if (n > cache.size()) throw std::invalid_argument("decompress_kv: more tokens than cached");
  out.dims_ = d;
  out.tokens_ = n;
  // Row: [k_rope | k_nope | v | room for the last panel's spill]: the micro-kernel writes whole
  // panels of G columns, the last one partly into the padding.
  out.ld_ = round_up(d.d_r + w.panels() * G, 16);
  if (out.data_.size() < d.heads * n * out.ld_) out.data_.resize(d.heads * n * out.ld_);
  const std::size_t tiles = cache.tiles(), stride = cache.stride(), ld = out.ld_;
  // Items (tile, head): every item writes its own rows, reads one tile and one head's panels.
  parallel_for(static_cast<long>(tiles * d.heads), threads, [&](long item) {
    const std::size_t i = static_cast<std::size_t>(item) / d.heads;
    const std::size_t h = static_cast<std::size_t>(item) % d.heads;
    const std::size_t t0 = i * kKeyTile, nt = std::min(kKeyTile, n - std::min(n, t0));
    if (nt == 0) return;
    const float* c = cache.tile_f32(i);  // (kKeyTile, stride): [c_kv | pad | k_rope | pad]
    float* rows = out.data_.data() + (h * n + t0) * ld;
    for (std::size_t p = 0; p < w.panels(); ++p) {
      for (std::size_t t = 0; t < nt; t += kRows) {
        rows_times_panel_n<kRows>(std::min<std::size_t>(kRows, nt - t), c + t * stride, stride,
                                  w.panel(h, p), d.d_c, rows + t * ld + d.d_r + p * G, ld);
      }
    }
    for (std::size_t t = 0; t < nt; ++t) {
      std::copy_n(c + t * stride + cache.lat_stride(), d.d_r, rows + t * ld);
    }
  });
}

void mha_prefill(const MhaKv& kv, const float* q, std::size_t S, std::size_t start, float scale,
                 float* out, int threads) {
  const PrefillDims& d = kv.dims();
  if (start + S > kv.tokens()) {
    throw std::invalid_argument("mha_prefill: queries up to position " + std::to_string(start + S) +
                                " but " + std::to_string(kv.tokens()) + " keys decompressed");
  }
  if (S == 0) return;
  const std::size_t H = d.heads, d_qk = d.d_qk(), blocks = (S + kBlocks * G - 1) / (kBlocks * G);
  // Items head-major: the threads work on the same head's keys at the same time (they share
  // them in the last-level cache).
  parallel_for(static_cast<long>(H * blocks), threads, [&](long item) {
    const std::size_t h = static_cast<std::size_t>(item) / blocks;
    const std::size_t b = static_cast<std::size_t>(item) % blocks;
    FlashProblem fp;
    fp.rows = S;
    fp.d_k = d_qk;
    fp.d_v = d.d_v;
    fp.ldk = kv.ld();
    fp.v_off = d_qk;
    // Key rows are [k_rope | k_nope]: q_rope goes to columns 0..d_r, q_nope after it.
    fp.part[0] = {q + h * d_qk, H * d_qk, d.d_nope, d.d_r};
    fp.part[1] = {q + h * d_qk + d.d_nope, H * d_qk, d.d_r, 0};
    fp.scale = scale;
    fp.pos0 = start;
    fp.rows_per_pos = 1;
    fp.out = out + h * d.d_v;
    fp.out_stride = H * d.d_v;
    const float* kh = kv.head(h);
    const std::size_t ld = kv.ld();
    flash_rows(
        fp, [&](std::size_t i) { return kh + i * kKeyTile * ld; }, b * kBlocks * G);
  });
}

void mha_prefill_blas(const MhaKv& kv, const float* q, std::size_t S, std::size_t start,
                      float scale, float* out, int threads) {
  const PrefillDims& d = kv.dims();
  if (start + S > kv.tokens()) throw std::invalid_argument("mha_prefill_blas: too few keys");
  if (S == 0) return;
  set_blas_threads(threads);
  const std::size_t H = d.heads, d_qk = d.d_qk(), N = start + S, ld = kv.ld();
  std::vector<float> qh(S * d_qk), P(S * N), oh(S * d.d_v);
  const int iS = static_cast<int>(S), iN = static_cast<int>(N), iK = static_cast<int>(d_qk);
  for (std::size_t h = 0; h < H; ++h) {
    for (std::size_t i = 0; i < S; ++i) {  // [q_rope | q_nope], the key rows' order
      const float* src = q + (i * H + h) * d_qk;
      std::copy_n(src + d.d_nope, d.d_r, qh.data() + i * d_qk);
      std::copy_n(src, d.d_nope, qh.data() + i * d_qk + d.d_r);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, iS, iN, iK, scale, qh.data(), iK,
                kv.head(h), static_cast<int>(ld), 0.0f, P.data(), iN);
    // The causal mask and the softmax of each row (on this thread: see mla_blas.cpp on OpenMP
    // threads fighting OpenBLAS's), SIMD exponentials.
    for (std::size_t i = 0; i < S; ++i) {
      float* row = P.data() + i * N;
      const std::size_t visible = start + i + 1;
      softmax_row(row, visible);
      std::fill(row + visible, row + N, 0.0f);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, iS, static_cast<int>(d.d_v), iN, 1.0f,
                P.data(), iN, kv.head(h) + d_qk, static_cast<int>(ld), 0.0f, oh.data(),
                static_cast<int>(d.d_v));
    for (std::size_t i = 0; i < S; ++i) {
      std::copy_n(oh.data() + i * d.d_v, d.d_v, out + (i * H + h) * d.d_v);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// MQA mode
// ---------------------------------------------------------------------------------------------

void mqa_prefill(const LatentCache& cache, std::size_t heads, const float* q_lat,
                 const float* q_rope, std::size_t S, std::size_t start, float scale, float* out,
                 int threads) {
  if (cache.type() != CacheType::F32) {
    throw std::invalid_argument("mqa_prefill: needs an fp32 cache");
  }
  if (start + S > cache.size()) {
    throw std::invalid_argument("mqa_prefill: queries up to position " + std::to_string(start + S) +
                                " but only " + std::to_string(cache.size()) + " tokens cached");
  }
  if (S == 0 || heads == 0) return;
  // Rows (query i, head h) = row i·H + h: the layout of q_lat, q_rope and out, and G of them
  // share every tile of the cache.
  FlashProblem fp;
  fp.rows = S * heads;
  fp.d_k = cache.stride();  // [c_kv | pad | k_rope | pad]
  fp.d_v = cache.d_c();
  fp.ldk = cache.stride();
  fp.v_off = 0;
  fp.part[0] = {q_lat, cache.d_c(), cache.d_c(), 0};
  fp.part[1] = {q_rope, cache.d_r(), cache.d_r(), cache.lat_stride()};
  fp.scale = scale;
  fp.pos0 = start;
  fp.rows_per_pos = heads;
  fp.out = out;
  fp.out_stride = cache.d_c();
  const std::size_t blocks = (fp.rows + kBlocks * G - 1) / (kBlocks * G);
  parallel_for(static_cast<long>(blocks), threads, [&](long b) {
    flash_rows(
        fp, [&](std::size_t i) { return cache.tile_f32(i); },
        static_cast<std::size_t>(b) * kBlocks * G);
  });
}

// ---------------------------------------------------------------------------------------------
// The switch
// ---------------------------------------------------------------------------------------------

std::string prefill_mode_name(PrefillMode m) {
  return m == PrefillMode::MHA ? "mha" : "mqa";
}

PrefillChoice choose_prefill_mode(const PrefillDims& d, std::size_t S, std::size_t T,
                                  const PrefillRates& r) {
  if (r.decompress <= 0 || r.mha <= 0 || r.mqa <= 0 || r.absorb <= 0) {
    throw std::invalid_argument("choose_prefill_mode: every rate must be positive");
  }
  PrefillChoice c;
  c.mha_seconds = decompress_flops(d, T + S) / (r.decompress * 1e9) +
                  mha_attention_flops(d, S, T) / (r.mha * 1e9);
  c.mqa_seconds =
      absorb_flops(d, S) / (r.absorb * 1e9) + mqa_attention_flops(d, S, T) / (r.mqa * 1e9);
  c.mode = c.mha_seconds < c.mqa_seconds ? PrefillMode::MHA : PrefillMode::MQA;
  return c;
}

std::size_t prefill_crossover(const PrefillDims& d, std::size_t T, const PrefillRates& r,
                              std::size_t max_S) {
  // MHA's advantage grows with S (its extra cost, the decompression of T tokens, is shared by
  // the chunk): bisect for the first S where it wins.
  if (choose_prefill_mode(d, max_S, T, r).mode != PrefillMode::MHA) return 0;
  std::size_t lo = 0, hi = max_S;  // MQA at lo (or lo = 0), MHA at hi
  while (hi - lo > 1) {
    const std::size_t mid = lo + (hi - lo) / 2;
    (choose_prefill_mode(d, mid, T, r).mode == PrefillMode::MHA ? hi : lo) = mid;
  }
  return hi;
}

PrefillRates calibrated_prefill_rates(const PrefillDims& d, int threads) {
  static std::mutex mu;
  static std::map<std::tuple<std::size_t, std::size_t, std::size_t, std::size_t, std::size_t, int>,
                  PrefillRates>
      known;
  const auto key = std::make_tuple(d.heads, d.d_c, d.d_r, d.d_nope, d.d_v, threads);
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = known.find(key); it != known.end()) return it->second;

  // A chunk of 256 after 256 tokens: big enough for every kernel to reach its pace, small
  // enough to take some tens of ms at DeepSeek's widths.
  const std::size_t S = 256, T = 256, N = S + T, H = d.heads;
  Rng rng(kDefaultSeed);
  std::vector<float> c_kv(N * d.d_c), k_rope(N * d.d_r), wkv(H * (d.d_nope + d.d_v) * d.d_c);
  for (float& x : c_kv) x = rng.normal();
  for (float& x : k_rope) x = rng.normal();
  for (float& x : wkv) x = 0.05f * rng.normal();
  LatentCache cache(d.d_c, d.d_r);
  cache.append(c_kv.data(), k_rope.data(), N);
  const PackedKvUp w(wkv.data(), d);
  MhaKv kv;
  std::vector<float> q(S * H * d.d_qk()), ql(S * H * d.d_c), qr(S * H * d.d_r);
  std::vector<float> out(S * H * std::max(d.d_c, d.d_v));
  for (float& x : q) x = rng.normal();
  for (float& x : ql) x = rng.normal();
  for (float& x : qr) x = rng.normal();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.d_qk()));
  // Best of 5 runs of each (the first also warms the scratch buffers): on a shared machine a
  // run in a few loses a core for a while.
  auto best = [](auto&& fn) {
    double b = std::numeric_limits<double>::infinity();
    for (int rep = 0; rep < 5; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      b = std::min(b, seconds_since(t0));
    }
    return b;
  };
  PrefillRates r;
  r.decompress =
      decompress_flops(d, N) / 1e9 / best([&] { decompress_kv(cache, N, w, threads, kv); });
  r.mha = mha_attention_flops(d, S, T) / 1e9 /
          best([&] { mha_prefill(kv, q.data(), S, T, scale, out.data(), threads); });
  r.mqa = mqa_attention_flops(d, S, T) / 1e9 / best([&] {
            mqa_prefill(cache, H, ql.data(), qr.data(), S, T, scale, out.data(), threads);
          });
  // Absorbing the queries and expanding the outputs as the layer does it (chapter 5's
  // absorb_query and expand_output: one OpenBLAS GEMM per head each).
  Mat wm = xt::empty<float>({H * (d.d_nope + d.d_v), d.d_c});
  std::copy(wkv.begin(), wkv.end(), wm.data());
  const ch04::KvUp up = ch04::split_kv_up(wm, H, d.d_nope, d.d_v);
  const Mat q_nope = rng.normal(S * H, d.d_nope), o_lat = rng.normal(S * H, d.d_c);
  set_blas_threads(threads);
  r.absorb = absorb_flops(d, S) / 1e9 / best([&] {
               const Mat a = ch05::absorb_query(q_nope, up.W_uk, H);
               const Mat b = ch05::expand_output(o_lat, up.W_uv, H);
               (void)a;
               (void)b;
             });
  known[key] = r;
  return r;
}

}  // namespace mla::ch07
