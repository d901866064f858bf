/// @file prefill_bench.hpp
/// @brief `mla_bench --mode prefill`: both prefill modes and the OpenBLAS formulation on one
///        chunk, validated against each other, timed, against the machine's FMA peak; and the
///        engines' prompt-processing / token-generation sweep (pp512 … pp16384, decode at a
///        growing context).
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <map>
#include <string>
#include <vector>

#include "07_optimized_mla/kernels/mla_prefill.hpp"
#include "07_optimized_mla/kernels/roofline.hpp"

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// One prefill problem and how to time it.
struct PrefillBenchOptions {
  PrefillDims dims;         ///< heads and widths
  std::size_t context = 0;  ///< T: tokens cached before the chunk
  std::size_t chunk = 1;    ///< S: tokens of the chunk
  int threads = 1;          ///< threads of every kernel (OpenBLAS's too)
  std::size_t runs = 3;     ///< timed runs per kernel (median reported)
  std::uint64_t seed = 42;  ///< inputs
};

/// One timed implementation of a prefill chunk.
struct PrefillResult {
  std::string impl;  ///< "prefill_mha", "prefill_mha_blas", "prefill_mqa", "decode" (sweep)
  PrefillMode mode = PrefillMode::MHA;  ///< the mode it runs
  std::size_t context = 0;              ///< T: tokens cached before the chunk
  std::size_t chunk = 0;                ///< S: tokens of the chunk
  int threads = 1;                      ///< threads it ran on
  double ms = 0.0;                      ///< median time of the chunk
  double flops = 0.0;                   ///< FLOPs counted (mla_prefill.hpp's formulas)
  double bytes = 0.0;         ///< compulsory bytes: the latent cache read, the queries, the outputs
  double attention_ms = 0.0;  ///< the attention alone (without decompression / absorption)
  double max_abs_err = 0.0;   ///< against prefill_mha_blas's output
};

/// Validate (every implementation's output against the OpenBLAS formulation's, fp32
/// tolerance; a mismatch throws) and time the three implementations of one chunk.
std::vector<PrefillResult> run_prefill_chunk(const PrefillBenchOptions& o, std::ostream* log);

/// The sweep of the engines' tables: for each N in `pp`, a prefill of N tokens from an empty
/// cache in each mode (MQA mode only up to `mqa_max`); for each T in `tg`, one decode step after
/// T tokens (v5). Times only (the single runs validate).
std::vector<PrefillResult> run_prefill_sweep(const PrefillDims& d,
                                             const std::vector<std::size_t>& pp,
                                             std::size_t mqa_max,
                                             const std::vector<std::size_t>& tg, int threads,
                                             std::uint64_t seed, bool progress);

/// @}

}  // namespace mla::ch07
