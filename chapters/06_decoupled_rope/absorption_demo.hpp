/// @file absorption_demo.hpp
/// @brief The numerical proof that RoPE on the latent key breaks absorption, and that the
///        decoupled rope key restores it.
///
/// Absorption precomputes `W_UQᵀ W_UK` once, so a query scores against the cached latent directly:
/// `q_tᵀ k_s = c_Q,tᵀ (W_UQᵀ W_UK) c_KV,s`. Put RoPE on the whole key and query and the true score
/// becomes `(R_t W_UQ c_Q,t)ᵀ (R_s W_UK c_KV,s) = c_Q,tᵀ W_UQᵀ R_{s-t} W_UK c_KV,s`: a matrix that
/// depends on the distance s − t sits between the two weights, and no single precomputed product
/// can stand for it. The absorbed score is right only where R_{s-t} = I: at distance 0.
#pragma once

#include <cstddef>
#include <vector>

#include "mla/random.hpp"

namespace mla::ch06 {

/// @addtogroup ch06
/// @{

/// How far the absorbed scores of one design are from the true scores.
struct AbsorptionCheck {
  std::vector<double> max_error_by_distance;  ///< (T): max |true − absorbed| over pairs t − s = d
  double max_error = 0;                       ///< over all pairs s <= t
  double max_score = 0;                       ///< max |true score|, to judge the error against
};

/// Both designs on the same random latents and weights.
struct RopeAbsorptionDemo {
  AbsorptionCheck rope_on_latent_key;  ///< RoPE on the key rebuilt from the latent: broken
  AbsorptionCheck decoupled;           ///< RoPE only on a separate q^R, k^R: exact
};

/// One head, T positions, random latents c_Q, c_KV (T, d_c) and weights W_UQ, W_UK (d_head, d_c).
/// Design 1 rotates the whole d_head-wide query and key (RoPE over d_head features) and compares
/// the true scores with the absorbed `c_Qᵀ (W_UQᵀ W_UK) c_KV`. Design 2 adds a separate rope query
/// q^R = W_QR c_Q and rope key k^R = W_KR x (d_rope each, rotated), leaves q^C, k^C unrotated, and
/// compares `[q^C; R_t q^R]ᵀ [k^C; R_s k^R]` with `c_Qᵀ (W_UQᵀ W_UK) c_KV + (R_t q^R)ᵀ (R_s k^R)`.
/// @param d_head even; @param d_rope even
RopeAbsorptionDemo demonstrate_rope_breaks_absorption(std::size_t d_c, std::size_t d_head,
                                                      std::size_t d_rope, std::size_t T,
                                                      double theta, Rng& rng);

/// @}

}  // namespace mla::ch06
