#include "08_serving/paged_cache.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "07_optimized_mla/kernels/flash_decoding.hpp"  // dot_simd
#include "mla/errors.hpp"

namespace mla::ch08 {

PageLayout page_layout(const ModelConfig& cfg, ch07::CacheType type) {
  PageLayout p;
  p.kind = cfg.attention;
  p.type = type;
  p.layers = cfg.num_hidden_layers;
  if (cfg.attention == AttentionKind::MLA) {
    if (type == ch07::CacheType::FP8) {
      throw std::invalid_argument("page_layout: the fp8 cache has no decode kernel yet");
    }
    p.page_bytes =
        ch07::LatentCache(cfg.mla.kv_lora_rank, cfg.mla.qk_rope_head_dim, type).tile_bytes();
  } else {
    if (type != ch07::CacheType::F32) {
      throw std::invalid_argument("page_layout: MHA/GQA pages are fp32");
    }
    p.kv_heads = cfg.gqa.kv_heads;
    p.head_dim = cfg.gqa.head_dim;
    p.page_bytes = 2 * p.kv_heads * kBlockTokens * p.head_dim * sizeof(float);
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// The pool
// ---------------------------------------------------------------------------------------------

BlockPool::BlockPool(std::size_t block_bytes, std::size_t budget_bytes)
    : block_bytes_(block_bytes), budget_(budget_bytes) {
  if (block_bytes == 0 || block_bytes % 64 != 0) {
    throw std::invalid_argument("BlockPool: a block must be a positive multiple of 64 bytes");
  }
  const std::size_t n = budget_bytes / block_bytes;
  if (n == 0) {
    throw InputError(fmt::format(
        "KV budget of {} bytes cannot hold one block of {} tokens ({} bytes): no sequence fits",
        budget_bytes, kBlockTokens, block_bytes));
  }
  if (n > std::size_t(std::numeric_limits<int>::max()))
    throw InputError("KV budget: too many blocks");
  mem_ = alloc_large_pages(n * block_bytes);
  base_ = mem_.get();
  in_use_.assign(n, 0);
  // Block 0 is handed out first.
  for (std::size_t i = n; i-- > 0;) free_.push_back(static_cast<int>(i));
}

std::optional<int> BlockPool::allocate() {
  if (free_.empty()) return std::nullopt;
  const int id = free_.back();
  free_.pop_back();
  in_use_[std::size_t(id)] = 1;
  return id;
}

void BlockPool::release(int id) {
  if (id < 0 || std::size_t(id) >= capacity() || !in_use_[std::size_t(id)]) {
    throw std::logic_error("BlockPool::release: block " + std::to_string(id) + " is not in use");
  }
  in_use_[std::size_t(id)] = 0;
  free_.push_back(id);
}

void BlockPool::fill(float value) {
  float* f = reinterpret_cast<float*>(base_);
  std::fill(f, f + capacity() * block_bytes_ / sizeof(float), value);
}

void BlockPool::set_free_order(const std::vector<int>& order) {
  std::vector<int> a = order, b = free_;
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  if (a != b) throw std::invalid_argument("BlockPool::set_free_order: not the free blocks");
  free_.assign(order.rbegin(), order.rend());  // order[0] is handed out first
}

// ---------------------------------------------------------------------------------------------
// A sequence
// ---------------------------------------------------------------------------------------------

PagedSequence::PagedSequence(BlockPool& pool, const PageLayout& layout, const ModelConfig& cfg)
    : pool_(&pool), layout_(layout), cfg_(cfg) {
  if (pool.block_bytes() != layout.block_bytes()) {
    throw std::invalid_argument("PagedSequence: the pool's blocks are not this layout's");
  }
  reset_latents();
}

void PagedSequence::reset_latents() {
  latents_.clear();
  if (layout_.kind != AttentionKind::MLA) return;
  for (std::size_t l = 0; l < layout_.layers; ++l) {
    latents_.emplace_back(cfg_.mla.kv_lora_rank, cfg_.mla.qk_rope_head_dim, layout_.type);
  }
}

bool PagedSequence::reserve(std::size_t tokens) {
  const std::size_t need = blocks_for(tokens);
  if (need <= table_.size()) return true;
  if (need - table_.size() > pool_->free_blocks()) return false;
  while (table_.size() < need) {
    const int id = *pool_->allocate();
    table_.push_back(id);
    // Each layer's cache gets its page of the new block as its next tile.
    for (std::size_t l = 0; l < latents_.size(); ++l) {
      latents_[l].borrow_tile(pool_->data(id) + l * layout_.page_bytes);
    }
  }
  return true;
}

void PagedSequence::release() {
  for (int id : table_) pool_->release(id);
  table_.clear();
  length_ = 0;
  reset_latents();
}

float* PagedSequence::k_page(std::size_t l, std::size_t i, std::size_t h) {
  unsigned char* page = pool_->data(table_[i]) + l * layout_.page_bytes;
  return reinterpret_cast<float*>(page) + h * 2 * kBlockTokens * layout_.head_dim;
}

void PagedSequence::write_kv(std::size_t l, std::size_t pos, const float* k, const float* v) {
  if (pos >= capacity()) throw std::logic_error("PagedSequence::write_kv: no page for the token");
  const std::size_t d = layout_.head_dim, i = pos / kBlockTokens, r = pos % kBlockTokens;
  for (std::size_t h = 0; h < layout_.kv_heads; ++h) {
    std::copy_n(k + h * d, d, k_page(l, i, h) + r * d);
    std::copy_n(v + h * d, d, v_page(l, i, h) + r * d);
  }
}

void gqa_paged_attend_head(const PagedSequence& s, std::size_t layer, std::size_t kv_head,
                           std::size_t length, const float* q, float scale, float* out) {
  const std::size_t d = s.layout().head_dim;
  // Online softmax (chapter 7's v3, per head): running max m, sum l, and out rescaled when m grows.
  float m = -std::numeric_limits<float>::infinity(), l = 0;
  std::fill(out, out + d, 0.0f);
  float p[kBlockTokens];
  for (std::size_t i = 0; i * kBlockTokens < length; ++i) {
    const std::size_t n = std::min(kBlockTokens, length - i * kBlockTokens);
    const float* K = s.k_page(layer, i, kv_head);
    const float* V = s.v_page(layer, i, kv_head);
    float mx = m;
    for (std::size_t t = 0; t < n; ++t) {
      p[t] = scale * ch07::dot_simd(q, K + t * d, d);
      mx = std::max(mx, p[t]);
    }
    const float corr = std::exp(m - mx);
    l *= corr;
    for (std::size_t j = 0; j < d; ++j) out[j] *= corr;
    for (std::size_t t = 0; t < n; ++t) {
      const float w = std::exp(p[t] - mx);
      l += w;
      const float* v = V + t * d;
      for (std::size_t j = 0; j < d; ++j) out[j] += w * v[j];
    }
    m = mx;
  }
  for (std::size_t j = 0; j < d; ++j) out[j] /= l;
}

}  // namespace mla::ch08
