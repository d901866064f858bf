// The absorbed MLA decode step, one layer, in versions of increasing complexity and decreasing
// running time. Every version is checked against version 1 (tests, ch07_optimized_mla, mla_bench)
// before it is timed. Each version's section below holds what that version adds over the one
// before it; what the fused versions share with the MHA baseline (SIMD dot product, online
// softmax, log-sum-exp combine, chunking) is in flash_decoding.hpp.
//
// version 1 is the scalar reference: for each (sequence, head): every score, a softmax, then the
//           weighted sum of the latents. Three passes over the cache per head, one float at a time.
// version 2 vectorizes v1's two inner loops with xsimd: dot products with four independent
//           accumulators (an FMA's latency is hidden by the other three) and a SIMD weighted sum.
// version 3 fuses the three passes into one (flash-decoding's online softmax): the cache is read
//           tile by tile from the kernel layout (LatentCache), a tile's scores stay in an L1
//           buffer, and a running max / running sum rescale the partial output as tiles arrive.
//           Four tokens share each query load (eight FMA chains in flight).
// version 4 blocks heads: each tile of the cache is loaded once for a block of up to 64 heads,
//           and two register-blocked micro-kernels (12 accumulators each: 6 tokens × 16 heads
//           for the scores and 6 latent columns × 16 heads for the weighted sum with AVX2, 12 × 16
//           with AVX-512) turn the work into two small matrix products that run at the FMA units'
//           speed. One thread.
// version 5 splits the work over threads: items (sequence, head block, chunk of the cache), each
//           computing a partial softmax (max, sum, unnormalized output) that a log-sum-exp combine
//           merges. Below 8 heads (one AVX2 vector, half an AVX-512 one) a head block would be
//           mostly padding, so items run v3's per-head tiles instead: that regime is
//           memory-bound anyway.
// version 6 is v5 on a bf16 cache: half the bytes per cached number, every sum still in float.
//           It pays where the step is memory-bound (few heads, long contexts). Where the CPU has
//           AVX512_BF16, the per-head path computes its scores with vdpbf16ps.
// version 7 is v5 on an FP8 cache in DeepSeek-V3.2's layout: the latent as e4m3 codes with a
//           power-of-two scale per 128 numbers, the rope key in bf16 (656 bytes a token instead of
//           1,152 in bf16). The head-blocked path dequantizes each tile once into floats
//           (through F16C) for v5's micro-kernels; the per-head path fuses dequantization into
//           its dot products and weighted sums (codes widened in registers, the per-128 scale
//           applied to partial sums). Fewer bytes where the step is memory-bound, the
//           dequantization's cost where it is compute-bound.
// version 8 is v5 with the loops of a sequence turned around: a work item is a chunk of the cache,
//           and every head block it holds (as many as fit this core's L2) runs over each tile
//           while the tile is in L2; one group of heads meets every token of a tile before the
//           next group's queries load. (Measured: no faster than v5 on a Zen 4; see its section.)
// version 9 is v8 on a bf16 cache (a tile widened once per pass, not once per head block).
// version 10 is v5 whose path for fewer than 16 heads keeps all the heads of an item in registers
//           at once (scores: tokens × heads filling the register file, summed across lanes by one
//           transpose-and-add; weighted sum: heads × latent columns, stored once per tile; the
//           next tile asked for at a steady pace over both), and whose head-blocked path asks
//           for the next tile while it scores this one (v12's prefetch, on the fp32 cache).
//           Version 11 is v6 with v10's few-heads path.
// version 12 is v11 without the widened tile: the head-blocked micro-kernels read the bf16 tile
//           as cached, a pair of numbers per 32-bit load widened in registers, and the next tile
//           is prefetched, a line per step of the scores. As fast as v5 (fp32) or faster on a
//           Zen 4 (0.95-1.20x), 83-96% of its FMA peak at 16 to 128 heads.
// version 13 is v7 with v10's few-heads path on its FP8 codes: below 16 heads each 64 codes are
//           widened once for all the heads of an item (v7 widens them once per head), and the
//           head blocks prefetch the next tile. 1.4-2.0x v7 at 4 to 12 heads on a Zen 4.
//
// v3's to v5's code is written for a cache element type Elem (float); v6 supplies the bf16
// versions of the three places where the element type matters (a tile's view, a widened row, a
// widened tile) and of the per-head scores, in its own section; v12 the bf16 version of the
// micro-kernels' broadcast (a pair of numbers per load), in its own.

#include "07_optimized_mla/kernels/mla_decode.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#if defined(__unix__)
#include <unistd.h>
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "07_optimized_mla/kernels/bf16.hpp"
#include "07_optimized_mla/kernels/flash_decoding.hpp"
#include "07_optimized_mla/kernels/fp8.hpp"
#include "07_optimized_mla/kernels/transpose.hpp"
#include "mla/parallel.hpp"
#include "mla/rows.hpp"
#include "mla/tensor.hpp"

namespace mla::ch07 {

namespace {

using V = xsimd::batch<float>;
constexpr std::size_t W = V::size;  // floats per SIMD register: 4 (SSE), 8 (AVX2), 16 (AVX-512)
using AlignedVec = std::vector<float, xsimd::aligned_allocator<float, 64>>;
constexpr std::size_t kTile = LatentCache::kTileTokens;

std::size_t round_up(std::size_t n, std::size_t m) {
  return (n + m - 1) / m * m;
}

// Per-thread scratch buffers grow to the largest size asked and stay (no allocation per step).
void grow(AlignedVec& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
}

void check_args(const DecodeArgs& a) {
  if (a.heads == 0 || a.d_c == 0)
    throw std::invalid_argument("mla_decode: heads and d_c must be > 0");
  if (a.batch > 0 && (!a.q_lat || !a.out || (a.d_r > 0 && !a.q_rope))) {
    throw std::invalid_argument("mla_decode: null query or output");
  }
}

void check_seqs(const SeqRef* seqs, const DecodeArgs& a, CacheType type) {
  check_args(a);
  for (std::size_t b = 0; b < a.batch; ++b) {
    const LatentCache* c = seqs[b].cache;
    if (!c || c->d_c() != a.d_c || c->d_r() != a.d_r || c->type() != type ||
        seqs[b].length > c->size()) {
      throw std::invalid_argument(
          "mla_decode: sequence " + std::to_string(b) +
          " has no cache, a cache of other widths or type, or a length beyond its size");
    }
  }
}

}  // namespace

// ============================================================================================
// version 1: the scalar reference
// ============================================================================================

void mla_decode_v1(const float* cache, std::size_t T, const DecodeArgs& a) {
  check_args(a);
  const std::size_t H = a.heads, d_c = a.d_c, d_r = a.d_r, D = d_c + d_r;
  std::vector<float> p(T);  // scores, then probabilities, of one (sequence, head)
  for (std::size_t b = 0; b < a.batch; ++b) {
    const RowView<const float> C(cache + b * T * D, T, D);  // (T, D) rows [c_kv | k_rope]
    for (std::size_t h = 0; h < H; ++h) {
      const float* ql = a.q_lat + (b * H + h) * d_c;   // (d_c)
      const float* qr = a.q_rope + (b * H + h) * d_r;  // (d_r)
      for (std::size_t t = 0; t < T; ++t) {
        const float* row = C.row(t);
        float s = 0.0f;
        for (std::size_t k = 0; k < d_c; ++k) s += ql[k] * row[k];        // content
        for (std::size_t k = 0; k < d_r; ++k) s += qr[k] * row[d_c + k];  // position
        p[t] = a.scale * s;
      }
      mla::softmax(p.data(), T);
      float* o = a.out + (b * H + h) * d_c;  // (d_c) = Σ_t p_t · c_t
      std::fill(o, o + d_c, 0.0f);
      for (std::size_t t = 0; t < T; ++t) {
        const float* row = C.row(t);
        for (std::size_t j = 0; j < d_c; ++j) o[j] += p[t] * row[j];
      }
    }
  }
}

// ============================================================================================
// version 2: SIMD dot products and weighted sums
// ============================================================================================
// v1's two inner loops become dot_simd (four accumulators) and axpy_simd, from
// flash_decoding.hpp (exercise 7.1 is dot_simd).

void mla_decode_v2(const float* cache, std::size_t T, const DecodeArgs& a) {
  check_args(a);
  const std::size_t H = a.heads, d_c = a.d_c, d_r = a.d_r, D = d_c + d_r;
  std::vector<float> p(T);
  for (std::size_t b = 0; b < a.batch; ++b) {
    const RowView<const float> C(cache + b * T * D, T, D);
    for (std::size_t h = 0; h < H; ++h) {
      const float* ql = a.q_lat + (b * H + h) * d_c;
      const float* qr = a.q_rope + (b * H + h) * d_r;
      for (std::size_t t = 0; t < T; ++t) {
        p[t] = a.scale * (dot_simd(ql, C.row(t), d_c) + dot_simd(qr, C.row(t) + d_c, d_r));
      }
      mla::softmax(p.data(), T);
      float* o = a.out + (b * H + h) * d_c;
      std::fill(o, o + d_c, 0.0f);
      for (std::size_t t = 0; t < T; ++t) axpy_simd(p[t], C.row(t), o, d_c);
    }
  }
}

// ============================================================================================
// version 3: one pass per head over the tiled cache, online softmax
// ============================================================================================

namespace {

// Tiles of a sequence that attends to its first `length` tokens, and the tokens in tile i.
std::size_t tiles_of(std::size_t length) {
  return (length + kTile - 1) / kTile;
}
std::size_t tile_tokens(std::size_t length, std::size_t i) {
  return std::min(kTile, length - i * kTile);
}

// Tile i of a cache, its first nt rows: (nt, stride) cache numbers. v6 adds the bf16 version.
template <class Elem>
RowView<const Elem> cache_tile(const LatentCache& c, std::size_t i, std::size_t nt);
template <>
RowView<const float> cache_tile<float>(const LatentCache& c, std::size_t i, std::size_t nt) {
  return {c.tile_f32(i), nt, c.stride(), c.stride()};
}

// One SIMD vector of a tile's row as floats: an aligned load; v6 widens bf16 (defined there).
inline V load_row(const float* p) {
  return V::load_aligned(p);
}
inline V load_row(const std::uint16_t* p);

// The running softmax of one head, and its accumulated output acc = Σ exp(s_t - m)·c_t.
struct HeadState {
  OnlineSoftmax sm;
  float* acc = nullptr;  // (lat_stride)
};

// Pack one head's query like a cache row: q (stride) = scale · [q_lat | 0 | q_rope | 0], so a
// score is one dot product over the whole padded row and the scale is paid once, not per token.
void pack_query_row(const float* q_lat, const float* q_rope, const DecodeArgs& a,
                    std::size_t lat_stride, std::size_t stride, float* q) {
  std::fill(q, q + stride, 0.0f);
  for (std::size_t k = 0; k < a.d_c; ++k) q[k] = a.scale * q_lat[k];
  for (std::size_t k = 0; k < a.d_r; ++k) q[lat_stride + k] = a.scale * q_rope[k];
}

// Scores of one head against one tile: s[t] = q · row t; returns their maximum.
// tile: (nt, stride) of Elem; q: (stride), 64-byte aligned; s: (kTileTokens).
template <class Elem>
float tile_scores(RowView<const Elem> tile, const float* q, float* s) {
  // Scores: four tokens at a time, two accumulators each. Eight independent FMA chains keep
  // both FMA units busy (one chain per token would wait 4 cycles per FMA), and each query
  // vector is loaded once for four rows. Rows and q are padded to whole vectors: no tails.
  const std::size_t nt = tile.rows(), stride = tile.cols();
  float tile_max = kNegInf;
  std::size_t t = 0;
  for (; t + 4 <= nt; t += 4) {
    const Elem *r0 = tile.row(t), *r1 = tile.row(t + 1), *r2 = tile.row(t + 2),
               *r3 = tile.row(t + 3);
    V a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f), b0(0.0f), b1(0.0f), b2(0.0f), b3(0.0f);
    std::size_t k = 0;
    for (; k + 2 * W <= stride; k += 2 * W) {
      const V qa = V::load_aligned(q + k), qb = V::load_aligned(q + k + W);
      a0 = xsimd::fma(qa, load_row(r0 + k), a0);
      a1 = xsimd::fma(qa, load_row(r1 + k), a1);
      a2 = xsimd::fma(qa, load_row(r2 + k), a2);
      a3 = xsimd::fma(qa, load_row(r3 + k), a3);
      b0 = xsimd::fma(qb, load_row(r0 + k + W), b0);
      b1 = xsimd::fma(qb, load_row(r1 + k + W), b1);
      b2 = xsimd::fma(qb, load_row(r2 + k + W), b2);
      b3 = xsimd::fma(qb, load_row(r3 + k + W), b3);
    }
    for (; k < stride; k += W) {  // stride is a multiple of 16: at most one vector left (AVX-512)
      const V qa = V::load_aligned(q + k);
      a0 = xsimd::fma(qa, load_row(r0 + k), a0);
      a1 = xsimd::fma(qa, load_row(r1 + k), a1);
      a2 = xsimd::fma(qa, load_row(r2 + k), a2);
      a3 = xsimd::fma(qa, load_row(r3 + k), a3);
    }
    s[t] = xsimd::hadd(a0 + b0);
    s[t + 1] = xsimd::hadd(a1 + b1);
    s[t + 2] = xsimd::hadd(a2 + b2);
    s[t + 3] = xsimd::hadd(a3 + b3);
    tile_max = std::max(tile_max, std::max(std::max(s[t], s[t + 1]), std::max(s[t + 2], s[t + 3])));
  }
  for (; t < nt; ++t) {
    const Elem* row = tile.row(t);
    V a0(0.0f), a1(0.0f);
    std::size_t k = 0;
    for (; k + 2 * W <= stride; k += 2 * W) {
      a0 = xsimd::fma(V::load_aligned(q + k), load_row(row + k), a0);
      a1 = xsimd::fma(V::load_aligned(q + k + W), load_row(row + k + W), a1);
    }
    for (; k < stride; k += W) a0 = xsimd::fma(V::load_aligned(q + k), load_row(row + k), a0);
    s[t] = xsimd::hadd(a0 + a1);
    tile_max = std::max(tile_max, s[t]);
  }
  return tile_max;
}

// The online-softmax update of one head with one tile's scores s (kTileTokens, the first nt
// real) and their maximum: p = exp(s - m_new), then acc = alpha·acc + Σ_t p_t·c_t.
// lat_rows: (nt, lat_stride) the latent part [c_kv | 0] of the tile's rows.
template <class Elem>
void tile_update(RowView<const Elem> lat_rows, float* s, float tile_max, HeadState& st) {
  const std::size_t nt = lat_rows.rows(), lat_stride = lat_rows.cols();
  const float alpha = st.sm.step(s, nt, round_up(nt, W), tile_max);

  // acc = alpha·acc + Σ_t p_t·c_t, four tokens per sweep over acc (one load/store of acc per
  // four rows instead of per row).
  const V va(alpha);
  std::size_t t = 0;
  for (; t + 4 <= nt; t += 4) {
    const Elem *r0 = lat_rows.row(t), *r1 = lat_rows.row(t + 1), *r2 = lat_rows.row(t + 2),
               *r3 = lat_rows.row(t + 3);
    const V p0(s[t]), p1(s[t + 1]), p2(s[t + 2]), p3(s[t + 3]);
    for (std::size_t j = 0; j < lat_stride; j += W) {
      V o = V::load_aligned(st.acc + j);
      if (t == 0) o *= va;
      o = xsimd::fma(p0, load_row(r0 + j), o);
      o = xsimd::fma(p1, load_row(r1 + j), o);
      o = xsimd::fma(p2, load_row(r2 + j), o);
      o = xsimd::fma(p3, load_row(r3 + j), o);
      o.store_aligned(st.acc + j);
    }
  }
  if (nt < 4) {  // the rescale above did not run
    for (std::size_t j = 0; j < lat_stride; j += W)
      (V::load_aligned(st.acc + j) * va).store_aligned(st.acc + j);
  }
  for (; t < nt; ++t) {
    const Elem* r = lat_rows.row(t);
    const V p(s[t]);
    for (std::size_t j = 0; j < lat_stride; j += W) {
      xsimd::fma(p, load_row(r + j), V::load_aligned(st.acc + j)).store_aligned(st.acc + j);
    }
  }
}

// One tile (nt, stride) for one head: scores, then the online-softmax update of `st`.
template <class Elem>
void head_tile_update(RowView<const Elem> tile, std::size_t lat_stride, const float* q, float* s,
                      HeadState& st) {
  const float tile_max = tile_scores(tile, q, s);
  tile_update(tile.cols_range(0, lat_stride), s, tile_max, st);
}

}  // namespace

