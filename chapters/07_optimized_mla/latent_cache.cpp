#include "07_optimized_mla/latent_cache.hpp"

#include <cstring>
#include <new>
#include <stdexcept>

#include "07_optimized_mla/kernels/bf16.hpp"

namespace mla::ch07 {

namespace {
std::size_t round_up(std::size_t n, std::size_t m) {
  return (n + m - 1) / m * m;
}
}  // namespace

LatentCache::LatentCache(std::size_t d_c, std::size_t d_r, CacheType type)
    : d_c_(d_c),
      d_r_(d_r),
      lat_stride_(round_up(d_c, 16)),
      stride_(round_up(d_c, 16) + round_up(d_r, 16)),
      type_(type) {
  if (d_c == 0) throw std::invalid_argument("LatentCache: d_c must be at least 1");
}

std::size_t LatentCache::tile_rows(std::size_t i) const {
  const std::size_t first = i * kTileTokens;
  return first >= size_ ? 0 : std::min(kTileTokens, size_ - first);
}

const float* LatentCache::tile_f32(std::size_t i) const {
  return reinterpret_cast<const float*>(tiles_[i].get());
}

const std::uint16_t* LatentCache::tile_bf16(std::size_t i) const {
  return reinterpret_cast<const std::uint16_t*>(tiles_[i].get());
}

void* LatentCache::row(std::size_t t) {
  const std::size_t tile = t / kTileTokens;
  const std::size_t esize = element_bytes(type_);
  if (tile == tiles_.size()) {
    // A new tile, zero-filled so that the padding columns hold zeros. Its size is a multiple
    // of 64 bytes (stride is a multiple of 16 numbers), as aligned_alloc requires.
    const std::size_t bytes = kTileTokens * stride_ * esize;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    tiles_.emplace_back(static_cast<unsigned char*>(p));
  }
  return tiles_[tile].get() + (t % kTileTokens) * stride_ * esize;
}

void LatentCache::append(const float* c_kv, const float* k_rope, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const float* c = c_kv + i * d_c_;
    const float* r = k_rope + i * d_r_;
    void* dst = row(size_);
    if (type_ == CacheType::F32) {
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

float LatentCache::at(std::size_t t, std::size_t k) const {
  if (t >= size_ || k >= d_c_ + d_r_) throw std::out_of_range("LatentCache::at");
  const std::size_t col = k < d_c_ ? k : lat_stride_ + (k - d_c_);
  const std::size_t idx = (t % kTileTokens) * stride_ + col;
  const std::size_t tile = t / kTileTokens;
  return type_ == CacheType::F32 ? tile_f32(tile)[idx] : from_bf16(tile_bf16(tile)[idx]);
}

double LatentCache::bytes_per_step() const {
  return static_cast<double>(size_) * static_cast<double>(stride_ * element_bytes(type_));
}

}  // namespace mla::ch07
