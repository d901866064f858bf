/// @file scheduler.hpp
/// @brief Continuous batching: requests arrive, are admitted when the pool has room, prefilled
///        in chunks, decoded together with the running batch, and retired (their blocks freed)
///        at end-of-sequence or their limit. When the pool runs out mid-generation the newest
///        running sequence is preempted: its blocks are freed and it is recomputed later from
///        its tokens, so no sequence is corrupted and the budget is never exceeded.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include "08_serving/engine.hpp"
#include "08_serving/paged_cache.hpp"
#include "08_serving/sampling.hpp"

namespace mla::ch08 {

/// @addtogroup ch08
/// @{

/// One request.
struct Request {
  std::vector<int> prompt;   ///< at least one token
  std::size_t max_new = 16;  ///< tokens to generate at most
  SamplingParams sampling;   ///< greedy by default
  std::size_t arrival = 0;   ///< the step at which it arrives
};

/// What became of a request.
struct Completion {
  std::vector<int> tokens;        ///< generated, in order
  std::size_t preemptions = 0;    ///< times it was freed and recomputed
  std::size_t admitted_step = 0;  ///< first admission
  std::size_t finished_step = 0;  ///< the step that made its last token
  double seconds = 0;             ///< from admission to its last token
};

/// How the scheduler batches.
struct SchedulerOptions {
  std::size_t max_batch = 256;     ///< running sequences at most
  std::size_t prefill_chunk = 64;  ///< prompt tokens fed per sequence per step
};

/// What a run did.
struct SchedulerStats {
  std::size_t steps = 0;             ///< engine steps run
  std::size_t preemptions = 0;       ///< sequences freed to make room (recomputed later)
  std::size_t max_running = 0;       ///< the most sequences running at once
  std::size_t max_used_blocks = 0;   ///< the most blocks in use at once (<= the pool's capacity)
  std::size_t tokens_generated = 0;  ///< new tokens over all requests
  double seconds = 0;                ///< wall time of the run
};

/// Runs requests through an Engine on a BlockPool.
class Scheduler {
 public:
  /// A scheduler stepping `engine`, its sequences' blocks from `pool` (both outlive it).
  Scheduler(Engine& engine, BlockPool& pool, SchedulerOptions opt = {});
  /// Run every request to completion; completions in the requests' order. InputError before
  /// anything runs for a request that can never fit: an empty prompt, prompt + max_new beyond
  /// the model's context, or more blocks than the whole pool holds. `on_token(request, token)`
  /// sees every token as it is made.
  std::vector<Completion> run(const std::vector<Request>& requests,
                              const std::function<void(std::size_t, int)>& on_token = {});
  const SchedulerStats& stats() const { return stats_; }  ///< the last run's

 private:
  Engine* engine_;
  BlockPool* pool_;
  SchedulerOptions opt_;
  SchedulerStats stats_;
};

/// @}

}  // namespace mla::ch08
