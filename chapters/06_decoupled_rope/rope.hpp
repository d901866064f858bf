/// @file rope.hpp
/// @brief Rotary position embeddings as DeepSeek checkpoints expect them: interleaved pairs, and
///        YaRN's frequency blending and attention-temperature factor.
///
/// RoPE encodes a token's position m by rotating each pair of features of a query or key by an
/// angle m·freq_i. DeepSeek's code treats the rope part of a vector as d/2 complex numbers
/// `(x[2i], x[2i+1])` (interleaved pairs), not as the two halves `(x[i], x[i + d/2])` that
/// Llama-style code in Hugging Face uses: load a DeepSeek checkpoint with the other convention and
/// every rope score is wrong.
///
/// The frequencies and angles are computed in float32 exactly as DeepSeek's reference does it
/// (`freq_i = 1 / θ^(2i/d)` in float, angle = float(m)·freq_i rounded to float), so the golden
/// cases match to the last rounding.
#pragma once

#include <cstddef>
#include <vector>

#include "mla/config.hpp"
#include "mla/tensor.hpp"

namespace mla::ch06 {

/// @addtogroup ch06
/// @{

/// Plain RoPE frequencies `freq_i = θ^(-2i/d)`, i = 0 .. d/2-1, in float32 as DeepSeek's
/// reference computes them. freq_0 = 1 (fastest rotation), later pairs rotate ever slower.
/// @param d_rope even number of rotated features (qk_rope_head_dim)
/// @return (d_rope / 2) frequencies, radians per position
std::vector<float> rope_frequencies(std::size_t d_rope, double theta);

/// Where YaRN's blend between "keep" and "interpolate" happens.
/// A pair i with wavelength `2π/freq_i` much shorter than the original context (many rotations
/// within it) keeps its frequency; one whose wavelength is longer than the original context never
/// completed a rotation during training and is slowed down by `factor` (interpolated).
struct YarnRamp {
  double low = 0;   ///< last pair index that is kept: floor(d·ln(L/(β_fast·2π))/(2 ln θ))
  double high = 0;  ///< first pair fully interpolated: ceil(d·ln(L/(β_slow·2π))/(2 ln θ))
  std::vector<float> ramp;  ///< (d/2): clamp((i - low)/(high - low), 0, 1); 0 keep, 1 divide
};

/// The YaRN ramp of `d_rope` rotated features with base θ (low and high clamped to [0, d-1];
/// `high += 0.001` if they are equal, as the reference does).
YarnRamp yarn_ramp(std::size_t d_rope, double theta, const YarnScaling& yarn);

/// YaRN frequencies: `freq_i/factor · ramp_i + freq_i · (1 - ramp_i)`, i < d/2.
/// Equals rope_frequencies() where ramp_i = 0 and freq_i / factor where ramp_i = 1.
std::vector<float> yarn_frequencies(std::size_t d_rope, double theta, const YarnScaling& yarn);

/// YaRN's attention-temperature factor `m = 0.1 · mscale · ln(factor) + 1`. The softmax scale is
/// multiplied by m² (once for the query's and once for the key's share of the logit).
double yarn_mscale(double factor, double mscale);

/// True if the config's YaRN takes effect: `rope_scaling` is yarn and max_position_embeddings
/// exceeds its original_max_position_embeddings. DeepSeek's reference (inference/model.py) tests
/// `max_seq_len > original_seq_len`, where `max_seq_len` is the length it serves; this project
/// has no serving length of its own and uses max_position_embeddings in its place (see
/// MlaConfig::max_position_embeddings).
bool yarn_active(const MlaConfig& cfg);

/// The softmax scale of an MLA layer: `(qk_nope_head_dim + qk_rope_head_dim)^-0.5 · m²`, with m
/// from yarn_mscale() when YaRN is active, else m = 1.
float mla_softmax_scale(const MlaConfig& cfg);

/// Rotary position embedding over `dim()` features with fixed frequencies.
class Rope {
 public:
  /// A RoPE with the given frequencies; dim() = 2 · freqs.size().
  explicit Rope(std::vector<float> freqs);

  /// The RoPE of an MLA layer: plain, or YaRN when yarn_active(cfg); dim() = qk_rope_head_dim.
  static Rope from_config(const MlaConfig& cfg);

  /// Features rotated: two per frequency (an interleaved pair).
  std::size_t dim() const { return 2 * freqs_.size(); }
  /// (dim()/2) radians per position.
  const std::vector<float>& frequencies() const { return freqs_; }

  /// cos and sin of the angles `pos · freq_i`, each (dim()/2), float32 as the reference.
  void angles(std::size_t pos, float* cos_out, float* sin_out) const;

  /// Rotate x (dim()) in place to position `pos`: each interleaved pair is multiplied, as a
  /// complex number x[2i] + i·x[2i+1], by e^{i·pos·freq_i}.
  void rotate(float* x, std::size_t pos) const;

  /// Rotate `count` vectors of dim() floats, spaced `stride` floats apart, all to position `pos`
  /// (e.g. the rope part of every head of one token's query: count = H, stride = d_qk).
  void rotate(float* x, std::size_t count, std::size_t stride, std::size_t pos) const;

  /// The rotation as a matrix R_pos (dim(), dim()): rotate(x, pos) == R_pos · x.
  /// Block-diagonal with 2×2 blocks [[cos, -sin], [sin, cos]]. For demonstrations and tests.
  Mat matrix(std::size_t pos) const;

 private:
  std::vector<float> freqs_;
};

/// @}

}  // namespace mla::ch06