void mla_decode_v3(const SeqRef* seqs, const DecodeArgs& a) {
  check_seqs(seqs, a, CacheType::F32);
  if (a.batch == 0) return;
  const LatentCache& c0 = *seqs[0].cache;
  const std::size_t lat = c0.lat_stride(), stride = c0.stride(), H = a.heads;
  AlignedVec q(stride), s(kTile), acc(lat);
  for (std::size_t b = 0; b < a.batch; ++b) {
    const LatentCache& cache = *seqs[b].cache;
    const std::size_t len = seqs[b].length;
    for (std::size_t h = 0; h < H; ++h) {
      pack_query_row(a.q_lat + (b * H + h) * a.d_c, a.q_rope + (b * H + h) * a.d_r, a, lat, stride,
                     q.data());
      std::fill(acc.begin(), acc.end(), 0.0f);
      HeadState st;
      st.acc = acc.data();
      for (std::size_t i = 0; i < tiles_of(len); ++i) {
        head_tile_update(cache_tile<float>(cache, i, tile_tokens(len, i)), lat, q.data(), s.data(),
                         st);
      }
      // One chunk: out = acc / l (zeros if the head saw no token).
      combine_partials(
          1,
          [&](std::size_t) {
            return Partial{st.acc, st.sm.m, st.sm.l};
          },
          a.d_c, a.out + (b * H + h) * a.d_c);
    }
  }
}

// ============================================================================================
// version 4: head blocking with register-blocked micro-kernels
// ============================================================================================

