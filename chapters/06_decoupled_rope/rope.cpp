#include "06_decoupled_rope/rope.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "mla/exercise.hpp"

namespace mla::ch06 {

namespace {
void check_rope_dim(std::size_t d_rope) {
  if (d_rope % 2 != 0) {
    throw std::invalid_argument("RoPE needs an even number of features, got " +
                                std::to_string(d_rope));
  }
}

// The pair index at which a pair completes `rotations` full turns over `context` positions:
// solve context · θ^(-2i/d) = rotations · 2π for i.
double correction_index(double rotations, std::size_t d, double theta, double context) {
  const double kTwoPi = 6.283185307179586;
  return static_cast<double>(d) * std::log(context / (rotations * kTwoPi)) /
         (2.0 * std::log(theta));
}
}  // namespace

std::vector<float> rope_frequencies(std::size_t d_rope, double theta) {
  check_rope_dim(d_rope);
  // float32 throughout, as `1.0 / (base ** (arange(0, d, 2, float32) / d))` computes it.
  std::vector<float> f(d_rope / 2);
  const float base = static_cast<float>(theta);
  for (std::size_t i = 0; i < f.size(); ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(d_rope);
    f[i] = 1.0f / std::pow(base, exponent);
  }
  return f;
}

YarnRamp yarn_ramp(std::size_t d_rope, double theta, const YarnScaling& yarn) {
  check_rope_dim(d_rope);
  const double L = static_cast<double>(yarn.original_max_position_embeddings);
  YarnRamp r;
  // Fast-rotating pairs (beta_fast turns in the original context) keep their frequency; pairs
  // that turn fewer than beta_slow times are interpolated; the ones between are blended.
  r.low = std::max(std::floor(correction_index(yarn.beta_fast, d_rope, theta, L)), 0.0);
  r.high = std::min(std::ceil(correction_index(yarn.beta_slow, d_rope, theta, L)),
                    static_cast<double>(d_rope) - 1.0);
  if (r.low == r.high) r.high += 0.001;  // avoid dividing by zero, as the reference does
  r.ramp.resize(d_rope / 2);
  const float low = static_cast<float>(r.low);
  const float span = static_cast<float>(r.high - r.low);
  for (std::size_t i = 0; i < r.ramp.size(); ++i) {
    r.ramp[i] = std::clamp((static_cast<float>(i) - low) / span, 0.0f, 1.0f);
  }
  return r;
}

std::vector<float> yarn_frequencies(std::size_t d_rope, double theta, const YarnScaling& yarn) {
  std::vector<float> f = rope_frequencies(d_rope, theta);
  const YarnRamp r = yarn_ramp(d_rope, theta, yarn);
  const float factor = static_cast<float>(yarn.factor);
#if MLA_EXERCISES
  (void)factor;
  MLA_EXERCISE("6.2", "yarn_frequencies()",
               "see chapters/06_decoupled_rope/README.md, exercise 6.2");
#else
  for (std::size_t i = 0; i < f.size(); ++i) {
    // Written as the reference writes it (smooth = 1 - ramp), so float rounding agrees too.
    const float smooth = 1.0f - r.ramp[i];
    f[i] = f[i] / factor * (1.0f - smooth) + f[i] * smooth;
  }
#endif
  return f;
}

double yarn_mscale(double factor, double mscale) {
  return 0.1 * mscale * std::log(factor) + 1.0;
}

bool yarn_active(const MlaConfig& cfg) {
  return cfg.yarn.has_value() &&
         cfg.max_position_embeddings > cfg.yarn->original_max_position_embeddings;
}

float mla_softmax_scale(const MlaConfig& cfg) {
#if MLA_EXERCISES
  (void)cfg;
  MLA_EXERCISE("6.3", "mla_softmax_scale()",
               "see chapters/06_decoupled_rope/README.md, exercise 6.3");
#else
  double scale = 1.0 / std::sqrt(static_cast<double>(cfg.qk_head_dim()));
  if (yarn_active(cfg)) {
    const double m = yarn_mscale(cfg.yarn->factor, cfg.yarn->mscale);
    scale *= m * m;
  }
  return static_cast<float>(scale);
#endif
}

Rope::Rope(std::vector<float> freqs) : freqs_(std::move(freqs)) {}

Rope Rope::from_config(const MlaConfig& cfg) {
  if (yarn_active(cfg)) {
    return Rope(yarn_frequencies(cfg.qk_rope_head_dim, cfg.rope_theta, *cfg.yarn));
  }
  return Rope(rope_frequencies(cfg.qk_rope_head_dim, cfg.rope_theta));
}

void Rope::angles(std::size_t pos, float* cos_out, float* sin_out) const {
  const float p = static_cast<float>(pos);
  for (std::size_t i = 0; i < freqs_.size(); ++i) {
    // The angle is rounded to float before cos/sin, as `outer(t, freqs)` in float32 does.
    const float a = p * freqs_[i];
    cos_out[i] = static_cast<float>(std::cos(static_cast<double>(a)));
    sin_out[i] = static_cast<float>(std::sin(static_cast<double>(a)));
  }
}

void Rope::rotate(float* x, std::size_t pos) const {
  rotate(x, 1, 0, pos);
}

void Rope::rotate(float* x, std::size_t count, std::size_t stride, std::size_t pos) const {
  const std::size_t half = freqs_.size();
  if (half == 0 || count == 0) return;
  // cos and sin once per position, shared by all `count` vectors (all heads of one token).
  std::vector<float> cs(2 * half);
  angles(pos, cs.data(), cs.data() + half);
#if MLA_EXERCISES
  (void)x;
  (void)stride;
  MLA_EXERCISE("6.1", "Rope::rotate()", "see chapters/06_decoupled_rope/README.md, exercise 6.1");
#else
  for (std::size_t v = 0; v < count; ++v) {
    float* y = x + v * stride;
    for (std::size_t i = 0; i < half; ++i) {
      const float c = cs[i], s = cs[half + i];
      const float re = y[2 * i], im = y[2 * i + 1];
      // (re + i·im) · (c + i·s)
      y[2 * i] = re * c - im * s;
      y[2 * i + 1] = re * s + im * c;
    }
  }
#endif
}

Mat Rope::matrix(std::size_t pos) const {
  const std::size_t half = freqs_.size();
  std::vector<float> c(half), s(half);
  angles(pos, c.data(), s.data());
  Mat R = xt::zeros<float>({2 * half, 2 * half});
  for (std::size_t i = 0; i < half; ++i) {
    R(2 * i, 2 * i) = c[i];
    R(2 * i, 2 * i + 1) = -s[i];
    R(2 * i + 1, 2 * i) = s[i];
    R(2 * i + 1, 2 * i + 1) = c[i];
  }
  return R;
}

}  // namespace mla::ch06
