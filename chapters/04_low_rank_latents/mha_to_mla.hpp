/// @file mha_to_mla.hpp
/// @brief From a trained multi-head attention layer to MLA, without training: the keys' RoPE
///        folded into one shared rotated key (TransMLA's idea), the rest of the keys and all the
///        values compressed jointly by a truncated SVD into a latent of rank r (MHA2MLA's idea).
///
/// The MHA layer computes, per head h (d_h floats, rotate_half RoPE: pair i is (i, i + d_h/2),
/// rotated by pos·f_i):
///
///     score_h(s, t) = q_h(s)ᵀ R_{t−s} k_h(t),     o_h(s) = Σ_t p_h(s, t) v_h(t)
///
/// RoPE rotates pair i of every head by the same angle, so any orthogonal mixing U_i of the
/// heads' pair-i components (the same H×H matrix for both halves of the pair) commutes with it:
/// k'_{j,i} = Σ_h U_i[h][j]·k_{h,i} is still rotated by pos·f_i, and q_h·k_h over pair i equals
/// Σ_j (U_i[h][j]·q_{h,i})·k'_{j,i}. The conversion keeps RoPE on the m leading mixed components
/// (the principal directions across heads) of the n fastest pairs: those 2·m·n floats form ONE
/// rotated key shared by all heads (DeepSeek's k_pe), each head querying it with its own
/// rescaled query. What is left of each head's key (its projection off those components) loses
/// its rotation: it joins the values in [W_K^nope; W_V], whose truncated SVD gives
/// W^DKV (r × D) and the per-head W^UK, W^UV. Cached per token: r + 2·m·n floats.
///
/// Exact when m = H and n = d_h/2 (every rotation kept) and r = rank([W_K^nope; W_V]); otherwise
/// two approximations, both measured in chapter 8 (`mha_to_mla` in chapters/tools): the dropped
/// rotations, and the dropped singular directions.
#pragma once

#include <cstddef>
#include <vector>

#include "mla/tensor.hpp"

namespace mla::ch04 {

/// @addtogroup ch04
/// @{

/// One MHA layer's projections, checkpoint layout (out, in): y = x · Wᵀ. Heads are stacked by
/// rows: head h owns rows h·d_h .. h·d_h + d_h − 1, RoPE pair i of it is rows (i, i + d_h/2).
struct MhaProjections {
  Mat W_q;                   ///< (H·d_h, D)
  Mat W_k;                   ///< (H·d_h, D)
  Mat W_v;                   ///< (H·d_h, D)
  std::size_t heads = 0;     ///< H (as many KV heads as query heads: MHA)
  std::size_t head_dim = 0;  ///< d_h, even
};

/// What the conversion keeps.
struct MhaToMlaOptions {
  std::size_t rank = 0;        ///< r: the latent's width (1 .. max_latent_rank)
  std::size_t rope_pairs = 0;  ///< n: RoPE stays on the n fastest pairs (0 .. d_h/2)
  /// m: per kept pair, the m leading directions across heads keep their rotation (1 .. H);
  /// unused when rope_pairs = 0.
  std::size_t rope_components = 1;
};

/// The converted layer. Rope vectors (the shared key, each head's rope query) hold `units()`
/// rotated 2-vectors in rotate_half layout: unit u at floats u and u + units(), rotated with
/// the head's frequency pair rope_pair[u].
struct MlaFromMha {
  std::size_t heads = 0;               ///< H
  std::size_t head_dim = 0;            ///< d_h: no-RoPE query/key width and value width
  std::size_t rank = 0;                ///< r
  std::vector<std::size_t> rope_pair;  ///< (units): the MHA pair (0 .. d_h/2 − 1) of each unit
  Mat W_q;                             ///< (H·d_h, D): the no-RoPE queries, MHA's W_q unchanged
  Mat W_qr;                            ///< (H·d_r, D): head h's rope query at rows h·d_r ..
  Mat W_kr;                            ///< (d_r, D): the rope key shared by every head
  Mat W_dkv;                           ///< (r, D): the compression to the latent c_KV
  Mat W_uk;                            ///< (H·d_h, r): per-head no-RoPE keys from the latent
  Mat W_uv;                            ///< (H·d_h, r): per-head values from the latent
  /// Every singular value of [W_K^nope; W_V]·B (B: the input basis), descending: how much of
  /// the keys' and values' energy the first r keep.
  Vec singular_values;

  /// Rotated 2-vectors per token: m·n.
  std::size_t units() const { return rope_pair.size(); }
  /// d_r = 2·units(): the shared rope key's width.
  std::size_t rope_dim() const { return 2 * units(); }
  /// Floats cached per token: r + d_r.
  std::size_t cache_floats() const { return rank + rope_dim(); }
  /// Share of Σσ² that the first r singular values hold.
  double energy_kept() const;
};

/// The largest latent rank a layer allows: min(2·H·d_h, D), or the input basis's width if
/// smaller.
std::size_t max_latent_rank(const MhaProjections& p, const Mat& input_basis = {});

/// An input basis B (D, D) with B·Bᵀ = Σ from the inputs' second moment Σ = E[x·xᵀ] (D, D,
/// symmetric, positive semi-definite): B = U·diag(√s) from Σ = U·diag(s)·Uᵀ. With it the SVDs
/// of mha_to_mla keep what matters for the inputs the layer really gets (‖W·x‖² averaged over
/// them is ‖W·B‖²_F), not for every direction alike. InputError unless Σ is square.
Mat input_basis_from_second_moment(const Mat& sigma);

/// Convert one layer. `input_basis` B (D, k) says which inputs matter: the SVDs factor W·B
/// instead of W (empty = the identity), so an input direction's weight is its length in B —
/// e.g. diag(input_layernorm), the scale each input feature arrives with. InputError naming the
/// problem for inconsistent shapes, an odd d_h, rank 0 or above max_latent_rank, rope_pairs
/// above d_h/2, rope_components 0 or above H.
MlaFromMha mha_to_mla(const MhaProjections& p, const MhaToMlaOptions& o,
                      const Mat& input_basis = {});

/// @}

}  // namespace mla::ch04