namespace {

// Heads sit in SIMD lanes: a micro-kernel covers one group of G heads, kHeadVecs<G> vectors of
// them. Two widths: 16 heads (2 vectors of AVX2's 8 lanes, 1 of AVX-512's 16), because
// DeepSeek-V2-Lite has 16 heads and a wider group would pad them with idle lanes; and, where a
// vector holds 16 lanes and the heads fill it without padding, 32 heads (2 AVX-512 vectors):
// every broadcast cached number then feeds two FMAs instead of one, which measured about 10%
// faster in the micro-kernel alone (111 vs 101 GFLOP/s of a 117 GFLOP/s core).
// (With SSE's 4 lanes both are 8 heads, 2 vectors: 16 heads would need 17 of its 16 registers.)
constexpr std::size_t kNarrowGroup = W >= 8 ? 16 : 2 * W;
constexpr std::size_t kWideGroup = std::max<std::size_t>(kNarrowGroup, 2 * W);
template <std::size_t G>
constexpr std::size_t kHeadVecs = G / W;
static_assert(kNarrowGroup % W == 0 && kWideGroup % kNarrowGroup == 0,
              "a head group is a whole number of SIMD vectors");
static_assert(12 % kHeadVecs<kNarrowGroup> == 0 && 12 % kHeadVecs<kWideGroup> == 0,
              "12 accumulators split evenly over the vectors of a group");
// Heads per block: 64 keeps the packed queries (576 × 64 floats = 144 KiB), the output
// accumulators (512 × 64 = 128 KiB) and a tile (144 KiB) together in a 512 KiB L2 cache.
constexpr std::size_t kMaxHeadBlock = 64;
// Tokens per scores micro-kernel and latent columns per weighted-sum micro-kernel: 12
// accumulators in all (6 × 2 vectors, or 12 × 1 for 16 heads with AVX-512), enough independent
// FMA chains to cover an FMA's latency (4 cycles) on two FMA units, and within AVX2's 16
// registers.
template <std::size_t G>
constexpr std::size_t kTokGroup = 12 / kHeadVecs<G>;
template <std::size_t G>
constexpr std::size_t kColGroup = 12 / kHeadVecs<G>;

// What a micro-kernel broadcasts: cached numbers, read one load at a time. A float tile gives
// one number a load (folded into the FMA as a broadcast operand); v12 reads a bf16 tile as it
// lies, two numbers a 32-bit load, widened in registers (defined in v12's section).
template <class Elem>
constexpr std::size_t kPerLoad = sizeof(float) / sizeof(Elem);
// Number E of the load at p, as a float in every lane.
template <std::size_t E>
inline V broadcast_cached(const float* p) {
  return V(p[E]);
}
template <std::size_t E>
inline V broadcast_cached(const std::uint16_t* p);

// Scores of NT tokens for one group of G heads, the hot spot of the step (with pv_micro below).
//   qp: (K, ldq) packed queries, heads in lanes (this group's heads at qp[k·ldq .. +G))
//   c:  NT cache rows of ldc numbers (float, or bf16 for v12);  s: (NT, lds) scores out, heads
//   in lanes.
// AVX2 (fp32): 12 accumulators + 2 query vectors + 1 broadcast = 15 of 16 registers (a bf16 tile
// adds 2 query vectors and a mask: a few accumulators spill there); per k: 2 loads,
// 6 broadcasts, 12 FMAs. AVX-512: 1 query load and 12 broadcasts per 12 FMAs (16 heads) or 2
// loads and 6 broadcasts (32 heads). Either way the FMA units, not the loads, set the pace.
// A bf16 row is read a pair of numbers (k, k+1) at a time: the k loop steps by kPerLoad and
// the pair's two numbers run one after the other, in the order of the float version — per row,
// both numbers of its pair before the next row's (all rows' first numbers, then all rows'
// second, made GCC 12 keep the 12 widened numbers live at once: 39 vector registers wanted, a
// spill per step).
// The rows are addressed from four base pointers (rows 0, 3, 6, 9) plus 0, 1 or 2 row lengths
// — what an x86 address can hold (base + index × scale) — not from twelve pointers: with twelve,
// GCC runs out of general registers and reloads pointers from the stack inside the k loop.
// Measured (2026-12-07, Zen 4, one thread, a tile in L2, row length not known at compile
// time): the 16-head micro-kernel from 104-110 to 115 GFLOP/s for bf16 (a core's FMA peak is
// ~117). On whole steps, with token_group below: v12 +2-6% at 16 heads, v10 +1% (the chapter's
// README, "The scores micro-kernel's registers").
// pf: pf_lines cache lines to prefetch into L2, one per step of the k loop (v12 hands it its
// share of the next tile; nothing otherwise).
template <int NT, std::size_t G, class Elem>
inline void scores_micro(const float* qp, std::size_t ldq, const Elem* c, std::size_t ldc,
                         std::size_t K, float* s, std::size_t lds, const char* pf = nullptr,
                         std::size_t pf_lines = 0) {
  constexpr std::size_t VH = kHeadVecs<G>, P = kPerLoad<Elem>;
  V acc[NT][VH];
  for (int i = 0; i < NT; ++i)
    for (std::size_t v = 0; v < VH; ++v) acc[i][v] = V(0.0f);
  // Row i at base[i / 3] + (i % 3) row lengths (see above).
  const char* base[(NT + 2) / 3];
  const std::ptrdiff_t row = static_cast<std::ptrdiff_t>(ldc * sizeof(Elem));
  for (int b = 0; b < (NT + 2) / 3; ++b) base[b] = reinterpret_cast<const char*>(c) + 3 * b * row;
  for (std::size_t k = 0; k < K; k += P) {
    if (k / P < pf_lines) __builtin_prefetch(pf + 64 * (k / P), 0, 2);
    V q[P][VH];
    for (std::size_t e = 0; e < P; ++e)
      for (std::size_t v = 0; v < VH; ++v) q[e][v] = V::load_aligned(qp + (k + e) * ldq + v * W);
    for (int i = 0; i < NT; ++i) {
      const Elem* ci =
          reinterpret_cast<const Elem*>(base[i / 3] + (i % 3) * row + k * sizeof(Elem));
      const V c0 = broadcast_cached<0>(ci);
      for (std::size_t v = 0; v < VH; ++v) acc[i][v] = xsimd::fma(c0, q[0][v], acc[i][v]);
      if constexpr (P == 2) {
        const V c1 = broadcast_cached<1>(ci);
        for (std::size_t v = 0; v < VH; ++v) acc[i][v] = xsimd::fma(c1, q[1][v], acc[i][v]);
      }
    }
  }
  for (int i = 0; i < NT; ++i)
    for (std::size_t v = 0; v < VH; ++v) acc[i][v].store_aligned(s + i * lds + v * W);
}

// Weighted sum of nt tokens into NJ latent columns for one group of G heads, with the
// online-softmax rescale folded into the load of the accumulators.
//   ot: (NJ, ldo) output accumulators, transposed (column j, heads in lanes)
//   p:  (nt, ldp) probabilities, heads in lanes;  c: nt rows of ldc numbers (this column group)
//   alpha: (G) rescale factors of these heads
// From a bf16 row the columns come in pairs (j, j+1), one 32-bit load each (NJ is even there:
// lat_stride is a multiple of 16, kColGroup 12 or 6).
// The loop that stores the accumulators is unrolled by pragma (as are transpose16's loads,
// kernels/transpose.hpp):
// left to itself GCC 12 turns it into a memcpy call before it unrolls it, and then keeps the
// accumulators in a stack array to copy from — 12 extra stores, a call and a vzeroupper per call
// of 768 FMAs at 16 heads. Measured on whole steps (one thread, 16 heads, 4-32K tokens; the
// versions compiled into one program, steps alternating, thread CPU time): v12 about 5% and v10
// about 2% faster with it. The same pragmas in scores_micro (whose zeroing and stores GCC also
// turns into calls, once per 6,912 FMAs) cost v10 4%; a compile flag against the pattern for
// the whole file (-fno-tree-loop-distribute-patterns) cost it 3-5%.
template <int NJ, std::size_t G, class Elem>
inline void pv_micro(float* ot, std::size_t ldo, const float* p, std::size_t ldp, const Elem* c,
                     std::size_t ldc, std::size_t nt, const float* alpha) {
  constexpr std::size_t VH = kHeadVecs<G>;
  constexpr int P = static_cast<int>(kPerLoad<Elem>);
  static_assert(NJ % P == 0, "whole pairs of bf16 columns");
  V al[VH], acc[NJ][VH];
  for (std::size_t v = 0; v < VH; ++v) al[v] = V::load_aligned(alpha + v * W);
  for (int i = 0; i < NJ; ++i)
    for (std::size_t v = 0; v < VH; ++v) acc[i][v] = V::load_aligned(ot + i * ldo + v * W) * al[v];
  for (std::size_t t = 0; t < nt; ++t) {
    V pt[VH];
    for (std::size_t v = 0; v < VH; ++v) pt[v] = V::load_aligned(p + t * ldp + v * W);
    for (int i = 0; i < NJ; i += P) {
      const Elem* ct = c + t * ldc + i;
      const V c0 = broadcast_cached<0>(ct);
      for (std::size_t v = 0; v < VH; ++v) acc[i][v] = xsimd::fma(c0, pt[v], acc[i][v]);
      if constexpr (P == 2) {
        const V c1 = broadcast_cached<1>(ct);
        for (std::size_t v = 0; v < VH; ++v) acc[i + 1][v] = xsimd::fma(c1, pt[v], acc[i + 1][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NJ; ++i)
    for (std::size_t v = 0; v < VH; ++v) acc[i][v].store_aligned(ot + i * ldo + v * W);
}

template <int N, std::size_t G, class Elem>
void scores_dispatch(std::size_t n, const float* qp, std::size_t ldq, const Elem* c,
                     std::size_t ldc, std::size_t K, float* s, std::size_t lds,
                     const char* pf = nullptr, std::size_t pf_lines = 0) {
  if constexpr (N > 0) {
    if (n == N) return scores_micro<N, G>(qp, ldq, c, ldc, K, s, lds, pf, pf_lines);
    scores_dispatch<N - 1, G>(n, qp, ldq, c, ldc, K, s, lds, pf, pf_lines);
  }
}

// n columns: a whole number of pairs for a bf16 tile (see pv_micro), so only those are built.
template <int N, std::size_t G, class Elem>
void pv_dispatch(std::size_t n, float* ot, std::size_t ldo, const float* p, std::size_t ldp,
                 const Elem* c, std::size_t ldc, std::size_t nt, const float* alpha) {
  if constexpr (N > 0) {
    if constexpr (N % kPerLoad<Elem> == 0) {
      if (n == N) return pv_micro<N, G>(ot, ldo, p, ldp, c, ldc, nt, alpha);
    }
    pv_dispatch<N - 1, G>(n, ot, ldo, p, ldp, c, ldc, nt, alpha);
  }
}

// How the heads of a sequence are cut into blocks: `count` equal blocks of at most
// kMaxHeadBlock heads (`size` each, the last maybe fewer), padded to `lanes` = whole head groups
// of kWideGroup heads where that adds no padding over kNarrowGroup (H = 128: blocks of
// 64 = 2 × 32), else of kNarrowGroup.
struct HeadBlocks {
  std::size_t count, size, lanes;
  bool wide;
};

HeadBlocks head_blocks(std::size_t H) {
  HeadBlocks hb;
  hb.count = (H + kMaxHeadBlock - 1) / kMaxHeadBlock;
  hb.size = (H + hb.count - 1) / hb.count;
  hb.wide = round_up(hb.size, kWideGroup) == round_up(hb.size, kNarrowGroup);
  hb.lanes = round_up(hb.size, hb.wide ? kWideGroup : kNarrowGroup);
  return hb;
}

// A piece of work: heads [h0, h0 + nh) of sequence b (padded to hb lanes) against the cache
// tiles [tile_begin, tile_end). Its result is a partial softmax per head: the unnormalized
// output o (lat_stride), the max m and the sum l, written to `part`. v4 has one item per
// (sequence, head block), over all its tiles; v5 cuts them into chunks.
struct Item {
  std::size_t b, h0, nh, hb, tile_begin, tile_end;
  float* part;  // (hb, lat_stride) o, then (hb) m, then (hb) l
};

std::size_t part_size(std::size_t hb, std::size_t lat_stride) {
  return hb * lat_stride + 2 * hb;
}

// The items of head block `blk` of sequence b: its heads over the sequence's n_tiles tiles,
// split into nc chunks (appended to `items` in chunk order).
void push_block_items(std::vector<Item>& items, std::size_t b, std::size_t blk,
                      const HeadBlocks& blocks, std::size_t H, std::size_t n_tiles,
                      std::size_t nc) {
  const std::size_t h0 = blk * blocks.size, nh = std::min(blocks.size, H - h0);
  for (std::size_t c = 0; c < nc; ++c) {
    items.push_back({b, h0, nh, blocks.lanes, chunk_begin(n_tiles, c, nc),
                     chunk_begin(n_tiles, c + 1, nc), nullptr});
  }
}

// Head hh's partial result in an item's `part`.
Partial partial_of(const Item& it, std::size_t hh, std::size_t lat_stride) {
  const float* p = it.part;
  return {p + hh * lat_stride, p[it.hb * lat_stride + hh], p[it.hb * lat_stride + it.hb + hh]};
}

// The other direction: head hh's running max and sum into it.part (its unnormalized output is
// written by the caller to it.part + hh·lat_stride, in whatever order its accumulators hold).
void store_softmax(const Item& it, std::size_t hh, std::size_t lat_stride,
                   const OnlineSoftmax& sm) {
  it.part[it.hb * lat_stride + hh] = sm.m;
  it.part[it.hb * lat_stride + it.hb + hh] = sm.l;
}

// The queries of an item's heads, each packed like a cache row (pack_query_row):
// q (it.nh, stride).
void pack_item_queries(const DecodeArgs& a, const Item& it, std::size_t lat_stride,
                       std::size_t stride, float* q) {
  for (std::size_t hh = 0; hh < it.nh; ++hh) {
    const std::size_t h = it.b * a.heads + it.h0 + hh;
    pack_query_row(a.q_lat + h * a.d_c, a.q_rope + h * a.d_r, a, lat_stride, stride,
                   q + hh * stride);
  }
}

// Per-thread scratch of a head block, reused across calls (no allocation per decode step once
// warm). Hb = the block's lanes.
struct BlockScratch {
  AlignedVec qp;           // (stride, Hb) packed queries, heads in lanes
  AlignedVec s;            // (kTileTokens, Hb) scores, then probabilities
  AlignedVec ot;           // (lat_stride, Hb) output accumulators, transposed
  AlignedVec m, l, alpha;  // (Hb) running max, running sum, this tile's rescale
};

BlockScratch& block_scratch() {
  static thread_local BlockScratch ws;
  return ws;
}

// Tile i of a cache (its first nt rows) as floats (nt, stride), what the micro-kernels read:
// the tile itself for an fp32 cache; v6 widens a bf16 tile (defined there).
template <class Elem>
RowView<const float> float_tile(const LatentCache& c, std::size_t i, std::size_t nt);
template <>
RowView<const float> float_tile<float>(const LatentCache& c, std::size_t i, std::size_t nt) {
  return cache_tile<float>(c, i, nt);
}

// How the head-blocked path sees tile i of a cache (its first nt rows), and which tile it asks
// for ahead (`next`: the tile's bytes, or nullptr for none): v4 to v7 as floats (float_tile),
// nothing ahead; v12 as the cache holds it, the next tile ahead (its own policy, in its section).
struct FloatTiles {
  template <class Elem>
  static RowView<const float> view(const LatentCache& c, std::size_t i, std::size_t nt) {
    return float_tile<Elem>(c, i, nt);
  }
  static const char* next(const LatentCache&, std::size_t) { return nullptr; }
  static constexpr bool few_heads = false;  // below 8 heads: v3's per-head tiles
  // With few_heads: whether a cache can take the few-heads path (v13's FP8 codes need AVX-512
  // and their scales in range); the others always can.
  static bool few_heads_fit(const LatentCache&) { return true; }
};

// Buffers of a head block are group-major: group g (G heads in lanes) owns one contiguous
// (rows, G) panel, so every micro-kernel streams contiguous memory with a compile-time stride,
// which the hardware prefetcher follows best.
//
// Pack the queries of heads [h0, h0+nh) of sequence b: qp (hb / G, stride, G), scaled, zero in
// padded columns and padded heads (their scores are 0: finite, and discarded).
void pack_queries(const DecodeArgs& a, std::size_t b, std::size_t h0, std::size_t nh,
                  std::size_t hb, std::size_t G, std::size_t lat_stride, std::size_t stride,
                  float* qp) {
  const bool padded = nh < hb || a.d_c < lat_stride || lat_stride + a.d_r < stride;
  if (padded) std::fill(qp, qp + stride * hb, 0.0f);  // else the transposes write every number
  for (std::size_t g0 = 0; g0 < nh; g0 += G) {        // a transpose per group: (n, d) → (d, G)
    const std::size_t n = std::min(G, nh - g0);
    float* panel = qp + (g0 / G) * stride * G;
    const std::size_t h = b * a.heads + h0 + g0;
    transpose_scaled(a.q_lat + h * a.d_c, a.d_c, n, a.d_c, panel, G, a.scale);
    transpose_scaled(a.q_rope + h * a.d_r, a.d_r, n, a.d_r, panel + lat_stride * G, G, a.scale);
  }
}

// The state of one head block while it runs over tiles (what run_head_block keeps between
// tiles): set up by block_begin, advanced one tile at a time by block_tile, written out as the
// item's partial result by block_end. v8 keeps several of these alive to run all the head blocks
// of a sequence over each tile while it is in cache.
void block_begin(BlockScratch& ws, const DecodeArgs& a, const Item& it, std::size_t G,
                 std::size_t lat, std::size_t stride) {
  const std::size_t hb = it.hb;
  grow(ws.qp, stride * hb);
  grow(ws.s, kTile * hb);
  grow(ws.ot, lat * hb);
  grow(ws.m, hb);
  grow(ws.l, hb);
  grow(ws.alpha, hb);
  pack_queries(a, it.b, it.h0, it.nh, hb, G, lat, stride, ws.qp.data());
  std::fill(ws.ot.begin(), ws.ot.begin() + lat * hb, 0.0f);
  std::fill(ws.m.begin(), ws.m.begin() + hb, kNegInf);
  std::fill(ws.l.begin(), ws.l.begin() + hb, 0.0f);
}

// How many of the `rest` tokens still to score the next scores micro-kernel takes: `group`
// (kTokGroup), except where that would leave a short last group — a 64-token tile in groups of
// 12 ends with 4 — there the rest splits in two halves (16 = 8 + 8). A micro-kernel of 4 rows
// has 4 accumulators, too few FMA chains to hide an FMA's latency, and with a bf16 tile (whose
// chains take the two numbers of a pair one after the other) it ran at 64-73 GFLOP/s against
// 115 for 12 rows (one thread, tile in L2). On whole steps, alone: 0-3% (16 and 32 heads, 1-32K
// tokens, 1 and 2 threads; part of the gain given at scores_micro).
std::size_t token_group(std::size_t rest, std::size_t group) {
  return rest > group && 2 * rest < 3 * group ? rest / 2 : std::min(group, rest);
}

// One tile (nt, stride) for one head block of hb lanes in groups of G heads: floats (v4 to v9),
// or the bf16 numbers as cached (v12). next: a tile (next_bytes bytes) to prefetch into L2
// during the scores, or nullptr (then nothing is prefetched).
template <std::size_t G, bool GroupsOuter = false, class Elem>
void block_tile(BlockScratch& ws, RowView<const Elem> tile, std::size_t hb, std::size_t lat,
                const char* next = nullptr, std::size_t next_bytes = 0) {
  constexpr std::size_t kTok = kTokGroup<G>, kCol = kColGroup<G>;
  const std::size_t nt = tile.rows(), stride = tile.cols(), groups = hb / G;
  // qp: (groups, stride, G), S: (groups, kTile, G), Ot: (groups, lat, G); m, l, alpha: (hb).
  float *S = ws.s.data(), *Ot = ws.ot.data(), *M = ws.m.data(), *L = ws.l.data();
  float* alpha = ws.alpha.data();
  const float* qp = ws.qp.data();

  // 1. scores S (nt, hb) = tile (nt, stride) · qp (stride, hb): kTokGroup tokens × G heads at
  //    a time; those rows stay in L1 while the head groups stream their packed queries.
  //    v8 turns the loops around (GroupsOuter): one group's packed queries then serve every
  //    token of the tile before the next group's are read.
  if constexpr (!GroupsOuter) {
    for (std::size_t t0 = 0, n; t0 < nt; t0 += n) {
      n = token_group(nt - t0, kTok);
      // This token group's share of the next tile, prefetched by the first head group's
      // micro-kernel a line per step, spread over its FMAs (not all at once: see v12).
      const std::size_t b0 = t0 * next_bytes / nt, b1 = (t0 + n) * next_bytes / nt;
      const char* pf = next ? next + b0 : nullptr;
      const std::size_t lines = next ? (b1 - b0 + 63) / 64 : 0;
      for (std::size_t g = 0; g < groups; ++g) {
        scores_dispatch<kTok, G>(n, qp + g * stride * G, G, tile.row(t0), stride, stride,
                                 S + (g * kTile + t0) * G, G, pf, g == 0 ? lines : 0);
      }
    }
  } else {
    for (std::size_t g = 0; g < groups; ++g) {
      for (std::size_t t0 = 0, n; t0 < nt; t0 += n) {
        n = token_group(nt - t0, kTok);
        scores_dispatch<kTok, G>(n, qp + g * stride * G, G, tile.row(t0), stride, stride,
                                 S + (g * kTile + t0) * G, G);
      }
    }
  }

  // 2. online softmax per head, heads in lanes: every step is a whole-vector operation.
  for (std::size_t h = 0; h < hb; h += W) {
    float* Sh = S + (h / G) * kTile * G + h % G;  // this vector of heads, token t at Sh[t·G]
    V mt(kNegInf);
    for (std::size_t t = 0; t < nt; ++t) mt = xsimd::max(mt, V::load_aligned(Sh + t * G));
    const V m_old = V::load_aligned(M + h);
    const V m_new = xsimd::max(m_old, mt);
    const V al = rescale_factor(m_old, m_new);
    V sum(0.0f);
    for (std::size_t t = 0; t < nt; ++t) {
      const V e = xsimd::exp(V::load_aligned(Sh + t * G) - m_new);
      e.store_aligned(Sh + t * G);
      sum += e;
    }
    (V::load_aligned(L + h) * al + sum).store_aligned(L + h);
    m_new.store_aligned(M + h);
    al.store_aligned(alpha + h);
  }

  // 3. Ot (lat, hb) = alpha · Ot + tileᵀ[:lat] (lat, nt) · P (nt, hb): kColGroup columns × G
  //    heads at a time.
  for (std::size_t j0 = 0; j0 < lat; j0 += kCol) {
    const std::size_t n = std::min(kCol, lat - j0);
    for (std::size_t g = 0; g < groups; ++g) {
      pv_dispatch<kCol, G>(n, Ot + (g * lat + j0) * G, G, S + g * kTile * G, G, tile.data() + j0,
                           stride, nt, alpha + g * G);
    }
  }
}

// The partial result, heads back in rows: o (hb, lat), m (hb), l (hb) into it.part.
void block_end(const BlockScratch& ws, const Item& it, std::size_t G, std::size_t lat) {
  const std::size_t hb = it.hb;
  const float* Ot = ws.ot.data();
  float* po = it.part;
  for (std::size_t g0 = 0; g0 < hb; g0 += G)  // a transpose per group: (lat, G) → (G, lat)
    transpose_scaled(Ot + (g0 / G) * lat * G, G, lat, G, po + g0 * lat, lat, 1.0f);
  std::copy(ws.m.begin(), ws.m.begin() + hb, po + hb * lat);
  std::copy(ws.l.begin(), ws.l.begin() + hb, po + hb * lat + hb);
}

// One head block against a range of tiles (an Item), in groups of G heads, each tile seen as
// the policy Tiles hands it over.
template <class Elem, std::size_t G, class Tiles>
void run_head_block(const LatentCache& cache, std::size_t length, const DecodeArgs& a,
                    const Item& it) {
  const std::size_t lat = cache.lat_stride();
  BlockScratch& ws = block_scratch();
  block_begin(ws, a, it, G, lat, cache.stride());
  for (std::size_t i = it.tile_begin; i < it.tile_end; ++i) {
    const char* next = i + 1 < it.tile_end ? Tiles::next(cache, i + 1) : nullptr;
    block_tile<G>(ws, Tiles::template view<Elem>(cache, i, tile_tokens(length, i)), it.hb, lat,
                  next, cache.tile_bytes());
  }
  block_end(ws, it, G, lat);
}

// An item of a head-blocked step, in the groups the blocking chose.
template <class Elem, class Tiles = FloatTiles>
void run_blocked_item(const HeadBlocks& blocks, const LatentCache& cache, std::size_t length,
                      const DecodeArgs& a, const Item& it) {
  if (blocks.wide) {
    run_head_block<Elem, kWideGroup, Tiles>(cache, length, a, it);
  } else {
    run_head_block<Elem, kNarrowGroup, Tiles>(cache, length, a, it);
  }
}

}  // namespace

void mla_decode_v4(const SeqRef* seqs, const DecodeArgs& a) {
  check_seqs(seqs, a, CacheType::F32);
  if (a.batch == 0) return;
  const std::size_t H = a.heads, lat = seqs[0].cache->lat_stride();
  const HeadBlocks blocks = head_blocks(H);
  static thread_local AlignedVec part;
  grow(part, part_size(blocks.lanes, lat));
  for (std::size_t b = 0; b < a.batch; ++b) {
    for (std::size_t blk = 0; blk < blocks.count; ++blk) {
      const std::size_t h0 = blk * blocks.size, nh = std::min(blocks.size, H - h0);
      const Item it{b, h0, nh, blocks.lanes, 0, tiles_of(seqs[b].length), part.data()};
      run_blocked_item<float>(blocks, *seqs[b].cache, seqs[b].length, a, it);
      // One chunk: out = o / l per head.
      for (std::size_t hh = 0; hh < nh; ++hh) {
        combine_partials(
            1, [&](std::size_t) { return partial_of(it, hh, lat); }, a.d_c,
            a.out + (b * H + h0 + hh) * a.d_c);
      }
    }
  }
}

// ============================================================================================
// version 5: split-KV across threads, log-sum-exp combine
// ============================================================================================

namespace {

// Fewer heads than this take the per-head path (see decode_split).
constexpr std::size_t kPerHeadBelow = 8;

// Per-thread scratch of the per-head path.
struct PerHeadScratch {
  AlignedVec q;      // (heads, stride) packed queries
  AlignedVec acc;    // (heads, lat_stride) accumulated outputs
  AlignedVec s;      // (kTileTokens) one head's scores of one tile; v10: (heads, kTileTokens)
  AlignedVec alpha;  // v10: (heads) this tile's rescale factors
};

PerHeadScratch& per_head_scratch() {
  static thread_local PerHeadScratch ws;
  return ws;
}

// How the per-head path scores one tile (nt, stride) for head hh of its item: v3's tile_scores
// against the head's packed query (q: (nh, stride)). v6 adds a version for bf16 caches.
template <class Elem>
class PerHeadScores {
 public:
  PerHeadScores(const float* q, std::size_t /*nh*/, std::size_t stride) : q_(q), stride_(stride) {}
  float operator()(RowView<const Elem> tile, std::size_t hh, float* s) const {
    return tile_scores(tile, q_ + hh * stride_, s);
  }

 private:
  const float* q_;
  std::size_t stride_;
};

// What the per-head path hands its heads from tile i (its first nt rows): the tile itself, as
// one view of cache numbers (fp32, or bf16 widened while loaded). v7 hands over a view of the
// FP8 rows instead, with its own scores and update (which read the codes directly).
template <class Elem>
struct PerHeadRows {
  using Rows = Elem;  // the type PerHeadScores is chosen by
  template <class Fn>
  static void each(const LatentCache& c, std::size_t i, std::size_t nt, Fn&& fn) {
    fn(cache_tile<Elem>(c, i, nt));
  }
};

// One head's online-softmax update with the rows `each` handed over and their scores s: v3's
// tile_update on the latent columns. v7 overloads it for its FP8 rows.
template <class Elem>
void head_update(RowView<const Elem> rows, std::size_t lat, float* s, float rows_max,
                 HeadState& st) {
  tile_update(rows.cols_range(0, lat), s, rows_max, st);
}

// The per-head path for few heads (below kPerHeadBelow): v3's per-head tiles, tiles outer and
// heads inner, so each tile comes from memory once and from L1/L2 for the other heads.
template <class Elem>
void run_heads_per_tile(const LatentCache& cache, std::size_t length, const DecodeArgs& a,
                        const Item& it) {
  const std::size_t lat = cache.lat_stride(), stride = cache.stride(), nh = it.nh;
  PerHeadScratch& ws = per_head_scratch();
  grow(ws.q, nh * stride);
  grow(ws.acc, nh * lat);
  grow(ws.s, kTile);
  std::vector<HeadState> st(nh);
  pack_item_queries(a, it, lat, stride, ws.q.data());
  for (std::size_t hh = 0; hh < nh; ++hh) {
    st[hh].acc = ws.acc.data() + hh * lat;
    std::fill(st[hh].acc, st[hh].acc + lat, 0.0f);
  }
  using Rows = typename PerHeadRows<Elem>::Rows;
  const PerHeadScores<Rows> scores(ws.q.data(), nh, stride);
  for (std::size_t i = it.tile_begin; i < it.tile_end; ++i) {
    PerHeadRows<Elem>::each(cache, i, tile_tokens(length, i), [&](const auto& rows) {
      for (std::size_t hh = 0; hh < nh; ++hh) {
        const float rows_max = scores(rows, hh, ws.s.data());
        head_update(rows, lat, ws.s.data(), rows_max, st[hh]);
      }
    });
  }
  for (std::size_t hh = 0; hh < nh; ++hh) {  // the layout of partial_of
    std::copy(st[hh].acc, st[hh].acc + lat, it.part + hh * lat);
    store_softmax(it, hh, lat, st[hh].sm);
  }
}

// Merging the partial softmaxes of the chunks of each (sequence, head) into a.out, one head a
// job. first_item[g] .. first_item[g+1]: the chunks of head group g (sequence b, heads h0..);
// job j is head j % per_group of group j / per_group (per_group: the most heads of a group;
// a job past its group's heads does nothing). One head a job, not one group: a single sequence
// has one group at 16 heads, which on one thread took 2 µs of a 0.2 ms step.
struct Combine {
  const std::vector<Item>& items;
  const std::vector<std::size_t>& first_item;
  std::size_t lat, per_group;
  const DecodeArgs& a;

  Combine(const std::vector<Item>& it, const std::vector<std::size_t>& fi, std::size_t lat_stride,
          const DecodeArgs& args)
      : items(it), first_item(fi), lat(lat_stride), per_group(0), a(args) {
    for (const Item& i : items) per_group = std::max(per_group, i.nh);
  }
  long jobs() const { return static_cast<long>((first_item.size() - 1) * per_group); }
  void operator()(long job) const {
    const std::size_t g = static_cast<std::size_t>(job) / per_group,
                      hh = static_cast<std::size_t>(job) % per_group;
    const std::size_t i0 = first_item[g], i1 = first_item[g + 1];
    if (i0 == i1 || hh >= items[i0].nh) return;
    const Item& head = items[i0];
    combine_partials(
        i1 - i0, [&](std::size_t c) { return partial_of(items[i0 + c], hh, lat); }, a.d_c,
        a.out + (head.b * a.heads + head.h0 + hh) * a.d_c);
  }
};

// The combine as a parallel loop of its own (v8's driver; decode_split runs it in the items'
// parallel region).
void combine(const std::vector<Item>& items, const std::vector<std::size_t>& first_item,
             std::size_t lat, const DecodeArgs& a, int threads) {
  const Combine merge(items, first_item, lat, a);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (long j = 0; j < merge.jobs(); ++j) merge(j);
}

// v7's per-head path without shuffles (AVX-512 builds, defined in v7's section): runs the item
// and returns true, or returns false at once where it does not apply (then the generic one runs).
bool fp8_per_head_lanes(const LatentCache& cache, std::size_t length, const DecodeArgs& a,
                        const Item& it);

// Where v10 to v12 switch from their few-heads path to head blocks: where a block's first group
// of heads fills its SIMD vectors (16 heads with AVX2 and AVX-512, 8 with SSE). Measured on a
// Zen 4, one core, T = 4,096 and 32,768, in GFLOP per CPU-second: 8 heads 82-92 few-heads vs
// 49-53 blocked (half the block's lanes idle), 12 heads 73-86 vs 73-74 fp32 and 97-98 vs 71-74
// bf16; 16 heads 77-95 vs 93-109: there the block wins.
constexpr std::size_t kFewHeadsBelow = kNarrowGroup;

// v10's to v12's path for fewer than kFewHeadsBelow heads (defined in v10's section).
template <class Elem>
void run_few_heads(const LatentCache& cache, std::size_t length, const DecodeArgs& a,
                   const Item& it);

// The driver of v5, v6 and v10 to v12: cut the step into items, run them on a.threads threads,
// combine. Tiles: how the head-blocked path sees a tile (FloatTiles, or v12's bf16 as cached),
// which tile it prefetches, and whether fewer than 16 heads take v10's path (Tiles::few_heads).
template <class Elem, class Tiles = FloatTiles>
void decode_split(const SeqRef* seqs, const DecodeArgs& a) {
  const std::size_t B = a.batch, H = a.heads;
  if (B == 0) return;
  const std::size_t lat = seqs[0].cache->lat_stride();
  const int threads = std::max(a.threads, 1);

  // Head blocks as v4 cuts them. Below kPerHeadBelow heads the per-head path (no padding) does
  // the work instead: there a block would be mostly padding. Measured with AVX-512 (16 lanes),
  // 2 threads, T = 16384, v5: 4 heads 2.6 ms per-head vs 3.5 blocked; 8 heads 4.2 vs 3.4;
  // 12 heads 5.9 vs 3.7 — so the switch sits at 8 heads, half a vector there and one vector
  // with AVX2.
  // v10 to v12's few-heads path holds up to 16 heads in registers (in groups of 4) and beats a
  // head block until the block's lanes are full: up to kFewHeadsBelow heads (below).
  const bool few = Tiles::few_heads && std::all_of(seqs, seqs + B, [](const SeqRef& r) {
                     return Tiles::few_heads_fit(*r.cache);
                   });
  const bool per_head = H < (few ? kFewHeadsBelow : kPerHeadBelow);
  const HeadBlocks blocks = per_head ? HeadBlocks{1, H, H, false} : head_blocks(H);

  // Chunks of the cache per (sequence, head block), never less than a tile each.
  const std::size_t chunks = kv_chunks(B * blocks.count, threads);
  std::vector<Item> items;
  std::vector<std::size_t> first_item;
  for (std::size_t b = 0; b < B; ++b) {
    const std::size_t n_tiles = tiles_of(seqs[b].length);
    const std::size_t nc = std::max<std::size_t>(1, std::min(chunks, n_tiles));
    for (std::size_t blk = 0; blk < blocks.count; ++blk) {
      first_item.push_back(items.size());
      push_block_items(items, b, blk, blocks, H, n_tiles, nc);
    }
  }
  first_item.push_back(items.size());
  static thread_local AlignedVec parts;  // the caller's: shared by the threads below
  const std::size_t psize = part_size(blocks.lanes, lat);
  grow(parts, items.size() * psize);
  for (std::size_t i = 0; i < items.size(); ++i) items[i].part = parts.data() + i * psize;

  // The items, then (one parallel region, after its barrier) the combine.
  const auto run_item = [&](long i) {
    const Item& it = items[static_cast<std::size_t>(i)];
    if (per_head) {
      if constexpr (Tiles::few_heads) {
        if (few) return run_few_heads<Elem>(*seqs[it.b].cache, seqs[it.b].length, a, it);
      }
      if constexpr (std::is_same_v<Elem, std::uint8_t>) {
        if (fp8_per_head_lanes(*seqs[it.b].cache, seqs[it.b].length, a, it)) return;
      }
      run_heads_per_tile<Elem>(*seqs[it.b].cache, seqs[it.b].length, a, it);
    } else {
      run_blocked_item<Elem, Tiles>(blocks, *seqs[it.b].cache, seqs[it.b].length, a, it);
    }
  };
  const Combine merge(items, first_item, lat, a);
  mla::parallel_for_then(static_cast<long>(items.size()), merge.jobs(), threads, run_item, merge);
}

}  // namespace

void mla_decode_v5(const SeqRef* seqs, const DecodeArgs& a) {
  check_seqs(seqs, a, CacheType::F32);
  decode_split<float>(seqs, a);
}

// ============================================================================================
// version 6: bf16 cache
// ============================================================================================

namespace {

// The bf16 versions of v3's and v4's element-type hooks: a tile's view, a widened row (the
// per-head path widens while it loads), a widened tile (the head-blocked path widens each tile
// once; both micro-kernels then read floats).
template <>
RowView<const std::uint16_t> cache_tile<std::uint16_t>(const LatentCache& c, std::size_t i,
                                                       std::size_t nt) {
  return {c.tile_bf16(i), nt, c.stride(), c.stride()};
}

inline V load_row(const std::uint16_t* p) {
  return load_bf16(p);
}

template <>
RowView<const float> float_tile<std::uint16_t>(const LatentCache& c, std::size_t i,
                                               std::size_t nt) {
  static thread_local AlignedVec ftile;  // (kTileTokens, stride)
  const std::size_t stride = c.stride();
  grow(ftile, kTile * stride);
  const std::uint16_t* src = c.tile_bf16(i);
  for (std::size_t e = 0; e < nt * stride; e += W)
    load_bf16(src + e).store_aligned(ftile.data() + e);
  return {ftile.data(), nt, stride, stride};
}

// AVX512_BF16: vdpbf16ps multiplies 32 pairs of bf16 numbers and adds them into 16 floats in
// one instruction, straight from the bf16 cache (no widening). Compiled through a target attribute
// (so this compiler checks it on any x86-64), used only if the CPU reports avx512bf16 at run time.
//
// Both operands must be bf16, but only the cache may lose precision: the query stays exact by
// being split into three bf16 numbers, q = q_hi + q_mid + q_lo (split_bf16 in bf16.hpp: each
// part is the bf16 rounding of what the parts before it left over; 3 × 8 significant bits hold a
// float's 24). A score is then three vdpbf16ps per 32 cached numbers — one load of the row, three
// independent accumulator chains — and equals v1's on the rounded cache up to the order of the
// sums, like the widening path. tile: (nt, stride) bf16; q3: (3, stride) bf16, the three parts
// one after the other; s: (kTileTokens). Returns the scores' maximum.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10
#define MLA_CH07_HAVE_DPBF16 1
// GCC 12's _mm512_reduce_add_ps inlines _mm256_undefined_pd(), a deliberately uninitialized
// value, and then reports "'__Y' may be used uninitialized" inside its own avx512fintrin.h
// (GCC bug 105593, fixed in GCC 13): a false positive, silenced for this one function only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
__attribute__((target("avx512f,avx512bw,avx512bf16"))) float tile_scores_dpbf16(
    RowView<const std::uint16_t> tile, const std::uint16_t* q3, float* s) {
  const std::size_t nt = tile.rows(), stride = tile.cols();
  const std::uint16_t *q_hi = q3, *q_mid = q3 + stride, *q_lo = q3 + 2 * stride;
  float tile_max = kNegInf;
  for (std::size_t t = 0; t < nt; ++t) {
    const std::uint16_t* row = tile.row(t);
    __m512 hi = _mm512_setzero_ps(), mid = _mm512_setzero_ps(), lo = _mm512_setzero_ps();
    std::size_t k = 0;
    for (; k + 32 <= stride; k += 32) {
      const __m512bh r = (__m512bh)_mm512_loadu_si512(row + k);
      hi = _mm512_dpbf16_ps(hi, r, (__m512bh)_mm512_loadu_si512(q_hi + k));
      mid = _mm512_dpbf16_ps(mid, r, (__m512bh)_mm512_loadu_si512(q_mid + k));
      lo = _mm512_dpbf16_ps(lo, r, (__m512bh)_mm512_loadu_si512(q_lo + k));
    }
    if (k < stride) {  // stride is a multiple of 16: one half-register left
      const __mmask32 m = 0xFFFFu;
      const __m512bh r = (__m512bh)_mm512_maskz_loadu_epi16(m, row + k);
      hi = _mm512_dpbf16_ps(hi, r, (__m512bh)_mm512_maskz_loadu_epi16(m, q_hi + k));
      mid = _mm512_dpbf16_ps(mid, r, (__m512bh)_mm512_maskz_loadu_epi16(m, q_mid + k));
      lo = _mm512_dpbf16_ps(lo, r, (__m512bh)_mm512_maskz_loadu_epi16(m, q_lo + k));
    }
    // Small parts first, so the large one is added last (what rounding error there is stays
    // at the size of the small parts).
    const float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(lo, mid), hi));
    s[t] = sum;
    tile_max = std::max(tile_max, sum);
  }
  return tile_max;
}
#pragma GCC diagnostic pop
#endif

bool cpu_has_dpbf16() {
#ifdef MLA_CH07_HAVE_DPBF16
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

// The per-head path's scores on a bf16 cache: vdpbf16ps on the query split into three bf16
// parts where the CPU has AVX512_BF16, else v3's tile_scores (which widens while it loads).
template <>
class PerHeadScores<std::uint16_t> {
 public:
  // q: (nh, stride) the packed float queries of the item's heads.
  PerHeadScores(const float* q, std::size_t nh, std::size_t stride)
      : q_(q), stride_(stride), dpbf16_(cpu_has_dpbf16()) {
    if (!dpbf16_) return;
    // q16: (nh, 3, stride), per thread like the other per-head buffers.
    static thread_local std::vector<std::uint16_t, xsimd::aligned_allocator<std::uint16_t, 64>> q16;
    if (q16.size() < nh * 3 * stride) q16.resize(nh * 3 * stride);
    for (std::size_t hh = 0; hh < nh; ++hh) {
      std::uint16_t* q3 = q16.data() + hh * 3 * stride;
      for (std::size_t k = 0; k < stride; ++k) {
        split_bf16(q[hh * stride + k], q3[k], q3[stride + k], q3[2 * stride + k]);
      }
    }
    q16_ = q16.data();
  }
  float operator()(RowView<const std::uint16_t> tile, std::size_t hh, float* s) const {
#ifdef MLA_CH07_HAVE_DPBF16
    if (dpbf16_) return tile_scores_dpbf16(tile, q16_ + hh * 3 * stride_, s);
#endif
    return tile_scores(tile, q_ + hh * stride_, s);
  }

 private:
  const float* q_;
  std::size_t stride_;
  bool dpbf16_;
  const std::uint16_t* q16_ = nullptr;
};

}  // namespace

void mla_decode_v6(const SeqRef* seqs, const DecodeArgs& a) {
  check_seqs(seqs, a, CacheType::BF16);
  decode_split<std::uint16_t>(seqs, a);
}

// ============================================================================================
// version 7: FP8 cache (DeepSeek-V3.2's 656-byte layout)
// ============================================================================================
// A row is [e4m3 codes of c_kv | one float scale per 128 of them | k_rope in bf16]
// (latent_cache.hpp). A code is widened to a float through F16C (kernels/fp8.hpp: 2^-8 of its
// value, exactly); every sum is in float, as before. Two paths, as in v5:
//  - head-blocked path (8 heads or more, compute-bound): a whole tile is dequantized into floats
//    (like v6's bf16 tile), then the micro-kernels use each number for 16 or 32 heads, so the
//    conversion is paid once per number per step and shows only as a fraction of the FMAs;
//  - per-head path (few heads, memory-bound): fused dequantize-and-dot. Scores and weighted sum
//    read the codes directly, widen them in registers, and apply the per-128 scale to a partial
//    sum (once per tile of a row) rather than to each number. No float copy is written: that
//    first version (8 rows dequantized into an L1 buffer, then v5's float code) was core-bound
//    and slower than bf16 (0.47x here, 0.87-0.92x on an AVX2 Zen 3).

namespace {

// Rows [r0, r0 + n) of FP8 tile i as floats: dst (n, stride) = [c_kv | 0 | k_rope | 0]. The
// head-blocked path's micro-kernels read floats.
void dequantize_fp8_rows(const LatentCache& c, std::size_t i, std::size_t r0, std::size_t n,
                         float* dst) {
  const std::size_t lat = c.lat_stride(), stride = c.stride(), tile = c.fp8_tile();
  const std::size_t rope = stride - lat;  // d_r rounded up to 16
  const std::uint8_t* src = c.tile_fp8(i) + r0 * c.row_bytes();
  for (std::size_t r = 0; r < n; ++r, src += c.row_bytes(), dst += stride) {
    for (std::size_t j = 0, k0 = 0; k0 < lat; ++j, k0 += tile) {
      float scale;
      std::memcpy(&scale, src + c.fp8_scale_offset() + 4 * j, sizeof scale);
      // load_e4m3_scaled gives 2^-8 of each value: the 2^8 joins the scale (exact: powers of 2).
      const V f(scale * kE4m3LoadFactor);
      const std::size_t k1 = std::min(lat, k0 + tile);
      std::size_t k = k0;
      for (; k + 2 * W <= k1; k += 2 * W) {
        V lo, hi;
        load_e4m3_scaled2(src + k, lo, hi);
        (lo * f).store_aligned(dst + k);
        (hi * f).store_aligned(dst + k + W);
      }
      for (; k < k1; k += W) (load_e4m3_scaled(src + k) * f).store_aligned(dst + k);
    }
    const auto* r16 = reinterpret_cast<const std::uint16_t*>(src + c.fp8_rope_offset());
    for (std::size_t k = 0; k < rope; k += W) load_bf16(r16 + k).store_aligned(dst + lat + k);
  }
}

// The head-blocked path reads a whole tile as floats: each number is dequantized once per step,
// and the micro-kernels use it for 16 or 32 heads.
template <>
RowView<const float> float_tile<std::uint8_t>(const LatentCache& c, std::size_t i, std::size_t nt) {
  static thread_local AlignedVec ftile;  // (kTileTokens, stride)
  grow(ftile, kTile * c.stride());
  dequantize_fp8_rows(c, i, 0, nt, ftile.data());
  return {ftile.data(), nt, c.stride(), c.stride()};
}

// The per-head path (few heads, memory-bound) never writes a float copy: with one head a
// dequantized number is used twice (its score, its share of the weighted sum), so a copy costs
// more (a store and a load) than converting the code again in registers. Both passes read the
// codes straight from the cache tile (42 KiB of FP8 rows: it stays in L1/L2 between them), and
// the tile's scale is applied to a partial sum, not to every number:
//
//     s_t        = Σ_j scale_tj · (q[tile j] · e4m3[tile j])  +  q_rope · k_rope
//     acc[tile j] += (p_t · scale_tj) · e4m3[tile j]
//
// (scale_tj · 2^8 in fact: load_e4m3_scaled2 returns 2^-8 of each value.)

// Rows per block the per-head path hands its heads: 8 rows (5 KiB of codes) stay in L1 between
// the scores and the weighted sum, and the weighted sum's accumulators are loaded and stored
// once per 8 rows. (16 measured the same here, within the noise of a shared machine.)
constexpr std::size_t kFp8Rows = 8;

// A view of nt consecutive rows of an FP8 tile.
struct Fp8Rows {
  const std::uint8_t* data;  // nt rows of row_bytes
  std::size_t nt, row_bytes;
  std::size_t lat, tile;                  // lat_stride codes, scale tile
  std::size_t scale_offset, rope_offset;  // bytes into a row
  std::size_t rope;                       // d_r rounded up to 16 bf16 numbers
  const std::uint8_t* row(std::size_t t) const { return data + t * row_bytes; }
  // Scale j of row t as stored.
  float raw_scale(std::size_t t, std::size_t j) const {
    float f;
    std::memcpy(&f, row(t) + scale_offset + 4 * j, sizeof f);
    return f;
  }
  // Scale j of row t, times kE4m3LoadFactor (what the F16C widening leaves out).
  float scale(std::size_t t, std::size_t j) const { return raw_scale(t, j) * kE4m3LoadFactor; }
};

template <>
struct PerHeadRows<std::uint8_t> {
  using Rows = Fp8Rows;
  template <class Fn>
  static void each(const LatentCache& c, std::size_t i, std::size_t nt, Fn&& fn) {
    const std::size_t rb = c.row_bytes();
    for (std::size_t r0 = 0; r0 < nt; r0 += kFp8Rows) {
      // Ask for the next block (in this tile, or the next tile's first) while this one is used:
      // the scores read kFp8ScoreRows rows side by side, a pattern the hardware prefetcher follows
      // late, and a tile need not follow the one before it in memory (a short cache's tiles are
      // separate allocations, a paged cache's anywhere in its pool), where it would start cold.
      const std::uint8_t* next = r0 + kFp8Rows < nt  ? c.tile_fp8(i) + (r0 + kFp8Rows) * rb
                                 : i + 1 < c.tiles() ? c.tile_fp8(i + 1)
                                                     : nullptr;
      if (next) {
        for (std::size_t b = 0; b < kFp8Rows * rb; b += 64) __builtin_prefetch(next + b);
      }
      fn(Fp8Rows{c.tile_fp8(i) + r0 * c.row_bytes(), std::min(kFp8Rows, nt - r0), c.row_bytes(),
                 c.lat_stride(), c.fp8_tile(), c.fp8_scale_offset(), c.fp8_rope_offset(),
                 c.stride() - c.lat_stride()});
    }
  }
};

// Scores of rows [t, t + R) against one head's packed query q (stride floats, scaled) into s.
// R rows at a time share each query load; two accumulators per row per scale tile (2R FMA
// chains), folded into the row's total by the tile's scale.
template <int R>
inline void fp8_scores_rows(const Fp8Rows& f, std::size_t t, const float* q, float* s) {
  const std::uint8_t* r[R];
  V tot[R];
  for (int i = 0; i < R; ++i) {
    r[i] = f.row(t + i);
    tot[i] = V(0.0f);
  }
  for (std::size_t j = 0, k0 = 0; k0 < f.lat; ++j, k0 += f.tile) {
    const std::size_t k1 = std::min(f.lat, k0 + f.tile);
    V a[R], b[R];
    for (int i = 0; i < R; ++i) a[i] = b[i] = V(0.0f);
    std::size_t k = k0;
    for (; k + 2 * W <= k1; k += 2 * W) {
      const V qa = V::load_aligned(q + k), qb = V::load_aligned(q + k + W);
      for (int i = 0; i < R; ++i) {
        V lo, hi;
        load_e4m3_scaled2(r[i] + k, lo, hi);
        a[i] = xsimd::fma(qa, lo, a[i]);
        b[i] = xsimd::fma(qb, hi, b[i]);
      }
    }
    for (; k < k1; k += W) {  // the tile is a multiple of 16 numbers: at most one vector (AVX-512)
      const V qa = V::load_aligned(q + k);
      for (int i = 0; i < R; ++i) a[i] = xsimd::fma(qa, load_e4m3_scaled(r[i] + k), a[i]);
    }
    for (int i = 0; i < R; ++i) tot[i] = xsimd::fma(a[i] + b[i], V(f.scale(t + i, j)), tot[i]);
  }
  for (std::size_t k = 0; k < f.rope; k += W) {
    const V qr = V::load_aligned(q + f.lat + k);
    for (int i = 0; i < R; ++i) {
      const auto* r16 = reinterpret_cast<const std::uint16_t*>(r[i] + f.rope_offset);
      tot[i] = xsimd::fma(qr, load_bf16(r16 + k), tot[i]);
    }
  }
  for (int i = 0; i < R; ++i) s[t + i] = xsimd::hadd(tot[i]);
}

// Rows per score group: 4 with AVX-512's 32 registers, 2 with 16 (AVX2, SSE).
constexpr int kFp8ScoreRows = W >= 16 ? 4 : 2;

template <>
class PerHeadScores<Fp8Rows> {
 public:
  PerHeadScores(const float* q, std::size_t /*nh*/, std::size_t stride) : q_(q), stride_(stride) {}
  float operator()(const Fp8Rows& f, std::size_t hh, float* s) const {
    const float* q = q_ + hh * stride_;
    std::size_t t = 0;
    for (; t + kFp8ScoreRows <= f.nt; t += kFp8ScoreRows)
      fp8_scores_rows<kFp8ScoreRows>(f, t, q, s);
    for (; t < f.nt; ++t) fp8_scores_rows<1>(f, t, q, s);
    float m = kNegInf;
    for (t = 0; t < f.nt; ++t) m = std::max(m, s[t]);
    return m;
  }

 private:
  const float* q_;
  std::size_t stride_;
};

// Accumulator vectors the weighted sum keeps in registers over all rows of a tile: 8 (128
// floats, one scale tile, with AVX-512; 64 with AVX2), leaving room for the codes and the weight.
constexpr std::size_t kFp8AccVecs = 8;

// The online-softmax update of one head from FP8 rows: p = exp(s - m_new), then
// acc = alpha·acc + Σ_t p_t·c_t, a column chunk of kFp8AccVecs vectors at a time (its
// accumulators stay in registers for all nt rows); a chunk never crosses a scale tile, so each
// row's weight p_t · scale_tj is one broadcast per chunk.
void head_update(const Fp8Rows& f, std::size_t lat, float* s, float rows_max, HeadState& st) {
  const std::size_t nt = f.nt;
  const float alpha = st.sm.step(s, nt, round_up(nt, W), rows_max);
  const V va(alpha);
  constexpr std::size_t C = kFp8AccVecs * W;
  for (std::size_t j = 0, k0 = 0; k0 < lat; ++j, k0 += f.tile) {
    const std::size_t k1 = std::min(lat, k0 + f.tile);
    std::size_t c0 = k0;
    for (; c0 + C <= k1; c0 += C) {
      V acc[kFp8AccVecs];
      for (std::size_t v = 0; v < kFp8AccVecs; ++v)
        acc[v] = V::load_aligned(st.acc + c0 + v * W) * va;
      for (std::size_t t = 0; t < nt; ++t) {
        const std::uint8_t* r = f.row(t) + c0;
        const V p(s[t] * f.scale(t, j));
        for (std::size_t v = 0; v < kFp8AccVecs; v += 2) {
          V lo, hi;
          load_e4m3_scaled2(r + v * W, lo, hi);
          acc[v] = xsimd::fma(p, lo, acc[v]);
          acc[v + 1] = xsimd::fma(p, hi, acc[v + 1]);
        }
      }
      for (std::size_t v = 0; v < kFp8AccVecs; ++v) acc[v].store_aligned(st.acc + c0 + v * W);
    }
    // The rest of a scale tile narrower than a chunk (d_c not a multiple of it): through memory.
    for (std::size_t c = c0; c < k1; c += W)
      (V::load_aligned(st.acc + c) * va).store_aligned(st.acc + c);
    for (std::size_t t = 0; t < nt && c0 < k1; ++t) {
      const V p(s[t] * f.scale(t, j));
      for (std::size_t c = c0; c < k1; c += W) {
        xsimd::fma(p, load_e4m3_scaled(f.row(t) + c), V::load_aligned(st.acc + c))
            .store_aligned(st.acc + c);
      }
    }
  }
}

// ---- the per-head path in lanes (AVX-512): widening without shuffles -----------------------
// Measured, the fused path above was bound by its widening, not by its FMAs: every 16 codes
// take a byte permute and two vcvtph2ps (shuffle-unit instructions; a few per cycle at most),
// and one head uses each widened number only twice. This path widens with shifts and a mask
// alone, which run on every vector ALU. The price is an order: a 32-bit lane holds 4 codes, so
// one 64-byte load gives 4 vectors where vector b, lane i holds code 4i + b of those 64. Scores
// do not care (the query is stored in the same order, once per step) and the weighted sum keeps
// its accumulators in that order, put back in place once per item.
//
// Lane i's code in byte b, moved to bits 31..24 then shifted right arithmetically by 4 (the
// widening below does it with 16-bit shifts), is `s sss s eeee mmm ...`: cleared to bit 31 and
// bits 26..20 it is the
// float `s 0000eeee mmm000...` = the e4m3 value times 2^-120, exactly (e4m3's exponent bias is 7,
// a float's 127; an e4m3 subnormal m·2^-9 becomes the float subnormal m·2^-129). The 2^120 goes
// into each row's per-tile scale, in two parts that keep every intermediate a normal float:
//
//     score:   s_t   = Σ_j (scale_tj · 2^56) · Σ_k (2^64 q_k) · x_k  +  q_rope · k_rope
//     update:  acc'  += (p_t · scale_tj · 2^88) · x_k,      acc = 2^32 · acc'
//
// (x_k = code k widened, 2^-120 of its value). That needs scale ≤ 2^39 (so scale · 2^88 is
// finite; the cache reports its largest) and |q| < 2^62 (so 2^64 q is): far beyond any real
// latent or query, and where it does not hold the path declines and the generic one runs.
//
// Unlike the generic path it works a whole 64-token tile at a time: the scores of all its rows,
// one softmax step, then the weighted sum with each 128-column chunk's accumulators in registers
// over all 64 rows (the tile, 42 KiB, is read from L1/L2 the second time). Per 8-row block, as
// before, the softmax step, the per-row weights and the accumulators' loads and stores took 6 of
// 51 ns per token (one Zen 4 core, cache in L3). The next tile is prefetched into L2 during the
// scores, a tile ahead: with 8 rows (5 KiB) ahead, as before, the kernel ran at the bf16
// kernel's speed on one core at H = 1, T = 65536 (0.9-1.0x, where one core reads ~15 GB/s,
// bound by the misses it has in flight); a tile ahead, 1.5-1.9x (in CPU time, under load).
#if defined(__AVX512F__)

// 64 codes at p as 4 vectors (vector b, lane i = code 4i + b), each 2^-120 times its value. The
// shifts work on 16-bit words, two codes at a time: an arithmetic shift of [code 3 | code 2] by 4
// leaves code 3 where a float needs it; [code 1 | code 0] needs a move up by 16 more; codes 0
// and 2 first move up into the high byte of their words. 5 shifts and 4 masks per 64 codes
// (shifts per code: 7 with 32-bit shifts alone, measured 20% slower).
inline void widen_e4m3_lanes(const std::uint8_t* p, __m512 f[4]) {
  const __m512i x = _mm512_loadu_si512(p);
  const __m512i keep = _mm512_set1_epi32(static_cast<int>(0x87F00000u));
  const __m512i odd = _mm512_srai_epi16(x, 4);                         // codes 3 and 1
  const __m512i even = _mm512_srai_epi16(_mm512_slli_epi16(x, 8), 4);  // codes 2 and 0
  f[0] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(even, 16), keep));
  f[1] = _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(odd, 16), keep));
  f[2] = _mm512_castsi512_ps(_mm512_and_si512(even, keep));
  f[3] = _mm512_castsi512_ps(_mm512_and_si512(odd, keep));
}

