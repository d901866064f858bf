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
  std::size_t steps = 3;            ///< timed decode steps at each batch
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
  double predicted_ms_per_step = 0;       ///< predict_step_seconds(), in ms
};

/// The step-time model: weights read once per step and their FLOPs for B rows, every
/// sequence's cache read once and its attention FLOPs; each part takes the longer of its FLOPs
/// at the FMA peak and its bytes at the bandwidth. Returns seconds.
double predict_step_seconds(const ModelConfig& cfg, std::size_t cache_bytes_per_token,
                            std::size_t batch, std::size_t context, double gflops, double gbps);

/// The model configs of the experiment: "mha", "gqa8", "gqa4", "mla" (and MLA's bf16 cache is a
/// second row of "mla"), attention shaped like DeepSeek-V2-Lite (16 heads of 128; d_c 512 +
/// d_rope 64).
std::vector<ModelConfig> bench_configs(const BenchOptions& o);

/// Run it: rows for every variant at its largest batch (and, with o.sweep, at 1, 2, 4, ...).
std::vector<BenchRow> run_bench(const BenchOptions& o, const ch07::MachinePeak& peak,
                                bool progress);

/// @}

}  // namespace mla::ch08
