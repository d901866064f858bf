/// @file runner.hpp
/// @brief llm.c's discipline for the chapter program and mla_bench: validate every kernel
///        against the reference, then time it, then put it against the machine's limits.
#pragma once

#include <cstddef>
#include <iosfwd>
#include <map>
#include <string>
#include <vector>

#include "07_optimized_mla/optimized_mla.hpp"
#include "mla/compare.hpp"

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// @name Validation tolerances
/// Tolerances of the validation, llm.c style: |x − ref| ≤ atol + rtol·|ref| for every element.
/// fp32 kernels only add in another order; a bf16 cache rounds every cached number to 8
/// significant bits (relative error ≤ 2⁻⁹), which moves scores and outputs by about 10⁻³.
/// @{
inline constexpr double kF32Atol = 1e-4,   ///< atol of the fp32 kernels
    kF32Rtol = 1e-3;                       ///< rtol of the fp32 kernels
inline constexpr double kBf16Atol = 1e-2,  ///< atol of the kernels on a bf16 cache
    kBf16Rtol = 1e-2;                      ///< rtol of the kernels on a bf16 cache
/// An FP8 cache keeps 3 mantissa bits of each latent number where bf16 keeps 8: its rounding is
/// at most 2⁻⁴ of a number instead of 2⁻⁹, 32× more, so its tolerance is 32× bf16's. (Measured
/// on the golden cases: 0.06–0.1, against bf16's 0.003–0.005. The kernel itself is held to the
/// fp32 tolerance against v1 on the dequantized cache, in the tests.)
inline constexpr double kFp8Atol = 32 * kBf16Atol,  ///< atol of the kernels on an FP8 cache
    kFp8Rtol = 32 * kBf16Rtol;                      ///< rtol of the kernels on an FP8 cache
/// @}

/// How to run a set of kernels.
struct RunOptions {
  int threads = 1;               ///< threads for the threaded kernels (others run on one)
  std::size_t runs = 5;          ///< timed runs per kernel (median reported)
  double min_seconds = 0.02;     ///< a timed run repeats a kernel until it lasts this long
  double v1_max_gflop = 1.5;     ///< above this many GFLOP per step, v1 (and mha_v1) is not timed
  std::size_t sample_heads = 3;  ///< heads v1 checks when it is too slow to run on all of them
};

/// One kernel's outcome.
struct KernelResult {
  std::string impl;    ///< Kernel::name
  std::string dtype;   ///< "f32" or "bf16"
  int threads = 1;     ///< RunOptions::threads if the kernel is threaded, else 1
  bool timed = false;  ///< false for v1 (mha_v1) above RunOptions::v1_max_gflop: too slow to time
  double ms = 0.0,     ///< median time of one step, milliseconds
      gflops = 0.0,    ///< achieved GFLOP/s: mla_flops (mha_flops) over the median time
      gbps = 0.0;      ///< achieved GB/s: mla_bytes (mha_bytes) over the median time
  bool compute_bound = true;    ///< which limit binds (arithmetic intensity vs machine balance)
  double pct_peak = 0.0;        ///< % of the binding limit
  double speedup_v1 = 0.0;      ///< v1's time / this time (0: v1 not timed)
  Comparison check;             ///< against the reference
  bool valid = false;           ///< matched the reference within the tolerances (a mismatch throws)
  std::string checked_against;  ///< "v1" or "v1 on heads 0, 63, 127"
};

/// Validate then time `impls` (names from kernels()) on one problem. MLA and MHA inputs are
/// built only if some kernel needs them (mla::check_memory first). `peaks` maps a thread count to
/// the ceilings measured on it; `log` gets one line per validation.
std::vector<KernelResult> validate_and_time(const MlaProblem& mla, const MhaProblem& mha,
                                            const std::vector<std::string>& impls,
                                            const RunOptions& opt,
                                            const std::map<int, MachinePeak>& peaks,
                                            std::uint64_t seed, std::ostream* log);

/// "f32" / "bf16".
std::string dtype_name(CacheType t);

/// @}

}  // namespace mla::ch07
