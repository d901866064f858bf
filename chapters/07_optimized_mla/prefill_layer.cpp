#include "07_optimized_mla/prefill_layer.hpp"

#include <algorithm>
#include <ostream>
#include <stdexcept>
#include <string>
#include <utility>

#include "07_optimized_mla/kernels/mla_decode.hpp"
#include "mla/parallel.hpp"
#include "mla/table.hpp"  // num

namespace mla::ch07 {

PrefillLatentAttention::PrefillLatentAttention(std::size_t heads, std::size_t d_c, std::size_t d_r,
                                               int threads)
    : heads_(heads), threads_(default_threads(threads)), cache_(d_c, d_r) {
  if (heads == 0) throw std::invalid_argument("PrefillLatentAttention: heads must be > 0");
}

void PrefillLatentAttention::append(const float* c_kv, const float* k_rope, std::size_t n) {
  cache_.append(c_kv, k_rope, n);
}

void PrefillLatentAttention::attend(const float* q_lat, const float* q_rope, std::size_t S,
                                    std::size_t start, float scale, float* out) {
  if (S == 1) {
    // A decode step: v5 splits the cache over the threads (one block of H rows would give one
    // thread all the work).
    const SeqRef seq{&cache_, start + 1};
    if (start + 1 > cache_.size()) {
      throw std::invalid_argument("PrefillLatentAttention::attend: position past the cache");
    }
    mla_decode_best(&seq, make_decode_args(1, heads_, cache_.d_c(), cache_.d_r(), q_lat, q_rope,
                                           scale, out, threads_));
    return;
  }
  mqa_prefill(cache_, heads_, q_lat, q_rope, S, start, scale, out, threads_);
}

PrefillMla::PrefillMla(const MlaConfig& cfg, std::shared_ptr<const ch06::MlaWeights> w,
                       std::size_t batch, PrefillPolicy policy, int threads,
                       std::optional<PrefillRates> rates, std::ostream* log)
    : MlaLayer(cfg, std::move(w), batch),
      policy_(policy),
      threads_(default_threads(threads)),
      rates_(rates),
      log_(log),
      up_(ch04::split_kv_up(w_->kv_b_proj, H_, d_nope_, d_v_)),
      packed_(w_->kv_b_proj.data(), dims()) {
  for (std::size_t b = 0; b < batch_; ++b) {
    cores_.push_back(std::make_unique<PrefillLatentAttention>(H_, d_c_, d_rope_, threads_));
  }
}

PrefillDims PrefillMla::dims() const {
  PrefillDims d;
  d.heads = H_;
  d.d_c = d_c_;
  d.d_r = d_rope_;
  d.d_nope = d_nope_;
  d.d_v = d_v_;
  return d;
}

Mat PrefillMla::attend(const Mat& q, const Mat& c_kv, const Mat& k_rope, std::size_t S,
                       std::size_t start) {
  PrefillRecord rec;
  rec.chunk = S;
  rec.context = start;
  if (policy_ == PrefillPolicy::Auto) {
    if (!rates_) rates_ = calibrated_prefill_rates(dims(), threads_);
    rec.choice = choose_prefill_mode(dims(), S, start, *rates_);
    rec.mode = rec.choice.mode;
    if (log_ && S > 1) {
      *log_ << "prefill chunk S=" << S << " after T=" << start << ": "
            << prefill_mode_name(rec.mode) << " mode (cost model: mha "
            << num(rec.choice.mha_seconds * 1e3, 3) << " ms, mqa "
            << num(rec.choice.mqa_seconds * 1e3, 3) << " ms)\n";
    }
  } else {
    rec.mode = policy_ == PrefillPolicy::AlwaysMha ? PrefillMode::MHA : PrefillMode::MQA;
  }
  records_.push_back(rec);
  if (rec.mode == PrefillMode::MQA) {
    return ch06::absorbed_attention(*this, up_, cores_, q, c_kv, k_rope, S, start);
  }
  // MHA mode: per sequence, append the latents, decompress all start + S of them, attend.
  const std::size_t N = q.shape(0);
  Mat o = xt::empty<float>({N, H_ * d_v_});
  for (std::size_t b = 0; b < batch_; ++b) {
    cores_[b]->append(c_kv.data() + b * S * d_c_, k_rope.data() + b * S * d_rope_, S);
    const auto& core = static_cast<const PrefillLatentAttention&>(*cores_[b]);
    decompress_kv(core.cache(), start + S, packed_, threads_, kv_);
    mha_prefill(kv_, q.data() + b * S * H_ * d_qk_, S, start, scale_, o.data() + b * S * H_ * d_v_,
                threads_);
  }
  return o;
}

std::vector<ch06::MlaPath> prefill_paths(int threads, std::ostream* log) {
  auto path = [threads, log](const char* name, const char* what, PrefillPolicy policy) {
    ch06::MlaPath p;
    p.name = name;
    p.description = what;
    p.make = [threads, log, policy](const MlaConfig& cfg, std::shared_ptr<const ch06::MlaWeights> w,
                                    std::size_t batch) -> std::unique_ptr<ch06::MlaLayer> {
      return std::make_unique<PrefillMla>(cfg, std::move(w), batch, policy, threads, std::nullopt,
                                          policy == PrefillPolicy::Auto ? log : nullptr);
    };
    return p;
  };
  return {path("prefill_mha",
               "chapter 7's prefill, every call in MHA mode (decompress K/V, flash attention)",
               PrefillPolicy::AlwaysMha),
          path("prefill_mqa", "chapter 7's prefill, every call in MQA mode (absorbed, latent)",
               PrefillPolicy::AlwaysMqa),
          path("prefill_auto", "chapter 7's prefill, the mode per chunk by the cost model",
               PrefillPolicy::Auto)};
}

}  // namespace mla::ch07
