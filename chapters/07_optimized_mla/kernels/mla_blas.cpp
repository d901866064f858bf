// The absorbed MLA decode through a BLAS library: what a user who knows the equations and has
// OpenBLAS writes. One version; it is the peer the hand-written kernels have to beat.

#include "07_optimized_mla/kernels/mla_blas.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <xsimd/xsimd.hpp>

#include <cblas.h>

// OpenBLAS's own call, declared weak so that the program still links against another BLAS.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace mla::ch07 {

void set_blas_threads(int threads) {
  if (openblas_set_num_threads) openblas_set_num_threads(std::max(threads, 1));
}

void softmax_row(float* x, std::size_t n) {
  using V = xsimd::batch<float>;
  constexpr std::size_t W = V::size;
  float m = x[0];
  for (std::size_t t = 1; t < n; ++t) m = std::max(m, x[t]);
  const V vm(m);
  V vsum(0.0f);
  std::size_t t = 0;
  for (; t + W <= n; t += W) {
    const V e = xsimd::exp(V::load_unaligned(x + t) - vm);
    e.store_unaligned(x + t);
    vsum += e;
  }
  float sum = xsimd::hadd(vsum);
  for (; t < n; ++t) sum += (x[t] = std::exp(x[t] - m));
  const float inv = 1.0f / sum;
  for (t = 0; t < n; ++t) x[t] *= inv;
}

void mla_decode_blas(const float* cache, std::size_t T, const DecodeArgs& a) {
  const std::size_t H = a.heads, d_c = a.d_c, d_r = a.d_r, D = d_c + d_r;
  set_blas_threads(a.threads);
  std::vector<float> q(H * D);  // Q̃ (H, D) = [q_lat | q_rope] of one sequence
  std::vector<float> S(H * T);  // (H, T) scores, then probabilities
  for (std::size_t b = 0; b < a.batch; ++b) {
    const float* C = cache + b * T * D;  // (T, D)
    for (std::size_t h = 0; h < H; ++h) {
      std::copy(a.q_lat + (b * H + h) * d_c, a.q_lat + (b * H + h + 1) * d_c, q.data() + h * D);
      std::copy(a.q_rope + (b * H + h) * d_r, a.q_rope + (b * H + h + 1) * d_r,
                q.data() + h * D + d_c);
    }
    float* out = a.out + b * H * d_c;
    if (T == 0) {
      std::fill(out, out + H * d_c, 0.0f);
      continue;
    }
    const int iH = static_cast<int>(H), iT = static_cast<int>(T), iD = static_cast<int>(D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, iH, iT, iD, a.scale, q.data(), iD, C, iD,
                0.0f, S.data(), iT);
    // Softmax of each row, on this thread, with SIMD exponentials. Not with OpenMP threads:
    // after a parallel region they keep spinning for a while and fight OpenBLAS's own threads
    // for the cores during the next sgemm (measured here: 16 ms per step instead of 9).
    for (std::size_t h = 0; h < H; ++h) softmax_row(S.data() + h * T, T);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, iH, static_cast<int>(d_c), iT, 1.0f,
                S.data(), iT, C, iD, 0.0f, out, static_cast<int>(d_c));
  }
}

}  // namespace mla::ch07
