/// @file latent_cache.hpp
/// @brief The latent cache of one sequence, laid out for the decode kernels when tokens are
///        appended (never re-packed per decode step).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "mla/memory.hpp"

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// Number format of a cache.
///  - F32: every number as a float (4 bytes);
///  - BF16: every number as bfloat16 (2 bytes);
///  - FP8: DeepSeek-V3.2's deployed layout: the latent as e4m3fn codes (1 byte) with one
///    power-of-two float scale per tile of 128 latent numbers, the rope key in bf16 (it is
///    "sensitive to precision loss", so it is not quantized): 512 + 4·4 + 64·2 = 656 bytes per
///    token at d_c = 512, d_r = 64.
enum class CacheType { F32, BF16, FP8 };

/// Bytes per cached number (the latent's, for FP8).
inline std::size_t element_bytes(CacheType t) {
  return t == CacheType::F32 ? 4 : t == CacheType::BF16 ? 2 : 1;
}

/// Bytes one token's [c_kv | k_rope] takes in a cache of type t, padding left out: (d_c + d_r)
/// numbers of F32 or BF16; for FP8 d_c codes, a 4-byte scale per 128 of them (LatentCache's
/// kFp8Tile) and d_r bf16 numbers — 656 at DeepSeek's d_c = 512, d_r = 64.
inline double cache_bytes_per_token(std::size_t d_c, std::size_t d_r, CacheType t) {
  if (t != CacheType::FP8) return double(d_c + d_r) * double(element_bytes(t));
  return double(d_c) + 4.0 * double((d_c + 127) / 128) + 2.0 * double(d_r);
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
///  - once a cache holds a quarter of a large page's worth of tiles (3 fp32 tiles of DeepSeek's
///    widths, 7 bf16 ones, 12 FP8 ones), its further tiles come in slabs of 2 MiB
///    pages (mla/memory.hpp): a long context is streamed every step, and in 4 KiB pages a TLB
///    miss every 4 KiB slowed the 16-head step by a sixth. A short cache keeps to its own small
///    tiles.
///
/// An FP8 row is bytes, not numbers of one type (row_bytes() of them):
///
///     [ e4m3 codes of c_kv (lat_stride() bytes) | scales (fp8_scales() floats, padded to 16 B)
///       | k_rope as bf16 (d_r rounded up to 16 numbers) ]
///
/// Latent number k of a token is `e4m3(code[k]) · scale[k / fp8_tile()]`, with
/// `scale = 2^ceil(log2(amax / 448))` over the tile's numbers (amax their largest magnitude): the
/// smallest power of two that brings the tile into e4m3's range, so dequantizing is exact
/// arithmetic and the codes use the top of the range (the tile's largest number lands in
/// (224, 448]). Quantizing happens once per token, in append().
class LatentCache {
 public:
  /// Tokens per tile: a multiple of the micro-kernel's 6-token groups plus a 4-token tail
  /// would do as well; 64 keeps a fp32 tile (64 × 576 × 4 B = 144 KiB) inside the L2 cache.
  static constexpr std::size_t kTileTokens = 64;

  /// DeepSeek-V3.2's scale tile: 128 latent numbers share one scale.
  static constexpr std::size_t kFp8Tile = 128;

  /// An empty cache for latents of `d_c` numbers and rope keys of `d_r` numbers (d_c >= 1).
  /// fp8_tile: latent numbers per scale in an FP8 cache (a multiple of 16; ignored otherwise).
  LatentCache(std::size_t d_c, std::size_t d_r, CacheType type = CacheType::F32,
              std::size_t fp8_tile = kFp8Tile);

  /// Append n tokens: c_kv (n, d_c), k_rope (n, d_r), row-major; bf16 caches round to nearest,
  /// FP8 caches quantize the latent per scale tile (round to nearest even) and round the rope
  /// key to bf16. A non-finite latent number makes its whole FP8 scale tile read back as NaN
  /// (e4m3fn has no infinity): it propagates to the outputs, as in an fp32 cache.
  void append(const float* c_kv, const float* k_rope, std::size_t n);
  /// Append n tokens given as rows (n, d_c + d_r) = [c_kv | k_rope].
  void append_rows(const float* rows, std::size_t n);
  /// Append copies of `src`'s tokens `idx[0..n)` (entries < 0 are skipped, as a sparse
  /// selection marks unused slots), row bytes as they are: same type and widths as this cache,
  /// every index < src.size() (else std::invalid_argument). The copy runs on `threads` threads
  /// with the next rows prefetched: a gather of scattered rows is bound by memory latency, and
  /// one thread alone reaches a fraction of the bandwidth (chapter 9's sparse attention gathers
  /// 2,048 rows of 2,304 bytes per decode step this way).
  void append_gathered(const LatentCache& src, const std::int32_t* idx, std::size_t n,
                       int threads = 1);
  /// Forget every token (keeps the memory).
  void clear() { size_ = 0; }
  /// Use `tile` as the next tile instead of allocating one: tile_bytes() bytes, 64-byte aligned,
  /// not owned (it must outlive the cache). This is how a paged cache lends its pool's blocks: a
  /// page IS a tile, and the kernels read it where it lies, through this cache's list of tiles
  /// (the sequence's block table). A cache that borrows allocates nothing: appending past its
  /// last tile is a std::logic_error. Rows are written whole on append (padding included), so
  /// whatever the block held before does not matter; rows not yet appended are never read.
  void borrow_tile(unsigned char* tile);
  /// Bytes of one tile: kTileTokens rows of row_bytes().
  std::size_t tile_bytes() const { return kTileTokens * row_bytes_; }

  std::size_t size() const { return size_; }              ///< tokens cached
  std::size_t d_c() const { return d_c_; }                ///< latent width
  std::size_t d_r() const { return d_r_; }                ///< rope-key width
  std::size_t lat_stride() const { return lat_stride_; }  ///< d_c rounded up to 16
  std::size_t stride() const { return stride_; }          ///< numbers per row, padding included
  CacheType type() const { return type_; }                ///< F32, BF16 or FP8 elements
  /// Bytes from one row to the next (stride() numbers of F32/BF16; the FP8 layout above).
  std::size_t row_bytes() const { return row_bytes_; }
  std::size_t fp8_tile() const { return fp8_tile_; }  ///< latent numbers per FP8 scale
  /// FP8 scales per row: ceil(d_c / fp8_tile()).
  std::size_t fp8_scales() const { return (d_c_ + fp8_tile_ - 1) / fp8_tile_; }
  /// Byte offset of the scales in an FP8 row (= lat_stride()).
  std::size_t fp8_scale_offset() const { return lat_stride_; }
  /// Byte offset of the bf16 rope key in an FP8 row.
  std::size_t fp8_rope_offset() const { return fp8_rope_offset_; }
  /// The largest FP8 scale of any row appended since construction (0 before the first; a NaN
  /// scale, from a non-finite tile, does not count). Kernel v7 checks it to choose its per-head
  /// code: that one folds a constant into the scales, which must not overflow.
  float fp8_scale_max() const { return fp8_scale_max_; }
  /// Tiles holding tokens.
  std::size_t tiles() const { return (size_ + kTileTokens - 1) / kTileTokens; }
  /// Tokens in tile i (kTileTokens except maybe the last).
  std::size_t tile_rows(std::size_t i) const;
  /// Tile i as floats (kTileTokens, stride()); only for CacheType::F32.
  const float* tile_f32(std::size_t i) const;
  /// Tile i as bf16 (kTileTokens, stride()); only for CacheType::BF16.
  const std::uint16_t* tile_bf16(std::size_t i) const;
  /// Tile i as FP8 rows (kTileTokens rows of row_bytes()); only for CacheType::FP8.
  const std::uint8_t* tile_fp8(std::size_t i) const;
  /// Element k (< d_c + d_r, in [c_kv | k_rope] numbering) of token t, as a float.
  float at(std::size_t t, std::size_t k) const;
  /// Bytes a decode step reads: size() rows of row_bytes().
  double bytes_per_step() const;

 private:
  void* row(std::size_t t);  // address of token t's row, allocating its tile if needed

  // Writes one FP8 row; returns its largest scale (NaN scales not counted).
  float append_fp8(const float* c, const float* r, unsigned char* dst) const;

  std::size_t d_c_, d_r_, lat_stride_, stride_;
  CacheType type_;
  std::size_t fp8_tile_, fp8_rope_offset_, row_bytes_;
  std::size_t size_ = 0;
  float fp8_scale_max_ = 0.0f;
  std::vector<std::unique_ptr<unsigned char, FreeDeleter>> tiles_;  // owned tiles, one by one
  std::vector<LargePagesPtr> slabs_;  // owned tiles of a long cache, a 2 MiB slab at a time
  // Tiles cut from slabs_.back() so far: an index, not a pointer, so that a moved-from cache
  // (slabs_ empty) cannot cut tiles from the slab it gave away.
  std::size_t slab_used_ = 0;
  std::vector<unsigned char*> tile_ptrs_;  // every tile in order, owned or borrowed
  bool borrowed_ = false;                  // true once a tile is borrowed: never allocate
};

/// @}

}  // namespace mla::ch07
