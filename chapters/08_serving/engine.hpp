/// @file engine.hpp
/// @brief Batched decode on the paged cache: one step advances many sequences of different
///        lengths. The projections and the MLP run as ONE matrix product over every row of the
///        step (this is where the weights are shared: read once, used by all); the attention runs
///        per sequence on its own pages.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "04_low_rank_latents/latent.hpp"
#include "06_decoupled_rope/mla_layer.hpp"
#include "08_serving/decoder.hpp"
#include "08_serving/paged_cache.hpp"

namespace mla::ch08 {

/// @addtogroup ch08
/// @{

/// One sequence's share of a step: the tokens to feed it (decode: one; a prefill chunk: many).
/// Its pages must already hold room: seq->reserve(seq->length() + tokens.size()).
struct StepItem {
  PagedSequence* seq = nullptr;  ///< the sequence, its cache appended to
  std::vector<int> tokens;       ///< the tokens to feed it, in order (at least one)
};

/// The batched forward pass over paged caches.
class Engine {
 public:
  /// `threads`: the attention's (MLA: chapter 7's mla_decode_best, split over sequences × head
  /// blocks × chunks; GQA: over rows × heads).
  Engine(std::shared_ptr<const Model> m, const PageLayout& layout, int threads = 1);
  /// One step over the items (rows: every item's tokens in order). Appends the tokens to the
  /// sequences' caches. Returns the logits of each item's LAST token: (items, V).
  Mat step(const std::vector<StepItem>& items);
  const Model& model() const { return *m_; }            ///< the model it runs
  const PageLayout& layout() const { return layout_; }  ///< the caches' paging

 private:
  Mat mla_attention(std::size_t l, const Mat& h, const std::vector<PagedSequence*>& row_seq,
                    const std::vector<std::size_t>& pos);
  Mat gqa_attention(std::size_t l, const Mat& h, const std::vector<PagedSequence*>& row_seq,
                    const std::vector<std::size_t>& pos);

  std::shared_ptr<const Model> m_;
  PageLayout layout_;
  int threads_;
  // MLA: chapter 6's layer per model layer for its shared part (projections, norms, RoPE,
  // softmax scale); the attention itself reads the pages. And kv_b_proj split into W_UK, W_UV.
  std::vector<std::unique_ptr<ch06::MlaLayer>> mla_;
  std::vector<ch04::KvUp> up_;
  std::unique_ptr<HalfRope> half_rope_;  // GQA
};

/// @}

}  // namespace mla::ch08