constexpr float kLaneQ = 0x1p64f;       // the query's factor
constexpr float kLaneScore = 0x1p56f;   // the scale's factor in a score: 2^120 / 2^64
constexpr float kLaneWeight = 0x1p88f;  // the scale's factor in a weight: 2^120 / 2^32
constexpr float kLaneAcc = 0x1p32f;     // acc = 2^32 · acc'

// Where code k of a row sits in lane order: chunk of 64, then vector b = k % 4, lane i = k / 4.
inline std::size_t lane_index(std::size_t k) {
  const std::size_t base = k / 64 * 64, i = (k - base) / 4, b = (k - base) % 4;
  return base + 16 * b + i;
}

// Scores of rows [t, t + R): q (lat) is 2^64 times the scaled query latent in lane order, qr
// (rope) the scaled rope query as it is. R rows share each query load; two accumulators per row
// (2R FMA chains), folded per scale tile.
template <int R>
inline void lane_scores(const Fp8Rows& f, std::size_t t, const float* q, const float* qr,
                        float* s) {
  __m512 tot[R];
  for (int i = 0; i < R; ++i) tot[i] = _mm512_setzero_ps();
  for (std::size_t j = 0, k0 = 0; k0 < f.lat; ++j, k0 += f.tile) {
    const std::size_t k1 = std::min(f.lat, k0 + f.tile);
    __m512 a[R], b[R];
    for (int i = 0; i < R; ++i) a[i] = b[i] = _mm512_setzero_ps();
    for (std::size_t k = k0; k < k1; k += 64) {
      const __m512 q0 = _mm512_load_ps(q + k), q1 = _mm512_load_ps(q + k + 16),
                   q2 = _mm512_load_ps(q + k + 32), q3 = _mm512_load_ps(q + k + 48);
      for (int i = 0; i < R; ++i) {
        __m512 x[4];
        widen_e4m3_lanes(f.row(t + i) + k, x);
        a[i] = _mm512_fmadd_ps(q0, x[0], a[i]);
        b[i] = _mm512_fmadd_ps(q1, x[1], b[i]);
        a[i] = _mm512_fmadd_ps(q2, x[2], a[i]);
        b[i] = _mm512_fmadd_ps(q3, x[3], b[i]);
      }
    }
    for (int i = 0; i < R; ++i) {
      tot[i] = _mm512_fmadd_ps(_mm512_add_ps(a[i], b[i]),
                               _mm512_set1_ps(f.raw_scale(t + i, j) * kLaneScore), tot[i]);
    }
  }
  for (std::size_t k = 0; k < f.rope; k += 16) {
    const __m512 qv = _mm512_load_ps(qr + k);
    for (int i = 0; i < R; ++i) {
      const auto* r16 = reinterpret_cast<const std::uint16_t*>(f.row(t + i) + f.rope_offset);
      tot[i] = _mm512_fmadd_ps(qv, load_bf16(r16 + k).data, tot[i]);
    }
  }
  for (int i = 0; i < R; ++i) s[t + i] = _mm512_reduce_add_ps(tot[i]);
}

