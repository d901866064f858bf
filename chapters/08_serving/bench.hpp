/// @file bench.hpp
/// @brief The throughput experiment: MHA, GQA and MLA twins of one model under one KV budget —
///        how many sequences each fits at a context, the decode throughput at that batch, and a
///        step-time model from FLOPs and bytes with this machine's measured peak and bandwidth.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "07_optimized_mla/kernels/roofline.hpp"
#include "08_serving/model.hpp"

namespace mla::ch08 {

/// @addtogroup ch08
/// @{

/// The experiment's sizes.
struct BenchOptions {
  double budget_gib = 1.0;          ///< KV budget
  std::size_t context = 2048;       ///< tokens cached per sequence
  std::size_t d_model = 2048;       ///< V2-Lite's hidden size
  std::size_t layers = 2;           ///< depth: small, so a run takes minutes on 2 cores
  std::size_t intermediate = 4096;  ///< I: the MLP's width
  std::size_t steps = 5;            ///< timed decode steps at each batch (each beside its probes)
  int threads = 2;                  ///< worker threads
  bool sweep = true;                ///< also throughput against batch size
};

/// One variant's result at one batch size.
struct BenchRow {
  std::string variant;                    ///< "mha", "gqa8", "gqa4" or "mla"
  std::string dtype;                      ///< the cache's element type: "f32" or "bf16"
  std::size_t cache_bytes_per_token = 0;  ///< all layers
  std::size_t budget_bytes = 0;           ///< KV budget
  std::size_t context = 0;                ///< tokens cached per sequence
  std::size_t max_sequences = 0;          ///< sequences of `context` tokens the budget holds
  std::size_t batch = 0;                  ///< sequences decoded per step
  double tokens_per_s = 0;                ///< measured decode throughput
  double ms_per_step = 0;                 ///< measured time of one decode step
  double predicted_ms_per_step = 0;       ///< predict_step_seconds() on measured rates, in ms
  double roofline_ms_per_step = 0;        ///< predict_step_seconds_roofline(), in ms
  double gemm_gflops = 0;                 ///< StepRates::gemm_gflops measured at this batch
  double attention_gbps = 0;              ///< StepRates::attention_gbps measured for this variant
};

/// The rates the calibrated step model uses, measured in the same run on the same kernels and
/// shapes as the step (bench.cpp: short probes).
struct StepRates {
  /// The batched projections and MLP: GFLOP/s of the model's own MLP weights multiplied by a
  /// (batch, D) matrix, at this batch (at batch 1 this is a matrix-vector product, bound by
  /// reading the weights; at batch 100s it nears the FMA peak).
  double gemm_gflops = 0;
  /// The attention: GB/s of cache the decode kernel reads (chapter 7's kernel on the paged
  /// caches, over more sequences than the last-level cache holds). For absorbed MLA the kernel
  /// is compute-bound, so this is its FLOP rate expressed per byte read.
  double attention_gbps = 0;
};

/// The step-time model on measured rates: the FLOPs of every weight for B rows at the GEMM
/// rate, plus every sequence's cache (B · context · cache_bytes_per_token) at the attention
/// kernel's rate. Norms, RoPE and the small per-row work are left out. Returns seconds.
double predict_step_seconds(const ModelConfig& cfg, std::size_t cache_bytes_per_token,
                            std::size_t batch, std::size_t context, const StepRates& rates);

/// The roofline bound of the step: weights read once per step and their FLOPs for B rows, every
/// sequence's cache read once and its attention FLOPs; each part takes the longer of its FLOPs
/// at the FMA peak and its bytes at the bandwidth. A lower bound, not a prediction: no kernel
/// runs at its ceiling. Used for a datacenter GPU's published ceilings. Returns seconds.
double predict_step_seconds_roofline(const ModelConfig& cfg, std::size_t cache_bytes_per_token,
                                     std::size_t batch, std::size_t context, double gflops,
                                     double gbps);

/// The model configs of the experiment: "mha", "gqa8", "gqa4", "mla" (and MLA's bf16 cache is a
/// second row of "mla"), attention shaped like DeepSeek-V2-Lite (16 heads of 128; d_c 512 +
/// d_rope 64).
std::vector<ModelConfig> bench_configs(const BenchOptions& o);

/// Run it: rows for every variant at its largest batch (and, with o.sweep, at 1, 2, 4, ...).
std::vector<BenchRow> run_bench(const BenchOptions& o, const ch07::MachinePeak& peak,
                                bool progress);

/// @}

}  // namespace mla::ch08
