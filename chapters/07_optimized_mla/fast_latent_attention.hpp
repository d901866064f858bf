/// @file fast_latent_attention.hpp
/// @brief Chapter 6's LatentAttention interface on chapter 7's kernels, so the full DeepSeek layer
///        runs its attention core on the optimized path.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "06_decoupled_rope/latent_attention.hpp"
#include "06_decoupled_rope/mla_layer.hpp"
#include "07_optimized_mla/latent_cache.hpp"

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// The attention core of one sequence on the tiled fp32 cache and mla_decode_v5 (head-blocked,
/// split over `threads` threads; 0 = every hardware thread). A prefill of S queries runs as a
/// batch of S queries over prefixes of the same cache (query i sees tokens 0..start+i).
std::unique_ptr<ch06::LatentAttention> make_fast_latent_attention(std::size_t heads,
                                                                  std::size_t d_c, std::size_t d_r,
                                                                  int threads = 0);

/// The same on a bf16 cache (mla_decode_v6): half the cache bytes, sums in float; results within
/// the bf16 tolerance (kBf16Atol, kBf16Rtol in runner.hpp) of the reference.
std::unique_ptr<ch06::LatentAttention> make_bf16_latent_attention(std::size_t heads,
                                                                  std::size_t d_c, std::size_t d_r,
                                                                  int threads = 0);

/// Factories for chapter 6's layer (`LatentAttentionFactory`): every sequence's core on a cache
/// of `type` (mla_decode_best picks v10, v12 or v7 for it), split over `threads` threads (0 =
/// every hardware thread); the two below are its F32 and BF16 cases.
ch06::LatentAttentionFactory latent_attention_factory(CacheType type, int threads = 0);
/// latent_attention_factory on an fp32 cache (v5).
ch06::LatentAttentionFactory fast_latent_attention_factory(int threads = 0);
/// latent_attention_factory on a bf16 cache (v6).
ch06::LatentAttentionFactory bf16_latent_attention_factory(int threads = 0);

/// Chapter 7's paths for mla_verify, absorbed layers on these cores: "fast" (fp32 cache, v5),
/// "fast_bf16" (bf16 cache, v6; compared with the bf16 tolerance) and "fast_fp8" (FP8 cache, v7;
/// compared with the FP8 tolerance).
std::vector<ch06::MlaPath> optimized_paths(int threads = 0);

/// @}

}  // namespace mla::ch07