// acc' (lat, lane order) = alpha·acc' + Σ_t w_tj · x_t over the tile's rows, C 64-code chunks
// (4C accumulators in registers) from column c0, with w_tj = p_t · scale_tj: p (nt) the rows'
// softmax weights times 2^88 (so w_tj is exact, a power of two times p_t). Computed here, one
// multiply per row and chunk: a table of the w_tj, filled by a scalar loop over rows and scale
// tiles, cost 3 of 45 ns per token.
template <int C>
inline void lane_update_chunks(const Fp8Rows& f, std::size_t c0, const float* p, __m512 alpha,
                               float* acc) {
  __m512 o[4 * C];
  for (int v = 0; v < 4 * C; ++v) o[v] = _mm512_mul_ps(_mm512_load_ps(acc + c0 + 16 * v), alpha);
  for (std::size_t t = 0; t < f.nt; ++t) {
    const std::uint8_t* r = f.row(t);
    // o[] stays in registers only if these loops are unrolled (in a micro-benchmark built at -O2
    // GCC did not unroll them and o[] went through the stack: 2x slower).
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const std::size_t k = c0 + 64 * static_cast<std::size_t>(c);
      const __m512 wt = _mm512_set1_ps(p[t] * f.raw_scale(t, k / f.tile));
      __m512 x[4];
      widen_e4m3_lanes(r + k, x);
#pragma GCC unroll 4
      for (int b = 0; b < 4; ++b) o[4 * c + b] = _mm512_fmadd_ps(wt, x[b], o[4 * c + b]);
    }
  }
  for (int v = 0; v < 4 * C; ++v) _mm512_store_ps(acc + c0 + 16 * v, o[v]);
}

