/// @file paged_cache.hpp
/// @brief A paged KV cache: one pool of fixed-size blocks under a byte budget, a block table per
///        sequence, blocks returned when a sequence finishes.
///
/// A block holds 64 tokens (chapter 7's tile) of one sequence for every layer:
///
///     block = [ layer 0's page | layer 1's page | ... ]                 block_bytes()
///     MLA page = one LatentCache tile: 64 rows [c_kv | 0 | k_rope | 0]  (fp32 or bf16)
///     GQA page = per KV head: K (64, d_h) then V (64, d_h)               (fp32)
///
/// A sequence's block table lists its blocks in token order; they may lie anywhere in the pool.
/// An MLA sequence's per-layer LatentCache borrows its pages (LatentCache::borrow_tile), so
/// chapter 7's kernels read them where they lie: a page is a tile, nothing is copied per step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "07_optimized_mla/latent_cache.hpp"
#include "08_serving/model.hpp"
#include "mla/memory.hpp"

namespace mla::ch08 {

/// @addtogroup ch08
/// @{

/// Tokens per block: chapter 7's tile.
inline constexpr std::size_t kBlockTokens = ch07::LatentCache::kTileTokens;

/// How a model's cache is paged.
struct PageLayout {
  AttentionKind kind = AttentionKind::MLA;      ///< the model's attention
  ch07::CacheType type = ch07::CacheType::F32;  ///< F32 or BF16 (MLA); F32 (GQA)
  std::size_t layers = 0;                       ///< L
  std::size_t page_bytes = 0;                   ///< one layer's 64 tokens
  std::size_t kv_heads = 0;                     ///< GQA: H_kv, K/V blocks per page
  std::size_t head_dim = 0;                     ///< GQA: d_h
  /// Bytes of one block: every layer's page.
  std::size_t block_bytes() const { return layers * page_bytes; }
  /// Bytes per cached token, all layers, padding included.
  std::size_t bytes_per_token() const { return block_bytes() / kBlockTokens; }
};

/// The paging of `cfg`'s cache in `type` (BF16 only for MLA; std::invalid_argument otherwise).
PageLayout page_layout(const ModelConfig& cfg, ch07::CacheType type = ch07::CacheType::F32);

/// The pool: capacity() blocks of block_bytes, one 64-byte-aligned allocation, never more than
/// the budget.
class BlockPool {
 public:
  /// InputError if the budget cannot hold one block.
  BlockPool(std::size_t block_bytes, std::size_t budget_bytes);
  std::size_t capacity() const { return in_use_.size(); }                 ///< blocks in all
  std::size_t free_blocks() const { return free_.size(); }                ///< blocks to hand out
  std::size_t used_blocks() const { return capacity() - free_blocks(); }  ///< blocks handed out
  std::size_t block_bytes() const { return block_bytes_; }                ///< bytes of one block
  std::size_t budget_bytes() const { return budget_; }  ///< the budget it was given
  /// A free block's id, or nothing when the pool is empty.
  std::optional<int> allocate();
  /// Give a block back; std::logic_error for one that is not in use.
  void release(int id);
  /// The block's memory (block_bytes()).
  unsigned char* data(int id) { return base_ + std::size_t(id) * block_bytes_; }
  /// Fill every block's bytes with float `value` (tests: NaN, so a read past a sequence's end
  /// shows).
  void fill(float value);
  /// Hand out the free blocks in the order of `order` (a permutation of the free ids; tests use
  /// a random one).
  void set_free_order(const std::vector<int>& order);

 private:
  std::size_t block_bytes_, budget_;
  LargePagesPtr mem_;  // every block, in 2 MiB pages where the OS gives them (mla/memory.hpp)
  unsigned char* base_ = nullptr;
  std::vector<int> free_;     // a stack: the back is handed out next
  std::vector<char> in_use_;  // per block
};

/// One sequence's paged cache: its block table and, for MLA, one borrowing LatentCache per
/// layer. Its blocks go back to the pool when it is released or destroyed.
class PagedSequence {
 public:
  /// An empty sequence drawing blocks from `pool`, paged per `layout` (of `cfg`'s cache).
  PagedSequence(BlockPool& pool, const PageLayout& layout, const ModelConfig& cfg);
  ~PagedSequence() { release(); }
  PagedSequence(const PagedSequence&) = delete;
  PagedSequence& operator=(const PagedSequence&) = delete;

  /// Make room for `tokens` tokens in all (allocating blocks); false, allocating nothing, if the
  /// pool has too few free blocks.
  bool reserve(std::size_t tokens);
  /// Blocks needed to hold `tokens` tokens.
  static std::size_t blocks_for(std::size_t tokens) {
    return (tokens + kBlockTokens - 1) / kBlockTokens;
  }
  /// Give every block back; the sequence is empty again (its caches too).
  void release();

  std::size_t length() const { return length_; }  ///< tokens cached (every layer)
  std::size_t capacity() const { return table_.size() * kBlockTokens; }  ///< tokens reserved
  const std::vector<int>& block_table() const { return table_; }         ///< block ids, in order
  const PageLayout& layout() const { return layout_; }                   ///< its paging

  /// MLA: layer l's cache, its tiles the pages of this sequence's blocks.
  ch07::LatentCache& latent(std::size_t l) { return latents_[l]; }
  /// MLA: layer l's cache, read-only.
  const ch07::LatentCache& latent(std::size_t l) const { return latents_[l]; }
  /// GQA: K of KV head h in layer l, block i of the table: (64, d_h); V the same.
  float* k_page(std::size_t l, std::size_t i, std::size_t h);
  /// GQA: V of KV head h in layer l, block i of the table: (64, d_h), right after its K.
  float* v_page(std::size_t l, std::size_t i, std::size_t h) {
    return k_page(l, i, h) + kBlockTokens * layout_.head_dim;
  }
  /// GQA: k_page(), read-only: (64, d_h).
  const float* k_page(std::size_t l, std::size_t i, std::size_t h) const {
    return const_cast<PagedSequence*>(this)->k_page(l, i, h);
  }
  /// GQA: v_page(), read-only: (64, d_h).
  const float* v_page(std::size_t l, std::size_t i, std::size_t h) const {
    return const_cast<PagedSequence*>(this)->v_page(l, i, h);
  }
  /// GQA: write token `pos`'s k and v rows (H_kv·d_h each) of layer l into its pages.
  void write_kv(std::size_t l, std::size_t pos, const float* k, const float* v);
  /// Count n more tokens as cached (after every layer appended / wrote them).
  void advance(std::size_t n) { length_ += n; }

 private:
  BlockPool* pool_;
  PageLayout layout_;
  ModelConfig cfg_;
  std::vector<int> table_;
  std::vector<ch07::LatentCache> latents_;  // MLA only, one per layer
  std::size_t length_ = 0;
  void reset_latents();
};

/// GQA attention of one query token against a paged sequence's first `length` tokens, one
/// query head: q (d_h) -> out (d_h), online softmax page by page (no copy of the cache).
void gqa_paged_attend_head(const PagedSequence& s, std::size_t layer, std::size_t kv_head,
                           std::size_t length, const float* q, float scale, float* out);

/// @}

}  // namespace mla::ch08
