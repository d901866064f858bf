/// @file sparse_decode.hpp
/// @brief The optimized sparse decode step: chapter 7's head-blocked, threaded kernel
///        (ch07::mla_decode_best) over a tile gathered from the selected cache rows, and the fast
///        top-k. What `dsa_bench` times (with indexer_scores_fast).
///
/// One decode step of DSA for one sequence with T cached tokens, k = min(index_topk, T):
///
///     indexer    I_t = Σ_h c_h ReLU(q_h · k_t) for all T keys (indexer_scores_fast)
///                ~2·HI·DI·T FLOPs
///     top-k      the k largest I_t (select_topk_fast)                ~T comparisons
///     attention  gather the k rows [c_kv | k_rope] into a LatentCache, chapter 7's kernel on it
///                ~2·H·k·(2 d_c + d_r) FLOPs
///
/// Dense MLA costs 2·H·T·(2 d_c + d_r) FLOPs; the indexer 2·HI·DI·T: at V3.2's sizes (H = 128,
/// d_c 512 + 64, HI = 64, DI = 128) that is 16,384 / 278,528 = 5.9% of dense per cached token.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "06_decoupled_rope/latent_attention.hpp"
#include "07_optimized_mla/kernels/mla_decode.hpp"
#include "07_optimized_mla/latent_cache.hpp"
#include "09_sparse_attention/sparse_attention.hpp"

namespace mla::ch09 {

/// @addtogroup ch09
/// @{

/// Sparse decode of ONE sequence with chapter 7's machinery: the rows `idx` names (k entries, -1
/// unused; checked with check_indices against `visible`) of an F32 `cache` are copied into
/// `scratch` (cleared first, same d_c and d_r), then ch07::mla_decode_best runs on it. `a` holds
/// the query (batch 1). Rows not listed are never read.
void sparse_decode_gathered(const ch07::LatentCache& cache, const std::int32_t* idx, std::size_t k,
                            std::size_t visible, const ch07::DecodeArgs& a,
                            ch07::LatentCache& scratch);

/// Top-k for long rows: nth_element then a sort of the k kept (descending score, ties: lower
/// position first). Same result as select_topk, O(T + k log k).
void select_topk_fast(const float* scores, std::size_t visible, std::size_t topk,
                      std::int32_t* out);

/// A DSA core (SparseCoreFactory) on chapter 7's tiled F32 cache and kernel: "dsa_fast".
SparseCoreFactory fast_sparse_cores(int threads = 0);

/// @}

}  // namespace mla::ch09