constexpr int kLaneChunks = 2;

// Whether the lane-order paths (this one and v13's) can take an item of this cache: whole
// 64-code chunks, and every scale small enough for the 2^88 folded into the weights.
bool lanes_fit(const LatentCache& cache) {
  return cache.lat_stride() % 64 == 0 && cache.fp8_tile() % 64 == 0 &&
         cache.fp8_scale_max() <= 0x1p39f;
}

// An item's queries for the lane-order paths: q (it.nh, stride), each head's [2^64 q_lat in lane
// order (lat_stride) | q_rope as pack_query_row packs it]. False (decline) if 2^64 q could
// overflow.
bool pack_lane_queries(const DecodeArgs& a, const Item& it, std::size_t lat, std::size_t stride,
                       float* q) {
  static thread_local AlignedVec packed;  // (stride) one head's query as pack_query_row gives it
  grow(packed, stride);
  for (std::size_t hh = 0; hh < it.nh; ++hh) {
    const std::size_t h = it.b * a.heads + it.h0 + hh;
    pack_query_row(a.q_lat + h * a.d_c, a.q_rope + h * a.d_r, a, lat, stride, packed.data());
    float* qh = q + hh * stride;
    for (std::size_t k = 0; k < lat; ++k) {
      if (std::isfinite(packed[k]) && !(std::fabs(packed[k]) < 0x1p62f)) return false;
      qh[lane_index(k)] = packed[k] * kLaneQ;
    }
    std::copy(packed.data() + lat, packed.data() + stride, qh + lat);
  }
  return true;
}

// An item's partial result from lane-order accumulators acc (it.nh, lat) = 2^-32 o: o back in
// column order into it.part (the layout of partial_of), with each head's max and sum.
void store_lane_outputs(const Item& it, std::size_t lat, const float* acc,
                        const std::vector<OnlineSoftmax>& sm) {
  for (std::size_t hh = 0; hh < it.nh; ++hh) {
    const float* ah = acc + hh * lat;
    float* o = it.part + hh * lat;
    for (std::size_t k = 0; k < lat; ++k) o[k] = ah[lane_index(k)] * kLaneAcc;
    store_softmax(it, hh, lat, sm[hh]);
  }
}

bool fp8_per_head_lanes(const LatentCache& cache, std::size_t length, const DecodeArgs& a,
                        const Item& it) {
  const std::size_t lat = cache.lat_stride(), stride = cache.stride();
  const std::size_t nh = it.nh, tile = cache.fp8_tile();
  if (!lanes_fit(cache)) return false;
  PerHeadScratch& ws = per_head_scratch();
  grow(ws.q, nh * stride);
  grow(ws.acc, nh * lat);
  grow(ws.s, kTile);
  if (!pack_lane_queries(a, it, lat, stride, ws.q.data())) return false;
  std::fill(ws.acc.begin(), ws.acc.begin() + nh * lat, 0.0f);
  std::vector<OnlineSoftmax> sm(nh);
  const std::size_t rb = cache.row_bytes();
  for (std::size_t i = it.tile_begin; i < it.tile_end; ++i) {
    const Fp8Rows f{cache.tile_fp8(i),        tile_tokens(length, i),  rb,          lat, tile,
                    cache.fp8_scale_offset(), cache.fp8_rope_offset(), stride - lat};
    // The next tile (anywhere in memory: the hardware prefetcher would start it cold), asked
    // for while this one is scored, 4 rows per 4 rows scored.
    const std::uint8_t* next = i + 1 < it.tile_end ? cache.tile_fp8(i + 1) : nullptr;
    for (std::size_t hh = 0; hh < nh; ++hh) {
      const float* q = ws.q.data() + hh * stride;
      float* s = ws.s.data();
      std::size_t t = 0;
      for (; t + 4 <= f.nt; t += 4) {
        if (next && hh == 0) {
          for (std::size_t b = t * rb; b < (t + 4) * rb; b += 64)
            __builtin_prefetch(next + b, 0, 2);
        }
        lane_scores<4>(f, t, q, q + lat, s);
      }
      for (; t < f.nt; ++t) lane_scores<1>(f, t, q, q + lat, s);
      float m = kNegInf;
      for (t = 0; t < f.nt; ++t) m = std::max(m, s[t]);
      const __m512 alpha = _mm512_set1_ps(sm[hh].step(s, f.nt, round_up(f.nt, W), m));
      // p_t · 2^88 in place (step padded s to a multiple of 16 with zeros).
      for (t = 0; t < f.nt; t += 16) {
        _mm512_store_ps(s + t, _mm512_mul_ps(_mm512_load_ps(s + t), _mm512_set1_ps(kLaneWeight)));
      }
      float* acc = ws.acc.data() + hh * lat;
      std::size_t c0 = 0;
      for (; c0 + 64 * kLaneChunks <= lat; c0 += 64 * kLaneChunks)
        lane_update_chunks<kLaneChunks>(f, c0, s, alpha, acc);
      for (; c0 < lat; c0 += 64) lane_update_chunks<1>(f, c0, s, alpha, acc);
    }
  }
  store_lane_outputs(it, lat, ws.acc.data(), sm);
  return true;
}

#else

bool fp8_per_head_lanes(const LatentCache&, std::size_t, const DecodeArgs&, const Item&) {
  return false;  // narrower SIMD: the generic per-head path
}

#endif

}  // namespace

void mla_decode_v7(const SeqRef* seqs, const DecodeArgs& a) {
  check_seqs(seqs, a, CacheType::FP8);
  decode_split<std::uint8_t>(seqs, a);
}

// ============================================================================================
// version 8: every head block of a sequence over each tile while it is in cache
// ============================================================================================
// v5 makes one work item per (sequence, head block, chunk): at 128 heads two items read the same
// tiles, each from memory (or L3), and a bf16 tile is widened once per head block. v8's item is a
// (sequence, chunk) and holds the state of several head blocks (packed queries, transposed output
// accumulators, m, l: ~290 KiB per 64 heads): for each tile, every head block of the pass runs
// block_tile on it while it sits in L2, so a tile comes from memory, and is widened, once per
// pass. A pass is as many head blocks as fit, with their tile, in this core's L2 (read at run time
// from the OS; 512 KiB if it does not say): with a smaller L2 the states would spill instead of
// the tile, and re-reading the tile per head block is the cheaper of the two. Within a tile, one
// group of heads meets every token before the next group's packed queries are read.
//
// Measured on a Zen 4 (1 MiB L2, AVX-512 as two halves), in FLOPs per CPU-second (the machine was
// shared): v8 equals v5 within the noise (±3%) at 16 to 128 heads; the tiles never were the
// bottleneck there (a 64-head block spends ~75 µs of FMAs per 147 KiB tile: 2 GB/s). A software
// prefetch of the next tile, spread over this tile's scores, measured 5% slower at 16 heads and
// was dropped; so was a weighted sum with heads in rows and latent columns in lanes (a cache row
// loaded as it lies, each probability broadcast: half a load per FMA instead of one), which
// measured ~10% slower than v4's micro-kernel at 16, 32 and 128 heads. Fewer than 8 heads
// (memory-bound) run v5's per-head path unchanged.

namespace {

// This core's L2 in bytes: the OS's answer (glibc's sysconf), 512 KiB if it gives none.
std::size_t l2_bytes() {
  static const std::size_t bytes = [] {
    long n = -1;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    n = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return n > 0 ? static_cast<std::size_t>(n) : std::size_t{512} << 10;
  }();
  return bytes;
}

// Head blocks per pass over the cache: as many as fit in 3/4 of L2 with one tile (the rest for
// the tile's float copy with a bf16 cache, the scores, the stack), at least one.
std::size_t blocks_per_pass(const HeadBlocks& blocks, std::size_t lat, std::size_t stride,
                            std::size_t tile_bytes) {
  const std::size_t state = sizeof(float) * blocks.lanes * (stride + lat + kTile);
  const std::size_t budget = l2_bytes() * 3 / 4;
  const std::size_t fit = budget > tile_bytes ? (budget - tile_bytes) / state : 0;
  return std::clamp<std::size_t>(fit, 1, blocks.count);
}

// One (sequence, chunk, pass) unit: items[k] (k < n) are the pass's head blocks over the same
// tiles, each with its own state, in groups of G heads.
template <class Elem, std::size_t G>
void run_shared_tiles(const LatentCache& cache, std::size_t length, const DecodeArgs& a,
                      const Item* items, std::size_t n) {
  const std::size_t lat = cache.lat_stride(), stride = cache.stride();
  static thread_local std::vector<BlockScratch> states;
  if (states.size() < n) states.resize(n);
  for (std::size_t k = 0; k < n; ++k) block_begin(states[k], a, items[k], G, lat, stride);
  const Item& first = items[0];
  for (std::size_t i = first.tile_begin; i < first.tile_end; ++i) {
    const RowView<const float> tile = float_tile<Elem>(cache, i, tile_tokens(length, i));
    for (std::size_t k = 0; k < n; ++k) block_tile<G, true>(states[k], tile, first.hb, lat);
  }
  for (std::size_t k = 0; k < n; ++k) block_end(states[k], items[k], G, lat);
}

// The driver of v8 and v9: items as v5 cuts them, ordered (sequence, head block, chunk) for the
// combine; a unit of work is (sequence, pass of head blocks, chunk).
template <class Elem>
void decode_shared(const SeqRef* seqs, const DecodeArgs& a) {
  const std::size_t B = a.batch, H = a.heads;
  if (B == 0) return;
  if (H < kPerHeadBelow) return decode_split<Elem>(seqs, a);
  const LatentCache& c0 = *seqs[0].cache;
  const std::size_t lat = c0.lat_stride();
  const int threads = std::max(a.threads, 1);
  const HeadBlocks blocks = head_blocks(H);
  const std::size_t per_pass = blocks_per_pass(blocks, lat, c0.stride(), c0.tile_bytes());
  const std::size_t passes = (blocks.count + per_pass - 1) / per_pass;

  const std::size_t chunks = kv_chunks(B * passes, threads);
  std::vector<Item> items;
  std::vector<std::size_t> first_item;
  struct Unit {
    std::size_t b, first, blocks, chunks;  // items[first + k·chunks]: its blocks, k < blocks
  };
  std::vector<Unit> units;
  for (std::size_t b = 0; b < B; ++b) {
    const std::size_t n_tiles = tiles_of(seqs[b].length);
    const std::size_t nc = std::max<std::size_t>(1, std::min(chunks, n_tiles));
    for (std::size_t blk = 0; blk < blocks.count; ++blk) {
      if (blk % per_pass == 0) {
        for (std::size_t c = 0; c < nc; ++c)
          units.push_back({b, items.size() + c, std::min(per_pass, blocks.count - blk), nc});
      }
      first_item.push_back(items.size());
      push_block_items(items, b, blk, blocks, H, n_tiles, nc);
    }
  }
  first_item.push_back(items.size());
  static thread_local AlignedVec parts;
  const std::size_t psize = part_size(blocks.lanes, lat);
  grow(parts, items.size() * psize);
  for (std::size_t i = 0; i < items.size(); ++i) items[i].part = parts.data() + i * psize;

  mla::parallel_for(static_cast<long>(units.size()), threads, [&](long u) {
    const Unit& un = units[static_cast<std::size_t>(u)];
    // The unit's items, one per head block, gathered (they are `chunks` apart in `items`).
    std::vector<Item> mine;
    for (std::size_t k = 0; k < un.blocks; ++k) mine.push_back(items[un.first + k * un.chunks]);
    const LatentCache& cache = *seqs[un.b].cache;
    if (blocks.wide) {
      run_shared_tiles<Elem, kWideGroup>(cache, seqs[un.b].length, a, mine.data(), mine.size());
    } else {
      run_shared_tiles<Elem, kNarrowGroup>(cache, seqs[un.b].length, a, mine.data(), mine.size());
    }
  });
  combine(items, first_item, lat, a, threads);
}

}  // namespace

void mla_decode_v8(const SeqRef* seqs, const DecodeArgs& a) {
  check_seqs(seqs, a, CacheType::F32);
  decode_shared<float>(seqs, a);
}

// ============================================================================================
// version 9: v8 on a bf16 cache
// ============================================================================================
// v6's element-type hooks (cache_tile, float_tile) on v8's driver: a bf16 tile is widened into
// floats once per pass of head blocks instead of once per head block (twice at 128 heads
// where the L2 holds both blocks).
// Fewer than 8 heads run v6's per-head path (vdpbf16ps where the CPU has it).

void mla_decode_v9(const SeqRef* seqs, const DecodeArgs& a) {
  check_seqs(seqs, a, CacheType::BF16);
  decode_shared<std::uint16_t>(seqs, a);
}

// ============================================================================================
// versions 10 and 11: few heads, register-blocked
// ============================================================================================
// Below 8 heads, v5 and v6 run v3's per-head tiles: each head scores the tile alone (a query
// vector and four rows loaded per four FMAs, then a sum across lanes per token) and then sweeps
// its 512 accumulators through memory once per four tokens (a load and a store of the
// accumulator per four FMAs). Loads, not FMAs, set their pace, and at 4 heads the tile is read
// four times over. There the step should be memory-bound (4 heads: 3.8 FLOP per fp32 byte, 7.5
// per bf16 byte), yet v5 reached only 30-56 % of the read bandwidth on a Zen 4, and v6 1.4×
// v5's speed with half the bytes.
//
// v10 (fp32 cache) and v11 (bf16) keep all the heads of an item in registers at once, in groups
// of NH ∈ {4, 2, 1} heads (5 heads = 4 + 1, 7 = 4 + 2 + 1), and do so up to 15 heads
// (kFewHeadsBelow: where a head block would leave lanes idle, this path is faster):
//   scores:       NT = W / NH tokens × NH heads = one accumulator per SIMD lane (16 with
//                 AVX-512). Per vector of k: NT row loads and NH query loads feed NT·NH FMAs;
//                 at the end, sum_lanes turns the W accumulators into one vector of W scores
//                 (a transpose-and-add tree, not one sum across lanes per score).
//   weighted sum: NH heads × NC vectors of latent columns in registers (NH·NC = 16 with
//                 AVX-512's 32 registers, 8 with 16) for the whole tile: per token NC row loads
//                 and NH broadcasts of p feed NH·NC FMAs; each accumulator is loaded (and
//                 rescaled by alpha) and stored once per tile, not once per four tokens.
// A bf16 row is widened while it is loaded (load_row), so v11 reads half of v10's bytes and
// does the same FMAs. Both ask for the next tile while they work on this one, at a steady pace
// over the scores and the weighted sum (TilePrefetch). At 16 heads and more v11 is v6, and v10
// is v5 with one addition: the head-blocked path asks for the next tile while it scores this one
// (v12's prefetch, a line per step of the scores; on a Zen 4 +9-12% at H = 16, T = 32768, 2-8%
// elsewhere, one thread).

