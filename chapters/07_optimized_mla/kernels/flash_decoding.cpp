// The pieces of flash-decoding that the MLA and MHA kernels share (see flash_decoding.hpp).

#include "07_optimized_mla/kernels/flash_decoding.hpp"
#include "mla/exercise.hpp"

#include <algorithm>
#include <numeric>

namespace mla::ch07 {

namespace {
using V = xsimd::batch<float>;
constexpr std::size_t W = V::size;  // floats per SIMD register: 4 (SSE), 8 (AVX2), 16 (AVX-512)
}  // namespace

// Four accumulators, so four FMAs are in flight at once; with one accumulator every FMA waits
// for the previous one (4 cycles of latency each).
float dot_simd(const float* x, const float* y, std::size_t n) {
#if MLA_EXERCISES
  (void)x, (void)y, (void)n;
  MLA_EXERCISE("7.1", "dot_simd() (the vectorized score loop of v2)",
               "V = xsimd::batch<float> holds W floats: keep 4 accumulators, in steps of 4*W do "
               "acc_i = xsimd::fma(V::load_unaligned(x + k + i*W), V::load_unaligned(y + k + i*W), "
               "acc_i); then single vectors; xsimd::hadd(sum of accumulators); a scalar tail");
#else
  V acc0(0.0f), acc1(0.0f), acc2(0.0f), acc3(0.0f);
  std::size_t k = 0;
  for (; k + 4 * W <= n; k += 4 * W) {
    acc0 = xsimd::fma(V::load_unaligned(x + k), V::load_unaligned(y + k), acc0);
    acc1 = xsimd::fma(V::load_unaligned(x + k + W), V::load_unaligned(y + k + W), acc1);
    acc2 = xsimd::fma(V::load_unaligned(x + k + 2 * W), V::load_unaligned(y + k + 2 * W), acc2);
    acc3 = xsimd::fma(V::load_unaligned(x + k + 3 * W), V::load_unaligned(y + k + 3 * W), acc3);
  }
  for (; k + W <= n; k += W)
    acc0 = xsimd::fma(V::load_unaligned(x + k), V::load_unaligned(y + k), acc0);
  float s = xsimd::hadd((acc0 + acc1) + (acc2 + acc3));
  for (; k < n; ++k) s += x[k] * y[k];  // scalar tail
  return s;
#endif
}

void axpy_simd(float alpha, const float* x, float* y, std::size_t n) {
  const V va(alpha);
  std::size_t j = 0;
  for (; j + W <= n; j += W) {
    xsimd::fma(va, V::load_unaligned(x + j), V::load_unaligned(y + j)).store_unaligned(y + j);
  }
  for (; j < n; ++j) y[j] += alpha * x[j];
}

float OnlineSoftmax::step(float* s, std::size_t nt, std::size_t n_pad, float tile_max) {
  for (std::size_t t = nt; t < n_pad; ++t) s[t] = kNegInf;  // exp(-inf) = 0: no tail loops
  // A new maximum rescales everything accumulated so far by exp(m_old - m_new).
  const float m_new = std::max(m, tile_max);
  const float alpha = rescale_factor(m, m_new);
  const V vm(m_new);
  V vsum(0.0f);
  for (std::size_t t = 0; t < n_pad; t += W) {
    const V e = xsimd::exp(V::load_aligned(s + t) - vm);
    e.store_aligned(s + t);
    vsum += e;
  }
  l = l * alpha + xsimd::hadd(vsum);
  m = m_new;
  return alpha;
}

std::size_t kv_chunks(std::size_t units, int threads) {
  const std::size_t T = static_cast<std::size_t>(std::max(threads, 1));
  if (units == 0 || (units >= T && units % T == 0)) return 1;
  if (units < T) return T / std::gcd(units, T);
  return (2 * T + units - 1) / units;  // many uneven units: about two items per thread
}

}  // namespace mla::ch07
