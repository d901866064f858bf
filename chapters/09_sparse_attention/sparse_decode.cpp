#include "09_sparse_attention/sparse_decode.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "mla/parallel.hpp"

namespace mla::ch09 {

void sparse_decode_gathered(const ch07::LatentCache& cache, const std::int32_t* idx, std::size_t k,
                            std::size_t visible, const ch07::DecodeArgs& a,
                            ch07::LatentCache& scratch) {
  if (cache.type() != ch07::CacheType::F32 || scratch.type() != ch07::CacheType::F32 ||
      scratch.d_c() != cache.d_c() || scratch.d_r() != cache.d_r() || visible > cache.size() ||
      a.batch != 1) {
    throw std::invalid_argument(
        "sparse_decode_gathered: needs F32 caches of the same widths, visible <= size, batch 1");
  }
  check_indices(idx, k, visible);
  // The gather: the selected rows [c_kv | k_rope] copied, in the selection's order, into the
  // scratch cache's tiles (on the step's threads), so chapter 7's kernel sees a dense cache of
  // the k selected tokens.
  scratch.clear();
  scratch.append_gathered(cache, idx, k, a.threads);
  if (scratch.size() == 0) {
    std::fill(a.out, a.out + a.heads * a.d_c, 0.0f);
    return;
  }
  const ch07::SeqRef seq{&scratch, scratch.size()};
  ch07::mla_decode_best(&seq, a);
}

void select_topk_fast(const float* scores, std::size_t visible, std::size_t topk,
                      std::int32_t* out) {
  const std::size_t k = std::min(topk, visible);
  std::vector<std::int32_t> idx(visible);
  std::iota(idx.begin(), idx.end(), 0);
  const auto before = [&](std::int32_t a, std::int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  };
  if (k < visible) {
    std::nth_element(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(), before);
  }
  std::sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), before);
  std::copy_n(idx.begin(), k, out);
  std::fill(out + k, out + topk, -1);
}

namespace {

/// The "dsa_fast" core: the sequence's latents in chapter 7's tiled cache, each query's selection
/// gathered into a scratch cache and attended by chapter 7's best kernel.
class FastSparseAttention final : public ch06::LatentAttention {
 public:
  FastSparseAttention(std::size_t heads, std::size_t d_c, std::size_t d_r,
                      std::shared_ptr<const Selection> sel, std::size_t seq, int threads)
      : heads_(heads),
        d_c_(d_c),
        d_r_(d_r),
        sel_(std::move(sel)),
        seq_(seq),
        threads_(threads),
        cache_(d_c, d_r),
        scratch_(d_c, d_r) {}

  void append(const float* c_kv, const float* k_rope, std::size_t n) override {
    cache_.append(c_kv, k_rope, n);
  }

  void attend(const float* q_lat, const float* q_rope, std::size_t S, std::size_t start,
              float scale, float* out) override {
    if (start + S > cache_.size() || sel_->S != S) {
      throw std::logic_error("FastSparseAttention: the selection does not fit this call");
    }
    for (std::size_t s = 0; s < S; ++s) {
      const ch07::DecodeArgs a = ch07::make_decode_args(
          1, heads_, d_c_, d_r_, q_lat + s * heads_ * d_c_, q_rope + s * heads_ * d_r_, scale,
          out + s * heads_ * d_c_, threads_);
      sparse_decode_gathered(cache_, sel_->row(seq_, s), sel_->topk, start + s + 1, a, scratch_);
    }
  }

  std::size_t size() const override { return cache_.size(); }

 private:
  std::size_t heads_, d_c_, d_r_;
  std::shared_ptr<const Selection> sel_;
  std::size_t seq_;
  int threads_;
  ch07::LatentCache cache_, scratch_;
};

}  // namespace

SparseCoreFactory fast_sparse_cores(int threads) {
  threads = default_threads(threads);
  return [threads](std::size_t heads, std::size_t d_c, std::size_t d_r,
                   std::shared_ptr<const Selection> sel,
                   std::size_t seq) -> std::unique_ptr<ch06::LatentAttention> {
    return std::make_unique<FastSparseAttention>(heads, d_c, d_r, std::move(sel), seq, threads);
  };
}

}  // namespace mla::ch09