namespace {

// Accumulators a micro-kernel below may hold: half the register file (AVX-512: 32 registers;
// AVX2 and SSE: 16), the rest for the rows and broadcasts feeding them.
constexpr int kFewAcc = W >= 16 ? 16 : 8;

// The W sums across lanes of acc[0..W) as one vector: lane i = Σ acc[i]. With AVX-512, a
// transpose-and-add tree: pairs are added within 128-bit lanes (unpack), then across them
// (shuffle_f32x4): 45 instructions for 16 sums instead of 16 separate reductions. (xsimd 8.1's
// haddp for AVX-512 returns lanes 2-5 and 10-13 in the wrong order, so it is not used.)
inline V sum_lanes(const V* acc) {
#if defined(__AVX512F__)
  static_assert(W == 16, "the AVX-512 build holds 16 floats per vector");
  __m512 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    const __m512 a = acc[2 * i], b = acc[2 * i + 1];
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  }
  for (int g = 0; g < 4; ++g) {  // per 128-bit lane k: rows 4g..4g+3, summed over lane k
    const __m512d a = _mm512_castps_pd(t[2 * g]), b = _mm512_castps_pd(t[2 * g + 1]);
    // (the pd unpacks move pairs of floats; the add is on floats)
    u[g] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  for (int i = 0; i < 2; ++i) {  // [u.(q0+q1), u.(q2+q3), v.(q0+q1), v.(q2+q3)]
    const __m512 a = u[2 * i], b = u[2 * i + 1];
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
#else
  alignas(64) float sum[W];
  for (std::size_t i = 0; i < W; ++i) sum[i] = xsimd::hadd(acc[i]);
  return V::load_aligned(sum);
#endif
}

// Keep v in a register. Where one loaded (or broadcast) vector feeds several FMAs, GCC folds the
// load into each of them as a memory operand: one load per FMA instead of one per vector, and
// the loads, not the FMAs, set the pace (a Zen 4 core loads one 512-bit vector per cycle and
// issues one 512-bit FMA). An empty asm that claims to change v makes the compiler hold it in a
// register. Elsewhere (other compilers or CPUs) a no-op.
inline void pin(V& v) {
#if defined(__GNUC__) && defined(__x86_64__) && defined(__AVX512F__)
  __m512 r = v;
  asm("" : "+v"(r));
  v = r;
#elif defined(__GNUC__) && defined(__x86_64__) && defined(__AVX__)
  __m256 r = v;
  asm("" : "+x"(r));
  v = r;
#else
  (void)v;
#endif
}

// The same item's next tile, asked for into L2 at a steady pace while this one is worked on:
// step() is called once per step of the micro-kernels' loops — the scores' and the weighted
// sum's, of every head group — and asks for the tile's cache lines in order, as many per step
// as puts the last one out with the last step (`steps`, counted by the caller from the loops it
// will run). So the next tile's first loads do not wait for memory (a tile need not follow the
// one before it in memory, and there the hardware prefetcher starts cold), and the core keeps
// the memory busy all the time, not in bursts. Asking for the whole next tile during the scores
// alone (what v10 did first) left the memory idle during the weighted sum, about half of the
// step, and a core's demand came in bursts of twice its average. Measured on whole steps
// (2026-12-07, Zen 4; both versions in one program, steps alternating, the L3 flushed before
// each; medians of 9): with 2 threads at T = 65,536, v10 +13% at 4 heads (+20% with B = 4 ×
// 16,384), +1% at 2, +7% at 1; v11 (as v12, which runs this path below 16 heads) +16%, +15%,
// +11%; at T = 32,768 v10 +38% at 8 heads and +30% at 12 (there it no longer waits for memory
// between tiles), v12 +1-3%. One thread (CPU time): v10 +43-48% at 4 heads, v12 +34% at 1 and 2.
// Pacing the prefetch to end at 80% of the steps instead: slower than at the end; at 50%
// (about the end of the scores): no gain at all. The same pace in v13's FP8 path (its weighted
// sum reads a 38 KiB tile that L1 nearly holds): 10% slower at 4 and 8 heads — v13 keeps its
// prefetch in the scores. Nor does the head-blocked path's scores micro-kernel use this class
// (it asks for a line per step of its k loop while a counter allows): stepping a TilePrefetch
// there cost v10 1-5% and v12 0-1% at 16 to 128 heads, whether the micro-kernel stepped the
// caller's object or a copy of it (not looked into further; the old form is one compare with
// the loop counter).
class TilePrefetch {
 public:
  TilePrefetch() = default;  // nothing to ask for
  TilePrefetch(const void* tile, std::size_t bytes, std::size_t steps)
      : next_(static_cast<const char*>(tile)),
        end_(next_ + round_up(bytes, 64)),
        rate_(steps ? (round_up(bytes, 64) / 64 * 256 + steps - 1) / steps : 0) {}
  void step() {
    if (next_ >= end_) return;
    due_ += rate_;  // in 1/256ths of a line
    for (; due_ >= 256 && next_ < end_; due_ -= 256, next_ += 64) __builtin_prefetch(next_, 0, 2);
  }

 private:
  const char* next_ = nullptr;
  const char* end_ = nullptr;
  std::size_t rate_ = 0, due_ = 0;  // lines per step, and lines due, × 256
};

// Scores of NH heads against one tile: s (NH rows of ls floats) [h][t] = q[h] · row t.
// tile: (nt, stride) of Elem; q: (NH, ldq) packed queries (pack_query_row), 64-byte aligned.
// One pf.step() per step of the k loop: few_scores_steps of them.
template <int NH>
std::size_t few_scores_steps(std::size_t nt, std::size_t stride) {
  constexpr std::size_t NT = W / NH;
  return (nt + NT - 1) / NT * ((stride + W - 1) / W);
}
template <int NH, class Elem>
void few_scores(RowView<const Elem> tile, const float* q, std::size_t ldq, float* s, std::size_t ls,
                TilePrefetch& pf) {
  constexpr int NT = static_cast<int>(W) / NH;  // NT·NH = W accumulators: one sum_lanes
  const std::size_t nt = tile.rows(), stride = tile.cols();
  for (std::size_t t0 = 0; t0 < nt; t0 += NT) {
    const std::size_t n = std::min<std::size_t>(NT, nt - t0);
    const Elem* r[NT];
    for (int i = 0; i < NT; ++i) r[i] = tile.row(t0 + std::min<std::size_t>(i, n - 1));
    V acc[W];  // acc[i·NH + h]: token t0 + i, head h (past the tile's end: a repeat, discarded)
    for (std::size_t i = 0; i < W; ++i) acc[i] = V(0.0f);
    for (std::size_t k = 0; k < stride; k += W) {
      V c[NT];
      for (int i = 0; i < NT; ++i) c[i] = load_row(r[i] + k);
      pf.step();
      for (int h = 0; h < NH; ++h) {
        V qh = V::load_aligned(q + h * ldq + k);
        if constexpr (NT > 1) pin(qh);  // one load for NT FMAs
        for (int i = 0; i < NT; ++i) acc[i * NH + h] = xsimd::fma(c[i], qh, acc[i * NH + h]);
      }
    }
    alignas(64) float sum[W];
    sum_lanes(acc).store_aligned(sum);
    for (std::size_t i = 0; i < n; ++i)
      for (int h = 0; h < NH; ++h) s[h * ls + t0 + i] = sum[i * NH + h];
  }
}

// NC vectors of latent columns from j of NH heads' accumulators, over the whole tile:
// acc[h][j..] = alpha[h]·acc[h][j..] + Σ_t p[h][t]·row_t[j..]; a pf.step() per token.
// rows: (nt, ≥ j + NC·W) of Elem; p: (NH, ldp); acc: (NH, lda).
template <int NH, int NC, class Elem>
void few_pv_block(RowView<const Elem> rows, std::size_t j, const float* p, std::size_t ldp,
                  const float* alpha, float* acc, std::size_t lda, TilePrefetch& pf) {
  V o[NH][NC];
  for (int h = 0; h < NH; ++h) {
    const V al(alpha[h]);
    for (int c = 0; c < NC; ++c) o[h][c] = V::load_aligned(acc + h * lda + j + c * W) * al;
  }
  for (std::size_t t = 0; t < rows.rows(); ++t) {
    const Elem* r = rows.row(t) + j;
    V x[NC];
    for (int c = 0; c < NC; ++c) x[c] = load_row(r + c * W);
    pf.step();
    for (int h = 0; h < NH; ++h) {
      V ph(p[h * ldp + t]);
      if constexpr (NC > 1) pin(ph);  // one broadcast for NC FMAs
      for (int c = 0; c < NC; ++c) o[h][c] = xsimd::fma(x[c], ph, o[h][c]);
    }
  }
  for (int h = 0; h < NH; ++h)
    for (int c = 0; c < NC; ++c) o[h][c].store_aligned(acc + h * lda + j + c * W);
}

// The weighted sum of NH heads over the latent columns of a tile, NC vectors at a time (fewer
// for the last columns: lat_stride is a multiple of 16, not of NC·W); few_pv_steps pf.step()s.
template <int NC>
std::size_t few_pv_steps(std::size_t nt, std::size_t lat) {
  const std::size_t blocks = lat / (NC * W), rest = lat - blocks * NC * W;
  if constexpr (NC > 1) {
    if (rest) return blocks * nt + few_pv_steps<NC / 2>(nt, rest);
  }
  return blocks * nt;
}
template <int NH, int NC, class Elem>
void few_pv(RowView<const Elem> rows, const float* p, std::size_t ldp, const float* alpha,
            float* acc, std::size_t lda, TilePrefetch& pf) {
  const std::size_t lat = rows.cols();
  std::size_t j = 0;
  for (; j + NC * W <= lat; j += NC * W) few_pv_block<NH, NC>(rows, j, p, ldp, alpha, acc, lda, pf);
  if constexpr (NC > 1) {
    if (j < lat) few_pv<NH, NC / 2>(rows.cols_range(j, lat - j), p, ldp, alpha, acc + j, lda, pf);
  }
}

// Heads [h, h + n) of an item as groups of 4, 2 and 1: fn(NH constant, first head).
template <class Fn>
void for_head_groups(std::size_t nh, Fn&& fn) {
  std::size_t h = 0;
  for (; h + 4 <= nh; h += 4) fn(std::integral_constant<int, 4>{}, h);
  if (h + 2 <= nh) fn(std::integral_constant<int, 2>{}, h), h += 2;
  if (h < nh) fn(std::integral_constant<int, 1>{}, h);
}

template <class Elem>
void run_few_heads(const LatentCache& cache, std::size_t length, const DecodeArgs& a,
                   const Item& it) {
  const std::size_t lat = cache.lat_stride(), stride = cache.stride(), nh = it.nh;
  PerHeadScratch& ws = per_head_scratch();  // the per-head path's buffers, sized for this one
  grow(ws.q, nh * stride);
  grow(ws.acc, nh * lat);
  grow(ws.s, nh * kTile);
  grow(ws.alpha, nh);
  std::vector<OnlineSoftmax> sm(nh);
  pack_item_queries(a, it, lat, stride, ws.q.data());
  std::fill(ws.acc.begin(), ws.acc.begin() + nh * lat, 0.0f);
  float *S = ws.s.data(), *acc = ws.acc.data(), *alpha = ws.alpha.data();
  for (std::size_t i = it.tile_begin; i < it.tile_end; ++i) {
    const std::size_t nt = tile_tokens(length, i);
    const RowView<const Elem> tile = cache_tile<Elem>(cache, i, nt);
    TilePrefetch pf;
    if (i + 1 < it.tile_end) {
      std::size_t steps = 0;
      for_head_groups(nh, [&](auto NH, std::size_t) {
        steps += few_scores_steps<NH()>(nt, stride) + few_pv_steps<kFewAcc / NH()>(nt, lat);
      });
      const std::size_t next_nt = tile_tokens(length, i + 1);
      pf = TilePrefetch(cache_tile<Elem>(cache, i + 1, next_nt).data(),
                        next_nt * stride * sizeof(Elem), steps);
    }
    for_head_groups(nh, [&](auto NH, std::size_t h) {
      few_scores<NH()>(tile, ws.q.data() + h * stride, stride, S + h * kTile, kTile, pf);
    });
    for (std::size_t hh = 0; hh < nh; ++hh) {
      float* s = S + hh * kTile;
      const float tile_max = *std::max_element(s, s + nt);
      alpha[hh] = sm[hh].step(s, nt, round_up(nt, W), tile_max);
    }
    const RowView<const Elem> lat_rows = tile.cols_range(0, lat);
    for_head_groups(nh, [&](auto NH, std::size_t h) {
      few_pv<NH(), kFewAcc / NH()>(lat_rows, S + h * kTile, kTile, alpha + h, acc + h * lat, lat,
                                   pf);
    });
  }
  std::copy(acc, acc + nh * lat, it.part);  // the layout of partial_of
  for (std::size_t hh = 0; hh < nh; ++hh) store_softmax(it, hh, lat, sm[hh]);
}

// v10's tiles: v5's, the next one prefetched; fewer than 16 heads take run_few_heads.
struct PrefetchedTiles : FloatTiles {
  static const char* next(const LatentCache& c, std::size_t i) {
    return reinterpret_cast<const char*>(c.tile_f32(i));
  }
  static constexpr bool few_heads = true;
};

// v11's tiles: v6's (widened, no prefetch); fewer than 16 heads take run_few_heads.
struct FewHeadsTiles : FloatTiles {
  static constexpr bool few_heads = true;
};

}  // namespace

void mla_decode_v10(const SeqRef* seqs, const DecodeArgs& a) {
  check_seqs(seqs, a, CacheType::F32);
  decode_split<float, PrefetchedTiles>(seqs, a);
}

void mla_decode_v11(const SeqRef* seqs, const DecodeArgs& a) {
  check_seqs(seqs, a, CacheType::BF16);
  decode_split<std::uint16_t, FewHeadsTiles>(seqs, a);
}

// ============================================================================================
// version 12: v11 without the widened tile
// ============================================================================================
// v6's head-blocked path widens each bf16 tile into a float copy (64 × 576 numbers, 147 KiB)
// before its micro-kernels read it: a pass that writes twice the bytes it reads, into a copy
// that lives in L2. v12 hands the micro-kernels the bf16 tile as cached (decode_split with the
// CachedTiles policy below; scores_micro and pv_micro are written for either element type).
// Their broadcast operand, one cached number per FMA (per 2 FMAs at 32 heads), becomes one
// 32-bit load per pair of numbers, widened in registers: the low number by a shift, the high one
// by a mask, one vector instruction each. The products and sums are v6's, in v6's order: the
// outputs are the same to the bit. And v12 asks for the next tile while it scores this one,
// into L2, one cache line per step of the scores micro-kernel's k loop (a token group's share of
// the next tile, ~216 lines over ~7,000 FMAs at 16 heads): a tile need not follow the one before
// it in memory, and the scores read 12 rows side by side, which the hardware prefetcher follows
// late.
//
// Measured on a Zen 4 (AVX-512 in two halves; one thread, CPU time), v12 over v5 (fp32):
// 1.01-1.04x at H = 16, T = 4096; 1.15-1.20x at T = 32768 and 1.15-1.18x with B = 4 × 4096;
// 1.08-1.12x at 32 heads; 1.05-1.07x at 128. Over v6: 1.04-1.22x. Two threads: the README's
// v12 tables (83-96% of the FMA peak). The same prefetch in v5 (FloatTiles naming the next fp32
// tile) gains 9-12% at H = 16, T = 32768, 2-8% elsewhere: not done here, v5 stays as it was.
// What lost:
//  - the high number of a pair by the mask alone and the low one by the same mask on the word
//    two bytes earlier (one instruction per number, its load folded in, no shift; the first
//    pair of a row then needs the shift anyway, not to read before the tile): 3-5% slower than
//    shift and mask at 16 heads (its loads straddle cache lines, and it makes two per pair);
//  - the scores' rows widened into an L1 buffer, a token group (12 rows, 27 KiB) at a time, for
//    v5's float scores (v6's widening, but in L1 and fused with the scores; the weighted sum
//    still from bf16): 10% slower at 16 heads, 5% at 32, 3% at 128 — the stores cost more than
//    the shifts they save. (Split by phase, one thread, H = 16, T = 4096: v12's scores ran at
//    89% of the FMA peak, v5's at 93%; v12's weighted sum at 86%, v5's at 78%.)
//  - the prefetch as a burst of the token group's share before its scores: 3-5% instead of
//    10-15% at H = 16, T = 32768 (a burst fills the core's miss buffers and the loads behind it
//    wait); the whole next tile at once before a tile: +1%; 2, 3 or 4 tiles ahead: no better
//    than one; into L1 (hint T0) instead of L2: 7% slower. The burst version in v5 (a 147 KiB
//    fp32 tile) cost v5 4-8% at 16 heads — the line-per-step one gains, see above;
//  - vdpbf16ps (AVX512_BF16, two bf16 products a lane per instruction) was not built for this
//    path: on this Zen 4 a 512-bit vdpbf16ps issues at the rate of a 512-bit FMA (12 independent
//    chains: 0.27 ns each, as the FMA), so with the query split in two bf16 parts it does the
//    FMAs' work in as many instructions, and with the exact three-part split (split_bf16) in 1.5
//    times as many. Built and measured as a scores micro-kernel (2026-12-07; two parts, the pair
//    of cached numbers broadcast once for both): 113 GFLOP/s against v12's 109-113 with the tile
//    in L2, and at 4 heads (few_scores) 112-115 against 109 — a few percent at most, for an error
//    of up to 2^-16 of each query number (its second part rounded), where v12 has none. Then
//    built into the head-blocked step (the two-part queries packed per item, the micro-kernel
//    in place of v12's scores): -4% to +2% against v12 on whole steps (one thread, 16 heads,
//    1-32K tokens, both in one program, runs alternating) — dropped;
//  - the weighted sum's column group for a bf16 tile at 16 heads at 24 columns (24 accumulators,
//    half the probability loads): 3-4% slower than 12; at 8 or 16: within the noise (same way);
//  - the low number's shift with its load folded in (vpslld from a broadcast memory operand; GCC
//    does not fold it, so by inline asm): GCC then kept the accumulators on the stack, 40%
//    slower. In a loop of 12 rows with the load, shift, mask and two FMAs of each pair, all in
//    L1, the unfolded form already runs at the FMA peak (0.28 ns per FMA, as fp32's).
// Fewer than 16 heads run v11's (v10's) few-heads path.

namespace {

// Number E of the bf16 pair at p (p[0], p[1]; little-endian, so p[0] is the low half of the
// 32-bit word), in every lane: bf16 is a float's upper 16 bits, so p[1] is the word with its
// low half cleared and p[0] the word shifted up by 16. GCC folds the 32-bit load into a
// broadcast (vpbroadcastd); with 16 heads that is one shift or mask per FMA, which a Zen 4 runs
// beside its FMAs (on other pipes). On a CPU whose vector shifts and logic share the FMA ports
// (Intel's AVX-512 server cores: ports 0 and 5) it would cost FMA slots: measure v12 against v6
// and v5 there before choosing it.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "v12's broadcast_cached assumes a little-endian CPU"
#endif
template <std::size_t E>
inline V broadcast_cached(const std::uint16_t* p) {
  static_assert(E < 2, "a 32-bit load holds two bf16 numbers");
  using U = xsimd::batch<std::uint32_t>;
  std::uint32_t word;
  std::memcpy(&word, p, sizeof word);
  const U u(word);
  if constexpr (E == 0) {
    return xsimd::bitwise_cast<V>(u << 16);
  } else {
    return xsimd::bitwise_cast<V>(u & U(0xFFFF0000u));
  }
}

// v12's tiles: the cache's own numbers.
struct CachedTiles {
  template <class Elem>
  static RowView<const Elem> view(const LatentCache& c, std::size_t i, std::size_t nt) {
    return cache_tile<Elem>(c, i, nt);
  }
  static const char* next(const LatentCache& c, std::size_t i) {
    return reinterpret_cast<const char*>(c.tile_bf16(i));
  }
  static constexpr bool few_heads = true;  // below 16 heads: v11's path
  static bool few_heads_fit(const LatentCache&) { return true; }
};

}  // namespace

void mla_decode_v12(const SeqRef* seqs, const DecodeArgs& a) {
  check_seqs(seqs, a, CacheType::BF16);
  decode_split<std::uint16_t, CachedTiles>(seqs, a);
}

// ============================================================================================
// version 13: v7 with few heads in registers
// ============================================================================================
// v7's per-head lanes path runs one head at a time: every head widens every code of the tile
// twice (scores and weighted sum), 9 shift and mask instructions per 64 codes for 4 FMAs each.
// At 4 heads that is the step's cost: v7 reached 35-43% of the read bandwidth where the FP8
// step should be memory-bound (or 40-44% of the FMA peak where, at 13 FLOP per byte, it is
// not), while v10 and v12 read at the limit. v13 widens each 64 codes once for all the heads of
// an item, in groups of NH ∈ {4, 2, 1} heads (v10's for_head_groups), the codes in v7's lane
// order (widen_e4m3_lanes) and v7's powers of two folded into the scales:
//   scores:       two rows × NH heads at a time, per 64 codes: 2 rows widened (8 vectors),
//                 4 query vectors per head feeding 2 FMAs each; a row's sums are folded by its
//                 scale per 128 codes; 16 / NH rows × NH heads = 16 totals go through one
//                 sum_lanes.
//   weighted sum: 4 / NH chunks of 64 codes × NH heads in registers over the whole tile, per row
//                 the codes widened once and each head's weight (p · scale · 2^88, a table per
//                 tile) broadcast once.
// The next tile is asked for during the scores, each head group's pairs of rows a share. From 16
// heads v13 is v7 (each tile dequantized once into floats for v5's head blocks), plus the next
// tile prefetched during its scores. Without AVX-512, or with a scale above 2^39 in a cache,
// v13 splits the work as v7 does (head blocks from 8 heads); a query above 2^62 sends its item to
// v7's generic per-head path.

namespace {

#if defined(__AVX512F__)

// Scores of NH heads against the tile's rows: s (NH rows of ls floats) [h][t] = q[h] · row t.
// q: (NH, ldq) as pack_lane_queries packs them. pf: pf_bytes to prefetch, spread over the pairs
// of rows.
template <int NH>
void fp8_few_scores(const Fp8Rows& f, const float* q, std::size_t ldq, float* s, std::size_t ls,
                    const std::uint8_t* pf, std::size_t pf_bytes) {
  constexpr int RG = 16 / NH;              // rows per sum_lanes: RG · NH = 16 totals
  constexpr int P = NH >= 4 ? 1 : 4 / NH;  // accumulators per (row, head): 8 FMA chains
  const std::size_t pairs = (f.nt + 1) / 2, lines = pf ? (pf_bytes + 63) / 64 : 0;
  for (std::size_t t0 = 0; t0 < f.nt; t0 += RG) {
    V tot[16];  // tot[r · NH + h]: row t0 + r, head h — the order sum_lanes returns
    for (int r0 = 0; r0 < RG; r0 += 2) {
      const std::size_t pair = (t0 + static_cast<std::size_t>(r0)) / 2;
      for (std::size_t l = pair * lines / pairs; l < (pair + 1) * lines / pairs && pair < pairs;
           ++l)
        __builtin_prefetch(pf + 64 * l, 0, 2);
      std::size_t tr[2];  // past the tile's end: a repeat of its last row, discarded
      for (int i = 0; i < 2; ++i) tr[i] = std::min(t0 + static_cast<std::size_t>(r0 + i), f.nt - 1);
      const std::uint8_t* row[2] = {f.row(tr[0]), f.row(tr[1])};
      __m512 T[2][NH];
      for (int i = 0; i < 2; ++i)
        for (int h = 0; h < NH; ++h) T[i][h] = _mm512_setzero_ps();
      for (std::size_t j = 0, k0 = 0; k0 < f.lat; ++j, k0 += f.tile) {
        const std::size_t k1 = std::min(f.lat, k0 + f.tile);
        __m512 A[2][NH][P];
        for (int i = 0; i < 2; ++i)
          for (int h = 0; h < NH; ++h)
            for (int u = 0; u < P; ++u) A[i][h][u] = _mm512_setzero_ps();
        for (std::size_t k = k0; k < k1; k += 64) {
          __m512 x[2][4];
          widen_e4m3_lanes(row[0] + k, x[0]);
          widen_e4m3_lanes(row[1] + k, x[1]);
          for (int h = 0; h < NH; ++h) {
            for (int b = 0; b < 4; ++b) {
              V qv = V::load_aligned(q + h * ldq + k + 16 * b);
              pin(qv);  // one load for both rows
              A[0][h][b % P] = _mm512_fmadd_ps(qv, x[0][b], A[0][h][b % P]);
              A[1][h][b % P] = _mm512_fmadd_ps(qv, x[1][b], A[1][h][b % P]);
            }
          }
        }
        for (int i = 0; i < 2; ++i) {
          const __m512 sc = _mm512_set1_ps(f.raw_scale(tr[i], j) * kLaneScore);
          for (int h = 0; h < NH; ++h) {
            __m512 a = A[i][h][0];
            for (int u = 1; u < P; ++u) a = _mm512_add_ps(a, A[i][h][u]);
            T[i][h] = _mm512_fmadd_ps(a, sc, T[i][h]);
          }
        }
      }
      for (std::size_t k = 0; k < f.rope; k += 16) {
        __m512 x[2];
        for (int i = 0; i < 2; ++i)
          x[i] = load_bf16(reinterpret_cast<const std::uint16_t*>(row[i] + f.rope_offset) + k).data;
        for (int h = 0; h < NH; ++h) {
          const __m512 qv = _mm512_load_ps(q + h * ldq + f.lat + k);
          for (int i = 0; i < 2; ++i) T[i][h] = _mm512_fmadd_ps(qv, x[i], T[i][h]);
        }
      }
      for (int i = 0; i < 2; ++i)
        for (int h = 0; h < NH; ++h) tot[(r0 + i) * NH + h] = T[i][h];
    }
    alignas(64) float sum[16];
    sum_lanes(tot).store_aligned(sum);
    const std::size_t n = std::min<std::size_t>(RG, f.nt - t0);
    for (std::size_t r = 0; r < n; ++r)
      for (int h = 0; h < NH; ++h) s[h * ls + t0 + r] = sum[r * NH + h];
  }
}

// acc (NH, lda), lane order, = alpha · acc + Σ_t w_t · x_t over the tile's rows, C chunks of 64
// codes from c0. w: the weights p · scale · 2^88, w[t · ldw + h · ns + j] for row t, head h,
// scale tile j.
template <int NH, int C>
void fp8_few_pv(const Fp8Rows& f, std::size_t c0, const float* w, std::size_t ldw, std::size_t ns,
                const float* alpha, float* acc, std::size_t lda) {
  __m512 o[NH][C][4];
  for (int h = 0; h < NH; ++h) {
    const __m512 al = _mm512_set1_ps(alpha[h]);
    for (int c = 0; c < C; ++c)
      for (int b = 0; b < 4; ++b)
        o[h][c][b] = _mm512_mul_ps(_mm512_load_ps(acc + h * lda + c0 + 64 * c + 16 * b), al);
  }
  for (std::size_t t = 0; t < f.nt; ++t) {
    const std::uint8_t* r = f.row(t);
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const std::size_t k = c0 + 64 * static_cast<std::size_t>(c), j = k / f.tile;
      __m512 x[4];
      widen_e4m3_lanes(r + k, x);
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h) {
        V wv(w[t * ldw + h * ns + j]);
        pin(wv);  // one broadcast for four FMAs
#pragma GCC unroll 4
        for (int b = 0; b < 4; ++b) o[h][c][b] = _mm512_fmadd_ps(wv, x[b], o[h][c][b]);
      }
    }
  }
  for (int h = 0; h < NH; ++h)
    for (int c = 0; c < C; ++c)
      for (int b = 0; b < 4; ++b) _mm512_store_ps(acc + h * lda + c0 + 64 * c + 16 * b, o[h][c][b]);
}

