#include "07_optimized_mla/fast_latent_attention.hpp"
#include "07_optimized_mla/runner.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "07_optimized_mla/kernels/mla_decode.hpp"
#include "07_optimized_mla/latent_cache.hpp"
#include "mla/parallel.hpp"

namespace mla::ch07 {

namespace {

class FastLatentAttention final : public ch06::LatentAttention {
 public:
  FastLatentAttention(std::size_t heads, std::size_t d_c, std::size_t d_r, CacheType type,
                      int threads)
      : heads_(heads),
        d_c_(d_c),
        d_r_(d_r),
        threads_(default_threads(threads)),
        cache_(d_c, d_r, type) {
    if (heads == 0) throw std::invalid_argument("FastLatentAttention: heads must be > 0");
  }

  // The layout work happens here, once per token: rows go into the tiled, padded cache.
  void append(const float* c_kv, const float* k_rope, std::size_t n) override {
    cache_.append(c_kv, k_rope, n);
  }

  void attend(const float* q_lat, const float* q_rope, std::size_t S, std::size_t start,
              float scale, float* out) override {
    if (start + S > cache_.size()) {
      throw std::invalid_argument("LatentAttention::attend: queries up to position " +
                                  std::to_string(start + S) + " but only " +
                                  std::to_string(cache_.size()) + " tokens cached");
    }
    // S queries = a batch of S "sequences" sharing one cache, each seeing its causal prefix.
    seqs_.resize(S);
    for (std::size_t i = 0; i < S; ++i) seqs_[i] = {&cache_, start + i + 1};
    mla_decode_best(seqs_.data(),
                    make_decode_args(S, heads_, d_c_, d_r_, q_lat, q_rope, scale, out, threads_));
  }

  std::size_t size() const override { return cache_.size(); }

 private:
  std::size_t heads_, d_c_, d_r_;
  int threads_ = 1;
  LatentCache cache_;
  std::vector<SeqRef> seqs_;
};

}  // namespace

std::unique_ptr<ch06::LatentAttention> make_fast_latent_attention(std::size_t heads,
                                                                  std::size_t d_c, std::size_t d_r,
                                                                  int threads) {
  return std::make_unique<FastLatentAttention>(heads, d_c, d_r, CacheType::F32, threads);
}

std::unique_ptr<ch06::LatentAttention> make_bf16_latent_attention(std::size_t heads,
                                                                  std::size_t d_c, std::size_t d_r,
                                                                  int threads) {
  return std::make_unique<FastLatentAttention>(heads, d_c, d_r, CacheType::BF16, threads);
}

ch06::LatentAttentionFactory latent_attention_factory(CacheType type, int threads) {
  return [type, threads](std::size_t heads, std::size_t d_c, std::size_t d_r) {
    return std::unique_ptr<ch06::LatentAttention>(
        std::make_unique<FastLatentAttention>(heads, d_c, d_r, type, threads));
  };
}

ch06::LatentAttentionFactory fast_latent_attention_factory(int threads) {
  return latent_attention_factory(CacheType::F32, threads);
}

ch06::LatentAttentionFactory bf16_latent_attention_factory(int threads) {
  return latent_attention_factory(CacheType::BF16, threads);
}

namespace {
// A lossy cache promises only its own tolerance, not the 1e-4 of the exact paths: the bf16 cache
// rounds every cached number to 8 significant bits (kBf16Atol), the FP8 one keeps 3 mantissa bits
// of the latent (kFp8Atol).
ch06::MlaPath lossy_path(const char* name, const char* what, CacheType type, double tolerance,
                         int threads) {
  ch06::MlaPath p = ch06::absorbed_path(name, what, latent_attention_factory(type, threads));
  p.min_tolerance = tolerance;
  return p;
}
}  // namespace

std::vector<ch06::MlaPath> optimized_paths(int threads) {
  return {ch06::absorbed_path("fast", "absorbed, chapter 7's head-blocked kernel (v5), fp32 cache",
                              fast_latent_attention_factory(threads)),
          lossy_path("fast_bf16", "absorbed, chapter 7's kernel on a bf16 cache (v6)",
                     CacheType::BF16, kBf16Atol, threads),
          lossy_path("fast_fp8", "absorbed, chapter 7's kernel on an FP8 cache (v7, V3.2 layout)",
                     CacheType::FP8, kFp8Atol, threads)};
}

}  // namespace mla::ch07
