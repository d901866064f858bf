/// @file spectrum.hpp
/// @brief Chapter 4 on real weights: the singular values of a trained model's stacked key and
///        value projections [W_K; W_V], the energy their top-r directions hold, and the same for
///        each head alone (data/models/mha, trained by data/models/train.py).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "mla/safetensors.hpp"
#include "mla/tensor.hpp"

namespace mla::ch04 {

/// @addtogroup ch04
/// @{

/// e[r − 1] = (s_1² + … + s_r²) / Σ s²: the share of ‖W‖_F² that the best rank-r approximation
/// keeps (Eckart–Young), for r = 1 .. s.size(). `s` descending; all zeros gives all ones.
std::vector<double> energy_captured(const Vec& s);

/// The smallest r with energy_captured(s)[r − 1] ≥ `fraction` (0 < fraction ≤ 1).
std::size_t rank_for_energy(const Vec& s, double fraction);

/// One Llama-style attention layer's key and value projections, Linear layout (out, in).
struct KvProjections {
  Mat W_k;                   ///< (H_kv·d_h, D): `self_attn.k_proj.weight`
  Mat W_v;                   ///< (H_kv·d_h, D): `self_attn.v_proj.weight`
  std::size_t head_dim = 0;  ///< d_h: rows per head
};

/// The layers of a safetensors file that hold `model.layers.<i>.self_attn.k_proj.weight`:
/// 0, 1, ... up to the first missing one.
std::size_t count_kv_layers(const SafeTensors& f);

/// Layer `layer`'s k_proj and v_proj from a Hugging Face Llama-style checkpoint (a model file, or
/// train.py's `--init-kv` file). InputError naming the file and tensor if one is missing, or if
/// the two differ in shape or their rows are not whole heads of `head_dim`.
KvProjections load_kv_projections(const SafeTensors& f, std::size_t layer, std::size_t head_dim);

/// [W_K; W_V]: (2·H_kv·d_h, D), what every token's cached keys and values are made from.
Mat stack_kv(const KvProjections& p);

/// The singular values of one layer's projections: all heads together, and each head alone.
struct KvSpectrum {
  Vec joint;                ///< of [W_K; W_V], min(2·H·d_h, D) values, descending
  Vec all_k;                ///< of W_K alone (every head's keys), min(H·d_h, D) values
  Vec all_v;                ///< of W_V alone
  std::vector<Vec> head_k;  ///< per head h: of W_K's rows h·d_h .. (h+1)·d_h − 1, (d_h) values
  std::vector<Vec> head_v;  ///< per head h: the same of W_V
};

/// The spectra of `p` through chapter 4's svd().
KvSpectrum kv_spectrum(const KvProjections& p);

/// @}

}  // namespace mla::ch04
