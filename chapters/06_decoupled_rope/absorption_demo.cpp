#include "06_decoupled_rope/absorption_demo.hpp"

#include <algorithm>
#include <cmath>

#include <xtensor/xmanipulation.hpp>

#include "06_decoupled_rope/rope.hpp"
#include "mla/tensor.hpp"

namespace mla::ch06 {

namespace {

float dot(const float* a, const float* b, std::size_t n) {
  float s = 0.0f;
  for (std::size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void record(AbsorptionCheck& c, std::size_t distance, double truth, double absorbed) {
  const double err = std::abs(truth - absorbed);
  c.max_error_by_distance[distance] = std::max(c.max_error_by_distance[distance], err);
  c.max_error = std::max(c.max_error, err);
  c.max_score = std::max(c.max_score, std::abs(truth));
}

}  // namespace

RopeAbsorptionDemo demonstrate_rope_breaks_absorption(std::size_t d_c, std::size_t d_head,
                                                      std::size_t d_rope, std::size_t T,
                                                      double theta, Rng& rng) {
  const Mat c_q = rng.normal(T, d_c);               // (T, d_c) query latents
  const Mat c_kv = rng.normal(T, d_c);              // (T, d_c) key/value latents
  const Mat x = rng.normal(T, d_c);                 // (T, d_c) what the rope key is made from
  const Mat W_UQ = rng.linear_weight(d_head, d_c);  // (d_head, d_c)
  const Mat W_UK = rng.linear_weight(d_head, d_c);  // (d_head, d_c)
  const Mat W_QR = rng.linear_weight(d_rope, d_c);  // (d_rope, d_c)
  const Mat W_KR = rng.linear_weight(d_rope, d_c);  // (d_rope, d_c)

  // Absorption: fold the two up-projections into one (d_c, d_c) matrix, once, before decoding.
  const Mat W_abs = matmul(xt::eval(xt::transpose(W_UQ)), W_UK);
  const Mat absorbed_q = matmul(c_q, W_abs);      // (T, d_c): c_Q,tᵀ W_UQᵀ W_UK
  const Mat absorbed = linear(absorbed_q, c_kv);  // (T, T): every (t, s) absorbed content score

  Mat q = linear(c_q, W_UQ);    // (T, d_head) = q^C
  Mat k = linear(c_kv, W_UK);   // (T, d_head) = k^C, what the latent rebuilds
  Mat q_r = linear(c_q, W_QR);  // (T, d_rope)
  Mat k_r = linear(x, W_KR);    // (T, d_rope)

  RopeAbsorptionDemo demo;
  demo.rope_on_latent_key.max_error_by_distance.assign(T, 0.0);
  demo.decoupled.max_error_by_distance.assign(T, 0.0);

  // Design 1: rotate the whole query and key. The true scores use the rotated vectors.
  const Rope full(rope_frequencies(d_head, theta));
  Mat q_rot = q, k_rot = k;
  for (std::size_t t = 0; t < T; ++t) {
    full.rotate(q_rot.data() + t * d_head, t);
    full.rotate(k_rot.data() + t * d_head, t);
  }
  // Design 2: rotate only the separate rope parts.
  const Rope part(rope_frequencies(d_rope, theta));
  for (std::size_t t = 0; t < T; ++t) {
    part.rotate(q_r.data() + t * d_rope, t);
    part.rotate(k_r.data() + t * d_rope, t);
  }

  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t s = 0; s <= t; ++s) {
      const double abs_ts = absorbed(t, s);
      // Design 1: the absorbed score has no R in it, the true one has R_{s-t}.
      const double truth1 = dot(q_rot.data() + t * d_head, k_rot.data() + s * d_head, d_head);
      record(demo.rope_on_latent_key, t - s, truth1, abs_ts);
      // Design 2: content part unrotated (absorbable), position part from the cached k^R.
      const double rope_ts = dot(q_r.data() + t * d_rope, k_r.data() + s * d_rope, d_rope);
      const double truth2 = dot(q.data() + t * d_head, k.data() + s * d_head, d_head) + rope_ts;
      record(demo.decoupled, t - s, truth2, abs_ts + rope_ts);
    }
  }
  return demo;
}

}  // namespace mla::ch06
