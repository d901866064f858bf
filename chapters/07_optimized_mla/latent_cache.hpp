/// @file latent_cache.hpp
/// @brief The latent cache of one sequence, laid out for the decode kernels when tokens are
///        appended (never re-packed per decode step).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// Number format of a cache.
enum class CacheType { F32, BF16 };

/// Bytes per cached number.
inline std::size_t element_bytes(CacheType t) {
  return t == CacheType::F32 ? 4 : 2;
}

/// The per-sequence MLA cache in the kernels' layout.
///
/// Tokens live in *tiles* of kTileTokens rows. Each tile is one 64-byte-aligned block
/// (kTileTokens, stride()) of float or bf16 numbers; a row is
///
///     [ c_kv (d_c) | zeros | k_rope (d_r) | zeros ]   lat_stride() = d_c rounded up to 16,
///                                                     stride()     = lat_stride() + d_r rounded up
///                                                     to 16
///
/// Why this shape:
///  - the latent and its rope key sit in ONE row, so a score is one dot product of length
///    stride() against a query packed the same way (the zero padding contributes nothing), and
///    every SIMD loop runs over whole vectors with no scalar tail, from aligned addresses;
///  - a tile is the unit the kernels loop over, so the fused kernels never check a page
///    boundary inside a tile;
///  - appending fills the last tile and adds a new one when it is full: cached tokens never move
///    (a growing std::vector would copy the whole cache on every reallocation), and nothing is
///    re-laid-out per decode step — the cost of the layout is paid once, when a token arrives.
class LatentCache {
 public:
  /// Tokens per tile: a multiple of the micro-kernel's 6-token groups plus a 4-token tail
  /// would do as well; 64 keeps a fp32 tile (64 × 576 × 4 B = 144 KiB) inside the L2 cache.
  static constexpr std::size_t kTileTokens = 64;

  /// An empty cache for latents of `d_c` numbers and rope keys of `d_r` numbers (d_c >= 1).
  LatentCache(std::size_t d_c, std::size_t d_r, CacheType type = CacheType::F32);

  /// Append n tokens: c_kv (n, d_c), k_rope (n, d_r), row-major; bf16 caches round to nearest.
  void append(const float* c_kv, const float* k_rope, std::size_t n);
  /// Append n tokens given as rows (n, d_c + d_r) = [c_kv | k_rope].
  void append_rows(const float* rows, std::size_t n);
  /// Forget every token (keeps the memory).
  void clear() { size_ = 0; }

  std::size_t size() const { return size_; }              ///< tokens cached
  std::size_t d_c() const { return d_c_; }                ///< latent width
  std::size_t d_r() const { return d_r_; }                ///< rope-key width
  std::size_t lat_stride() const { return lat_stride_; }  ///< d_c rounded up to 16
  std::size_t stride() const { return stride_; }          ///< numbers per row, padding included
  CacheType type() const { return type_; }                ///< F32 or BF16 elements
  /// Tiles holding tokens.
  std::size_t tiles() const { return (size_ + kTileTokens - 1) / kTileTokens; }
  /// Tokens in tile i (kTileTokens except maybe the last).
  std::size_t tile_rows(std::size_t i) const;
  /// Tile i as floats (kTileTokens, stride()); only for CacheType::F32.
  const float* tile_f32(std::size_t i) const;
  /// Tile i as bf16 (kTileTokens, stride()); only for CacheType::BF16.
  const std::uint16_t* tile_bf16(std::size_t i) const;
  /// Element k (< d_c + d_r, in [c_kv | k_rope] numbering) of token t, as a float.
  float at(std::size_t t, std::size_t k) const;
  /// Bytes a decode step reads: size() rows of stride() numbers.
  double bytes_per_step() const;

 private:
  struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
  };
  void* row(std::size_t t);  // address of token t's row, allocating its tile if needed

  std::size_t d_c_, d_r_, lat_stride_, stride_;
  CacheType type_;
  std::size_t size_ = 0;
  std::vector<std::unique_ptr<unsigned char, FreeDeleter>> tiles_;
};

/// @}

}  // namespace mla::ch07
