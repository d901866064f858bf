/// @file mha_decode.hpp
/// @brief The honest baseline: plain multi-head attention decode (every head its own K and V),
///        scalar and optimized (see the menu in mha_decode.cpp).
#pragma once

#include <cstddef>
#include <vector>

#include <xsimd/xsimd.hpp>

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// The MHA cache of one sequence, head-major: K_h (T, d_k) and V_h (T, d_v) contiguous per head,
/// so a head's decode reads two sequential streams. (A model appends (n, H, d) rows; the layout
/// change happens once, at append time.)
class MhaCache {
 public:
  /// An empty cache of `heads` heads, keys `d_k` and values `d_v` numbers wide.
  MhaCache(std::size_t heads, std::size_t d_k, std::size_t d_v);
  /// Reserve room for `tokens` tokens (avoids the copies of growing).
  void reserve(std::size_t tokens);
  /// Append n tokens: k (n, H, d_k), v (n, H, d_v), row-major.
  void append(const float* k, const float* v, std::size_t n);
  std::size_t size() const { return size_; }                    ///< T: tokens cached
  std::size_t heads() const { return heads_; }                  ///< H: heads
  std::size_t d_k() const { return d_k_; }                      ///< key width per head
  std::size_t d_v() const { return d_v_; }                      ///< value width per head
  const float* k(std::size_t h) const { return k_[h].data(); }  ///< (size(), d_k)
  const float* v(std::size_t h) const { return v_[h].data(); }  ///< (size(), d_v)
  /// Bytes a decode step reads: every K and V of every head.
  double bytes_per_step() const;
  /// Direct write access for fast filling in benchmarks: head h's K, resized to (tokens, d_k).
  float* resize_k(std::size_t h, std::size_t tokens);
  /// The same for head h's V: resized to (tokens, d_v).
  float* resize_v(std::size_t h, std::size_t tokens);
  /// Declare `tokens` tokens filled through resize_k / resize_v.
  void set_size(std::size_t tokens) { size_ = tokens; }

 private:
  using Buf = std::vector<float, xsimd::aligned_allocator<float, 64>>;
  std::size_t heads_, d_k_, d_v_, size_ = 0;
  std::vector<Buf> k_, v_;
};

/// The queries and output of one MHA decode step.
struct MhaArgs {
  std::size_t batch = 1,     ///< B: sequences, one MhaCache each
      heads = 1,             ///< H: heads; every cache must have as many
      d_k = 128,             ///< key width, as the caches'
      d_v = 128;             ///< value width, as the caches'
  const float* q = nullptr;  ///< (B, H, d_k)
  float scale = 1.0f;        ///< softmax scale, 1/sqrt(d_k) in a model
  float* out = nullptr;      ///< (B, H, d_v)
  int threads = 1;           ///< threads v2 may use (v1 runs on one)
};

/// mha v1: scalar reference (scores, softmax, weighted sum per head). caches: B entries.
void mha_decode_v1(const MhaCache* caches, const MhaArgs& a);
/// mha v2: SIMD, fused online softmax over tiles, threads over (sequence, head, KV chunk) with a
/// log-sum-exp combine: a memory-bound kernel that should run at the read bandwidth.
void mha_decode_v2(const MhaCache* caches, const MhaArgs& a);

/// @}

}  // namespace mla::ch07