// The weighted sum of NH heads over all the latent codes: 4 / NH chunks of 64 at a time (16
// accumulators), one at a time for the last ones (lat_stride is a multiple of 64 here).
template <int NH>
void fp8_few_pv_all(const Fp8Rows& f, const float* w, std::size_t ldw, std::size_t ns,
                    const float* alpha, float* acc, std::size_t lda) {
  constexpr int C = 4 / NH;
  std::size_t c0 = 0;
  for (; c0 + 64 * C <= f.lat; c0 += 64 * C) fp8_few_pv<NH, C>(f, c0, w, ldw, ns, alpha, acc, lda);
  if constexpr (C > 1) {
    for (; c0 < f.lat; c0 += 64) fp8_few_pv<NH, 1>(f, c0, w, ldw, ns, alpha, acc, lda);
  }
}

// An item of a cache that lanes_fit (decode_split asked Fp8FewTiles::few_heads_fit); false if its
// queries are too large for the lane order (pack_lane_queries).
bool fp8_few_heads(const LatentCache& cache, std::size_t length, const DecodeArgs& a,
                   const Item& it) {
  const std::size_t lat = cache.lat_stride(), stride = cache.stride(), nh = it.nh;
  PerHeadScratch& ws = per_head_scratch();
  grow(ws.q, nh * stride);
  grow(ws.acc, nh * lat);
  grow(ws.s, nh * kTile);
  grow(ws.alpha, nh);
  if (!pack_lane_queries(a, it, lat, stride, ws.q.data())) return false;
  std::fill(ws.acc.begin(), ws.acc.begin() + nh * lat, 0.0f);
  const std::size_t ns = cache.fp8_scales(), ldw = nh * ns, rb = cache.row_bytes();
  static thread_local AlignedVec wt;  // (kTile, nh, ns) this tile's weights
  grow(wt, kTile * ldw);
  std::vector<OnlineSoftmax> sm(nh);
  float *S = ws.s.data(), *acc = ws.acc.data(), *alpha = ws.alpha.data();
  for (std::size_t i = it.tile_begin; i < it.tile_end; ++i) {
    const std::size_t nt = tile_tokens(length, i);
    const Fp8Rows f{
        cache.tile_fp8(i),       nt,          rb, lat, cache.fp8_tile(), cache.fp8_scale_offset(),
        cache.fp8_rope_offset(), stride - lat};
    const std::uint8_t* next = i + 1 < it.tile_end ? cache.tile_fp8(i + 1) : nullptr;
    const std::size_t share = (cache.tile_bytes() + nh - 1) / nh;  // of the next tile, per head
    for_head_groups(nh, [&](auto NH, std::size_t h) {
      const std::size_t b0 = std::min(cache.tile_bytes(), h * share),
                        b1 = std::min(cache.tile_bytes(), (h + NH()) * share);
      fp8_few_scores<NH()>(f, ws.q.data() + h * stride, stride, S + h * kTile, kTile,
                           next ? next + b0 : nullptr, b1 - b0);
    });
    for (std::size_t hh = 0; hh < nh; ++hh) {
      float* s = S + hh * kTile;
      alpha[hh] = sm[hh].step(s, nt, round_up(nt, W), *std::max_element(s, s + nt));
      for (std::size_t t = 0; t < nt; ++t)
        for (std::size_t j = 0; j < ns; ++j)
          wt[t * ldw + hh * ns + j] = s[t] * f.raw_scale(t, j) * kLaneWeight;
    }
    for_head_groups(nh, [&](auto NH, std::size_t h) {
      fp8_few_pv_all<NH()>(f, wt.data() + h * ns, ldw, ns, alpha + h, acc + h * lat, lat);
    });
  }
  store_lane_outputs(it, lat, acc, sm);
  return true;
}

#else

bool fp8_few_heads(const LatentCache&, std::size_t, const DecodeArgs&, const Item&) {
  return false;  // narrower SIMD: v7's paths
}

#endif

// v13's tiles: v7's (dequantized into floats for the head blocks), the next one prefetched;
// fewer than 16 heads take run_few_heads, which for an FP8 cache is fp8_few_heads — where its
// lane-order codes fit (an AVX-512 build, lanes_fit). Elsewhere v7's split: from 8 heads its
// head blocks, which beat one head at a time there.
struct Fp8FewTiles : FloatTiles {
  static const char* next(const LatentCache& c, std::size_t i) {
    return reinterpret_cast<const char*>(c.tile_fp8(i));
  }
  static constexpr bool few_heads = true;
#if defined(__AVX512F__)
  static bool few_heads_fit(const LatentCache& c) {
    return lanes_fit(c);
  }
#else
  static bool few_heads_fit(const LatentCache&) {
    return false;
  }
#endif
};

// run_few_heads for an FP8 cache (decode_split's few-heads path): v13's. One head alone goes to
// v7's lane path, which reads 4 rows per query load where v13's pairs read 2: 4-7% faster there
// (H = 1, T = 65,536, one thread and two). Both decline the same queries (too large for the lane
// order), which then take v7's generic per-head path.
template <>
void run_few_heads<std::uint8_t>(const LatentCache& cache, std::size_t length, const DecodeArgs& a,
                                 const Item& it) {
  const bool done =
      it.nh == 1 ? fp8_per_head_lanes(cache, length, a, it) : fp8_few_heads(cache, length, a, it);
  if (!done) run_heads_per_tile<std::uint8_t>(cache, length, a, it);
}

}  // namespace

void mla_decode_v13(const SeqRef* seqs, const DecodeArgs& a) {
  check_seqs(seqs, a, CacheType::FP8);
  decode_split<std::uint8_t, Fp8FewTiles>(seqs, a);
}

void mla_decode_best(const SeqRef* seqs, const DecodeArgs& a) {
  if (a.batch > 0 && seqs[0].cache && seqs[0].cache->type() == CacheType::BF16) {
    mla_decode_v12(seqs, a);
  } else if (a.batch > 0 && seqs[0].cache && seqs[0].cache->type() == CacheType::FP8) {
    mla_decode_v13(seqs, a);
  } else {
    mla_decode_v10(seqs, a);
  }
}

bool bf16_dot_products_available() {
  return cpu_has_dpbf16();
}

KernelSimd kernel_simd() {
  return {xsimd::default_arch::name(), W, kNarrowGroup, kWideGroup};
}

}  // namespace mla::ch07
