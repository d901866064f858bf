#include "06_decoupled_rope/latent_attention.hpp"

#include <stdexcept>
#include <string>
#include <vector>

#include "mla/tensor.hpp"

namespace mla::ch06 {

namespace {

/// The reference core: plain loops, nothing clever, so it is easy to check by reading.
class ReferenceLatentAttention final : public LatentAttention {
 public:
  ReferenceLatentAttention(std::size_t heads, std::size_t d_c, std::size_t d_r)
      : heads_(heads), d_c_(d_c), d_r_(d_r) {}

  void append(const float* c_kv, const float* k_rope, std::size_t n) override {
    // The whole per-token cache: d_c latent numbers and d_r rope-key numbers, shared by all heads.
    c_.insert(c_.end(), c_kv, c_kv + n * d_c_);
    kr_.insert(kr_.end(), k_rope, k_rope + n * d_r_);
    tokens_ += n;
  }

  void attend(const float* q_lat, const float* q_rope, std::size_t S, std::size_t start,
              float scale, float* out) override {
    if (start + S > tokens_) {
      throw std::invalid_argument("LatentAttention::attend: queries up to position " +
                                  std::to_string(start + S) + " but only " +
                                  std::to_string(tokens_) + " tokens cached");
    }
    std::vector<float> p(start + S);  // scores, then probabilities, of one (query, head)
    for (std::size_t s = 0; s < S; ++s) {
      const std::size_t visible = start + s + 1;  // causal: tokens 0 .. start+s
      for (std::size_t h = 0; h < heads_; ++h) {
        const float* ql = q_lat + (s * heads_ + h) * d_c_;   // (d_c)
        const float* qr = q_rope + (s * heads_ + h) * d_r_;  // (d_r)
        for (std::size_t t = 0; t < visible; ++t) {
          const float* c = c_.data() + t * d_c_;
          const float* kr = kr_.data() + t * d_r_;
          float dot = 0.0f;
          for (std::size_t i = 0; i < d_c_; ++i) dot += ql[i] * c[i];  // content score
          float rot = 0.0f;
          for (std::size_t i = 0; i < d_r_; ++i) rot += qr[i] * kr[i];  // position score
          p[t] = scale * (dot + rot);
        }
        softmax(p.data(), visible);
        float* o = out + (s * heads_ + h) * d_c_;  // (d_c) = Σ_t p_t · c_t
        for (std::size_t i = 0; i < d_c_; ++i) o[i] = 0.0f;
        for (std::size_t t = 0; t < visible; ++t) {
          const float* c = c_.data() + t * d_c_;
          for (std::size_t i = 0; i < d_c_; ++i) o[i] += p[t] * c[i];
        }
      }
    }
  }

  std::size_t size() const override { return tokens_; }

 private:
  std::size_t heads_, d_c_, d_r_;
  std::size_t tokens_ = 0;
  std::vector<float> c_;   // (T, d_c) normalized latents
  std::vector<float> kr_;  // (T, d_r) rotated rope keys
};

}  // namespace

std::unique_ptr<LatentAttention> make_reference_latent_attention(std::size_t heads, std::size_t d_c,
                                                                 std::size_t d_r) {
  return std::make_unique<ReferenceLatentAttention>(heads, d_c, d_r);
}

}  // namespace mla::ch06
