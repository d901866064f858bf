// The two ceilings of the roofline model, measured on this machine the same way the kernels run:
// xsimd code, OpenMP threads.

#include "07_optimized_mla/kernels/roofline.hpp"

#include <algorithm>
#include <vector>

#include <omp.h>

#include <xsimd/xsimd.hpp>

#include "mla/bench.hpp"
#include "mla/program.hpp"

namespace mla::ch07 {

namespace {
using V = xsimd::batch<float>;
}

double measure_fma_gflops(int threads, int reps) {
  threads = std::max(threads, 1);
  constexpr long kIters = 4'000'000;  // per thread: 12 FMAs of V::size lanes each
  double best = 0.0;
  for (int r = 0; r < reps; ++r) {
    float sink = 0.0f;
    const double t0 = now_seconds();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      // 12 independent chains: an FMA takes 4 cycles and up to two issue per cycle, so 8 would
      // do; 12 leaves headroom. The numbers come through a volatile so the compiler cannot see
      // them: with constants, GCC 12 found that some chains stay at a fixed point (a rounds back
      // to a) and dropped them, running 7 FMAs where 12 were counted — a peak overstated by
      // 12/7. x slightly below 1 and y tiny keep the values finite.
      volatile float seed = 1.0f;
      const float one = seed;
      V a0(one), a1(1.1f * one), a2(1.2f * one), a3(1.3f * one), a4(1.4f * one), a5(1.5f * one),
          a6(1.6f * one), a7(1.7f * one), a8(1.8f * one), a9(1.9f * one), a10(2.0f * one),
          a11(2.1f * one);
      const V x(0.9999999f * one), y(1e-7f * one);
      for (long i = 0; i < kIters; ++i) {
        a0 = xsimd::fma(a0, x, y);
        a1 = xsimd::fma(a1, x, y);
        a2 = xsimd::fma(a2, x, y);
        a3 = xsimd::fma(a3, x, y);
        a4 = xsimd::fma(a4, x, y);
        a5 = xsimd::fma(a5, x, y);
        a6 = xsimd::fma(a6, x, y);
        a7 = xsimd::fma(a7, x, y);
        a8 = xsimd::fma(a8, x, y);
        a9 = xsimd::fma(a9, x, y);
        a10 = xsimd::fma(a10, x, y);
        a11 = xsimd::fma(a11, x, y);
      }
      sink += xsimd::hadd(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) +
                          ((a8 + a9) + (a10 + a11)));
    }
    const double dt = now_seconds() - t0;
    do_not_optimize(sink);
    const double flops = 2.0 * 12.0 * static_cast<double>(V::size) * kIters * threads;
    best = std::max(best, flops / dt / 1e9);
  }
  return best;
}

double measure_read_gbps(int threads, std::size_t bytes, int reps) {
  threads = std::max(threads, 1);
  check_memory(static_cast<double>(bytes), "the bandwidth probe's buffer");
  const std::size_t n = bytes / sizeof(float) / (4 * V::size) * (4 * V::size);
  std::vector<float, xsimd::aligned_allocator<float, 64>> buf(n);
  const long blocks = static_cast<long>(n / (4 * V::size));
  // First touch by the threads that will read (pages land where they are used).
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long i = 0; i < blocks; ++i) {
    for (std::size_t j = 0; j < 4 * V::size; ++j) buf[i * 4 * V::size + j] = 1.0f;
  }
  double best = 0.0;
  for (int r = 0; r < reps + 1; ++r) {  // the first pass only warms up
    float total = 0.0f;
    const double t0 = now_seconds();
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      V s0(0.0f), s1(0.0f), s2(0.0f), s3(0.0f);
#pragma omp for schedule(static) nowait
      for (long i = 0; i < blocks; ++i) {
        const float* p = buf.data() + i * 4 * V::size;
        s0 += V::load_aligned(p);
        s1 += V::load_aligned(p + V::size);
        s2 += V::load_aligned(p + 2 * V::size);
        s3 += V::load_aligned(p + 3 * V::size);
      }
      total += xsimd::hadd((s0 + s1) + (s2 + s3));
    }
    const double dt = now_seconds() - t0;
    do_not_optimize(total);
    if (r > 0) best = std::max(best, static_cast<double>(n * sizeof(float)) / dt / 1e9);
  }
  return best;
}

MachinePeak measure_peak(int threads) {
  MachinePeak p;
  p.threads = threads;
  p.gflops = measure_fma_gflops(threads);
  // n threads on n cores do n times one core's FMAs; far less means a core was taken away while
  // the probe ran (a shared host), and every "% of peak" would come out too high: measure again.
  // (Only with no more threads than processors: beyond that, n threads cannot do n times.)
  if (threads > 1 && threads <= omp_get_num_procs()) {
    const double single = measure_fma_gflops(1, 5);
    for (int retry = 0; retry < 3 && p.gflops < 0.6 * threads * single; ++retry) {
      p.gflops = std::max(p.gflops, measure_fma_gflops(threads));
    }
  }
  p.gbps = measure_read_gbps(threads);
  return p;
}

Bound binding_limit(double flops, double bytes, double seconds, const MachinePeak& peak) {
  Bound b;
  b.compute = bytes <= 0 || flops / bytes > peak.balance();
  const double achieved = b.compute ? flops / seconds / 1e9 : bytes / seconds / 1e9;
  b.fraction = achieved / (b.compute ? peak.gflops : peak.gbps);
  return b;
}

}  // namespace mla::ch07
