#include "07_optimized_mla/latent_cache.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "07_optimized_mla/kernels/bf16.hpp"
#include "mla/fp8.hpp"
#include "mla/parallel.hpp"

namespace mla::ch07 {

namespace {
std::size_t round_up(std::size_t n, std::size_t m) {
  return (n + m - 1) / m * m;
}
}  // namespace

LatentCache::LatentCache(std::size_t d_c, std::size_t d_r, CacheType type, std::size_t fp8_tile)
    : d_c_(d_c),
      d_r_(d_r),
      lat_stride_(round_up(d_c, 16)),
      stride_(round_up(d_c, 16) + round_up(d_r, 16)),
      type_(type),
      fp8_tile_(fp8_tile) {
  if (d_c == 0) throw std::invalid_argument("LatentCache: d_c must be at least 1");
  if (type == CacheType::FP8 && (fp8_tile == 0 || fp8_tile % 16 != 0)) {
    throw std::invalid_argument("LatentCache: the FP8 scale tile (" + std::to_string(fp8_tile) +
                                ") must be a positive multiple of 16");
  }
  // FP8: codes, then the scales padded to 16 bytes, then the bf16 rope key: every part starts
  // 16-byte aligned and a row is a multiple of 16 bytes (656 for DeepSeek's 512 + 64).
  fp8_rope_offset_ = lat_stride_ + round_up(4 * fp8_scales(), 16);
  row_bytes_ = type == CacheType::FP8 ? fp8_rope_offset_ + 2 * round_up(d_r, 16)
                                      : stride_ * element_bytes(type);
}

std::size_t LatentCache::tile_rows(std::size_t i) const {
  const std::size_t first = i * kTileTokens;
  return first >= size_ ? 0 : std::min(kTileTokens, size_ - first);
}

const float* LatentCache::tile_f32(std::size_t i) const {
  return reinterpret_cast<const float*>(tile_ptrs_[i]);
}

const std::uint16_t* LatentCache::tile_bf16(std::size_t i) const {
  return reinterpret_cast<const std::uint16_t*>(tile_ptrs_[i]);
}

const std::uint8_t* LatentCache::tile_fp8(std::size_t i) const {
  return tile_ptrs_[i];
}

void LatentCache::borrow_tile(unsigned char* tile) {
  if (!tile || reinterpret_cast<std::uintptr_t>(tile) % 64 != 0) {
    throw std::invalid_argument("LatentCache::borrow_tile: a tile must be 64-byte aligned");
  }
  if (!tiles_.empty()) {
    throw std::logic_error("LatentCache::borrow_tile: this cache already allocates its tiles");
  }
  borrowed_ = true;
  tile_ptrs_.push_back(tile);
}

void* LatentCache::row(std::size_t t) {
  const std::size_t tile = t / kTileTokens;
  if (tile == tile_ptrs_.size()) {
    if (borrowed_) {
      throw std::logic_error("LatentCache: no tile for token " + std::to_string(t) +
                             " (a cache that borrows its tiles must be lent one first)");
    }
    // A new tile, zero-filled so that the padding columns hold zeros (code 0 is +0 in e4m3
    // too). Its size is a multiple of 64 bytes (a row is a multiple of 16 bytes, 64 rows), as
    // aligned_alloc requires. The first quarter of a large page's worth of tiles are allocated
    // one by one; after that, tiles are cut from 2 MiB slabs (see the class comment). A tile of
    // more than 1 MiB (widths far from DeepSeek's) stays on its own.
    const std::size_t bytes = tile_bytes(), per_slab = kLargePage / bytes;
    unsigned char* p = nullptr;
    if (per_slab >= 2 && tile_ptrs_.size() >= std::max<std::size_t>(1, per_slab / 4)) {
      if (slabs_.empty() || slab_used_ == per_slab) {
        slabs_.push_back(alloc_large_pages(per_slab * bytes));
        slab_used_ = 0;
      }
      p = slabs_.back().get() + slab_used_++ * bytes;
    } else {
      p = static_cast<unsigned char*>(std::aligned_alloc(64, bytes));
      if (!p) throw std::bad_alloc();
      tiles_.emplace_back(p);
    }
    std::memset(p, 0, bytes);
    tile_ptrs_.push_back(p);
  }
  unsigned char* r = tile_ptrs_[tile] + (t % kTileTokens) * row_bytes_;
  // A borrowed tile holds what its last user left: zero the row, so its padding is zeros.
  if (borrowed_) std::memset(r, 0, row_bytes_);
  return r;
}

// One token into an FP8 row: per scale tile, the smallest power of two that brings the tile's
// largest magnitude to at most 448, then each number divided by it (exact) and rounded to e4m3.
float LatentCache::append_fp8(const float* c, const float* r, unsigned char* dst) const {
  float scale_max = 0.0f;
  float* scales = reinterpret_cast<float*>(dst + fp8_scale_offset());
  for (std::size_t j = 0; j < fp8_scales(); ++j) {
    const std::size_t k0 = j * fp8_tile_, k1 = std::min(d_c_, k0 + fp8_tile_);
    float amax = 0.0f;
    bool finite = true;
    for (std::size_t k = k0; k < k1; ++k) {
      finite = finite && std::isfinite(c[k]);
      amax = std::max(amax, std::fabs(c[k]));
    }
    if (!finite) {
      // e4m3fn has no infinity, and a NaN would poison the scale anyway: the whole tile reads
      // back as NaN (codes 0, scale NaN), which the scores carry to the outputs as a NaN or
      // infinity in an fp32 cache would (the NaN/Inf policy: inputs propagate, never hidden).
      scales[j] = std::numeric_limits<float>::quiet_NaN();
      for (std::size_t k = k0; k < k1; ++k) dst[k] = 0;
      continue;
    }
    // 2^ceil(log2(amax / 448)), from the exponent alone: amax/448 = f · 2^e with f in [0.5, 1)
    // is at most 2^e, and exactly 2^(e-1) when f = 0.5. A tile of zeros keeps scale 1 (any
    // scale gives codes 0).
    int n = 0;
    if (amax > 0.0f) {
      int e = 0;
      const float f = std::frexp(amax / kE4m3Max, &e);
      n = f == 0.5f ? e - 1 : e;
    }
    scales[j] = std::ldexp(1.0f, n);
    scale_max = std::max(scale_max, scales[j]);
    // x / 2^n by the exponent alone (exact; a multiplication by 1/2^n would overflow to inf for
    // the tiniest tiles, where 2^n is subnormal).
    for (std::size_t k = k0; k < k1; ++k) dst[k] = float_to_e4m3(std::ldexp(c[k], -n));
  }
  std::uint16_t* rope = reinterpret_cast<std::uint16_t*>(dst + fp8_rope_offset_);
  for (std::size_t k = 0; k < d_r_; ++k) rope[k] = to_bf16(r[k]);
  return scale_max;
}

void LatentCache::append(const float* c_kv, const float* k_rope, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const float* c = c_kv + i * d_c_;
    const float* r = k_rope + i * d_r_;
    void* dst = row(size_);
    if (type_ == CacheType::FP8) {
      fp8_scale_max_ = std::max(fp8_scale_max_, append_fp8(c, r, static_cast<unsigned char*>(dst)));
    } else if (type_ == CacheType::F32) {
      float* f = static_cast<float*>(dst);
      std::memcpy(f, c, d_c_ * sizeof(float));
      if (d_r_ > 0) std::memcpy(f + lat_stride_, r, d_r_ * sizeof(float));
    } else {
      std::uint16_t* b = static_cast<std::uint16_t*>(dst);
      for (std::size_t k = 0; k < d_c_; ++k) b[k] = to_bf16(c[k]);
      for (std::size_t k = 0; k < d_r_; ++k) b[lat_stride_ + k] = to_bf16(r[k]);
    }
    ++size_;
  }
}

