/// @file latent_attention.hpp
/// @brief The attention core of absorbed MLA, behind an interface so that chapter 7's kernels can
///        replace the reference one without touching the layer around it.
///
/// In the absorbed layer everything per head happens outside this core (absorbing q_nope through
/// W_UK, expanding the result through W_UV); what is left is attention of H query heads against
/// ONE shared cache of `d_c + d_r` numbers per token:
///
///     scores (H, T) = scale · (q_lat · Cᵀ + q_rope · K_Rᵀ)      C: (T, d_c), K_R: (T, d_r)
///     out    (H, d_c) = softmax(scores) · C
///
/// This is the kernel that decode time is spent in, and the one chapter 7 optimizes.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

namespace mla::ch06 {

/// @addtogroup ch06
/// @{

/// The attention core of absorbed MLA for ONE sequence; owns its latent cache and its layout.
class LatentAttention {
 public:
  virtual ~LatentAttention() = default;

  /// Append n tokens: c_kv (n, d_c) = normalized latents, k_rope (n, d_r) = rotated rope keys
  /// (row-major).
  virtual void append(const float* c_kv, const float* k_rope, std::size_t n) = 0;

  /// S queries at positions start..start+S-1 (query i sees cached tokens 0..start+i;
  /// start+S <= size()).
  /// q_lat: (S, H, d_c) absorbed queries, q_rope: (S, H, d_r) rotated; out: (S, H, d_c) =
  /// softmax(scale·(q_lat·Cᵀ + q_rope·K_Rᵀ)) · C, with C the cached latents.
  virtual void attend(const float* q_lat, const float* q_rope, std::size_t S, std::size_t start,
                      float scale, float* out) = 0;

  /// Tokens cached.
  virtual std::size_t size() const = 0;
};

/// Makes the attention core of one sequence for `heads` query heads, latent width `d_c` and rope
/// width `d_r`.
using LatentAttentionFactory = std::function<std::unique_ptr<LatentAttention>(
    std::size_t heads, std::size_t d_c, std::size_t d_r)>;

/// The reference core: the cache as two growing row-major arrays C (T, d_c) and K_R (T, d_r),
/// and plain loops (one query head at a time: scores, softmax, weighted sum). Every faster core
/// is checked against this one.
std::unique_ptr<LatentAttention> make_reference_latent_attention(std::size_t heads, std::size_t d_c,
                                                                 std::size_t d_r);

/// @}

}  // namespace mla::ch06
