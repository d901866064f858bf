/// @file prefill_layer.hpp
/// @brief Chapter 6's DeepSeek layer with a prefill that switches, per chunk, between MHA mode
///        (decompress K and V, ordinary causal attention at 192/128 per head) and MQA mode
///        (absorbed, attention on the latent at 576/512), by a cost model with measured rates.
#pragma once

#include <cstddef>
#include <iosfwd>
#include <memory>
#include <optional>
#include <vector>

#include "04_low_rank_latents/latent.hpp"
#include "06_decoupled_rope/latent_attention.hpp"
#include "06_decoupled_rope/mla_layer.hpp"
#include "07_optimized_mla/kernels/mla_prefill.hpp"
#include "07_optimized_mla/latent_cache.hpp"

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// The attention core of one sequence for MQA mode: an fp32 tiled cache; a chunk of S > 1
/// queries runs mqa_prefill (all S·H rows share each tile), a decode step (S = 1) v5 (split-KV
/// over the threads).
class PrefillLatentAttention final : public ch06::LatentAttention {
 public:
  /// `heads` query heads, latent width d_c, rope width d_r; `threads` (0 = every hardware thread).
  PrefillLatentAttention(std::size_t heads, std::size_t d_c, std::size_t d_r, int threads = 0);
  void append(const float* c_kv, const float* k_rope, std::size_t n) override;
  void attend(const float* q_lat, const float* q_rope, std::size_t S, std::size_t start,
              float scale, float* out) override;
  std::size_t size() const override { return cache_.size(); }
  /// The cache (MHA mode decompresses from it).
  const LatentCache& cache() const { return cache_; }

 private:
  std::size_t heads_;
  int threads_;
  LatentCache cache_;
};

/// Which mode a PrefillMla layer runs a chunk in.
enum class PrefillPolicy {
  Auto,       ///< the cost model's choice (choose_prefill_mode) per chunk
  AlwaysMha,  ///< every chunk in MHA mode (decode steps too)
  AlwaysMqa   ///< every chunk in MQA mode
};

/// One call's chunk and the mode it ran in.
struct PrefillRecord {
  std::size_t chunk = 0;    ///< S: tokens of the call
  std::size_t context = 0;  ///< T: tokens cached before it
  PrefillChoice choice;     ///< the cost model's prediction (zeros unless the policy is Auto)
  PrefillMode mode = PrefillMode::MQA;  ///< the mode it ran in
};

/// The DeepSeek layer (chapter 6's MlaLayer) caching only the latent, like the absorbed path,
/// that runs each call in MHA mode (decompress the latents of all T + S tokens with kv_b_proj,
/// causal flash attention with per-head keys and values: mha_prefill) or MQA mode (chapter 6's
/// absorbed attention on PrefillLatentAttention cores), as its policy says.
class PrefillMla final : public ch06::MlaLayer {
 public:
  /// As ch06::AbsorbedMla; `threads` for the kernels (0 = every hardware thread). With
  /// PrefillPolicy::Auto, `rates` feed the cost model (default: calibrated_prefill_rates, measured
  /// once per process and widths); `log`, if given, gets one line per chunk of S > 1 with the
  /// choice and its predicted times.
  PrefillMla(const MlaConfig& cfg, std::shared_ptr<const ch06::MlaWeights> w, std::size_t batch,
             PrefillPolicy policy = PrefillPolicy::Auto, int threads = 0,
             std::optional<PrefillRates> rates = std::nullopt, std::ostream* log = nullptr);
  std::size_t cache_floats_per_token() const override { return d_c_ + d_rope_; }
  /// Every call so far, in order.
  const std::vector<PrefillRecord>& records() const { return records_; }
  /// The widths of the kernels.
  PrefillDims dims() const;

 protected:
  Mat attend(const Mat& q, const Mat& c_kv, const Mat& k_rope, std::size_t S,
             std::size_t start) override;

 private:
  PrefillPolicy policy_;
  int threads_;
  std::optional<PrefillRates> rates_;
  std::ostream* log_;
  ch04::KvUp up_;                                              // W_uk, W_uv for MQA mode
  PackedKvUp packed_;                                          // kv_b_proj for MHA mode
  std::vector<std::unique_ptr<ch06::LatentAttention>> cores_;  // PrefillLatentAttention
  MhaKv kv_;                                                   // MHA mode's keys and values
  std::vector<PrefillRecord> records_;
};

/// mla_verify's paths: "prefill_mha" and "prefill_mqa" (every chunk in one mode) and
/// "prefill_auto" (the switch; it prints its choice per chunk to `log`, if given).
std::vector<ch06::MlaPath> prefill_paths(int threads = 0, std::ostream* log = nullptr);

/// @}

}  // namespace mla::ch07