void LatentCache::append_rows(const float* rows, std::size_t n) {
  const std::size_t D = d_c_ + d_r_;
  for (std::size_t i = 0; i < n; ++i) append(rows + i * D, rows + i * D + d_c_, 1);
}

void LatentCache::append_gathered(const LatentCache& src, const std::int32_t* idx, std::size_t n,
                                  int threads) {
  if (src.type_ != type_ || src.d_c_ != d_c_ || src.d_r_ != d_r_ || src.fp8_tile_ != fp8_tile_) {
    throw std::invalid_argument(
        "LatentCache::append_gathered: the source cache has another "
        "type or other widths");
  }
  // The source token of every kept entry, in order (entry j lands in row size_ + j), all
  // checked before anything is written.
  std::vector<std::size_t> from;
  from.reserve(n);
  for (std::size_t j = 0; j < n; ++j) {
    if (idx[j] < 0) continue;
    if (static_cast<std::size_t>(idx[j]) >= src.size_) {
      throw std::invalid_argument("LatentCache::append_gathered: index " + std::to_string(idx[j]) +
                                  " is not below the source's " + std::to_string(src.size_) +
                                  " tokens");
    }
    from.push_back(static_cast<std::size_t>(idx[j]));
  }
  if (from.empty()) return;
  const std::size_t first = size_;
  for (std::size_t t = first; t < first + from.size(); t += kTileTokens) row(t);  // allocate
  row(first + from.size() - 1);
  const auto src_row = [&src](std::size_t t) {
    return src.tile_ptrs_[t / kTileTokens] + (t % kTileTokens) * src.row_bytes_;
  };
  // A chunk of rows per task: big enough that the prefetch runs ahead, small enough to balance.
  constexpr std::size_t kChunk = 64, kAhead = 4;
  const std::size_t rb = row_bytes_;
  const long chunks = static_cast<long>((from.size() + kChunk - 1) / kChunk);
  mla::parallel_for(chunks, std::max(threads, 1), [&](long c) {
    const std::size_t j0 = static_cast<std::size_t>(c) * kChunk;
    const std::size_t j1 = std::min(from.size(), j0 + kChunk);
    for (std::size_t j = j0; j < j1; ++j) {
      if (j + kAhead < j1) {
        const unsigned char* next = src_row(from[j + kAhead]);
        for (std::size_t b = 0; b < rb; b += 64) __builtin_prefetch(next + b);
      }
      const std::size_t t = first + j;
      std::memcpy(tile_ptrs_[t / kTileTokens] + (t % kTileTokens) * rb, src_row(from[j]), rb);
    }
  });
  size_ = first + from.size();
  fp8_scale_max_ = std::max(fp8_scale_max_, src.fp8_scale_max_);  // a bound, if not the least
}

float LatentCache::at(std::size_t t, std::size_t k) const {
  if (t >= size_ || k >= d_c_ + d_r_) throw std::out_of_range("LatentCache::at");
  const std::size_t tile = t / kTileTokens;
  if (type_ == CacheType::FP8) {
    const std::uint8_t* row = tile_fp8(tile) + (t % kTileTokens) * row_bytes_;
    if (k >= d_c_) {
      std::uint16_t b;
      std::memcpy(&b, row + fp8_rope_offset_ + 2 * (k - d_c_), 2);
      return from_bf16(b);
    }
    float scale;
    std::memcpy(&scale, row + fp8_scale_offset() + 4 * (k / fp8_tile_), 4);
    return e4m3_to_float(row[k]) * scale;
  }
  const std::size_t col = k < d_c_ ? k : lat_stride_ + (k - d_c_);
  const std::size_t idx = (t % kTileTokens) * stride_ + col;
  return type_ == CacheType::F32 ? tile_f32(tile)[idx] : from_bf16(tile_bf16(tile)[idx]);
}

double LatentCache::bytes_per_step() const {
  return static_cast<double>(size_) * static_cast<double>(row_bytes_);
}

}  // namespace mla::ch07
