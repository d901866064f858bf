/// @file roofline.hpp
/// @brief This machine's two ceilings, measured: FMA throughput and DRAM read bandwidth.
#pragma once

#include <cstddef>

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// The ceilings a kernel is measured against, on a given number of threads.
struct MachinePeak {
  int threads = 1;      ///< threads the ceilings were measured on
  double gflops = 0.0;  ///< fp32 FMA throughput, GFLOP/s (an FMA counts 2 FLOPs)
  double gbps = 0.0;    ///< read bandwidth from DRAM, GB/s (10⁹ bytes)
  /// Machine balance: FLOPs the cores can do per byte DRAM delivers. A kernel with more
  /// FLOPs per byte than this is compute-bound, with fewer memory-bound.
  double balance() const { return gbps > 0 ? gflops / gbps : 0.0; }
};

/// FMA peak: every thread runs a loop of independent FMAs on SIMD registers (12 accumulators,
/// more than latency × issue width, so the FMA units never wait). Best of `reps` runs of about
/// 15 ms: many, because on a shared host one run in a few loses a core for a while.
double measure_fma_gflops(int threads, int reps = 25);

/// Read bandwidth: every thread sums its share of a buffer of `bytes` (far larger than the last
/// level cache) with SIMD loads. Best of `reps` passes.
double measure_read_gbps(int threads, std::size_t bytes = std::size_t{1} << 29, int reps = 5);

/// Both, on `threads` threads.
MachinePeak measure_peak(int threads);

/// Which limit binds a kernel, and how close the kernel gets to it.
struct Bound {
  bool compute = true;    ///< true: compute-bound (FLOP/s), false: bandwidth-bound (GB/s)
  double fraction = 0.0;  ///< achieved / peak of the binding limit (0..1)
};
/// Which limit binds a kernel of `flops` and `bytes` per call on this machine, and how close it
/// gets in `seconds` per call: the fraction (0..1) of peak FLOP/s if flops/bytes > balance, else
/// of peak bandwidth.
Bound binding_limit(double flops, double bytes, double seconds, const MachinePeak& peak);

/// @}

}  // namespace mla::ch07
