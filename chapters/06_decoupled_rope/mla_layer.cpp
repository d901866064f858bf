#include "06_decoupled_rope/mla_layer.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "05_absorption/absorption.hpp"
#include "mla/rows.hpp"  // columns, shape_str

namespace mla::ch06 {

namespace {

const MlaConfig& checked(const MlaConfig& cfg) {
  check_mla_config(cfg);
  return cfg;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The shared part of both paths: projections, norms, RoPE, output projection
// ---------------------------------------------------------------------------------------------

MlaLayer::MlaLayer(const MlaConfig& cfg, std::shared_ptr<const MlaWeights> w, std::size_t batch)
    : cfg_(checked(cfg)),  // before anything is derived from it
      w_(std::move(w)),
      batch_(batch),
      rope_(Rope::from_config(cfg_)),
      scale_(mla_softmax_scale(cfg)),
      H_(cfg.num_attention_heads),
      d_nope_(cfg.qk_nope_head_dim),
      d_rope_(cfg.qk_rope_head_dim),
      d_qk_(cfg.qk_head_dim()),
      d_v_(cfg.v_head_dim),
      d_c_(cfg.kv_lora_rank) {
  if (!w_) throw std::invalid_argument("MlaLayer: no weights");
  if (batch_ == 0) throw std::invalid_argument("MlaLayer: batch must be positive");
  check_mla_weights(*w_, cfg_);
}

Mat MlaLayer::project_queries(const Mat& h, std::size_t S, std::size_t start) const {
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  // h: (N, d_model) -> q: (N, H·d_qk), through the query latent c_Q (N, q_lora_rank) if any.
  Mat q = w_->compressed_query()
              ? linear(rmsnorm(linear(h, w_->q_a_proj), w_->q_a_layernorm, eps), w_->q_b_proj)
              : linear(h, w_->q_proj);
  // Each head's last d_rope features are its q^R: rotate them to the token's position.
  for (std::size_t r = 0; r < q.shape(0); ++r) {
    rope_.rotate(q.data() + r * q.shape(1) + d_nope_, H_, d_qk_, start + r % S);
  }
  return q;
}

void MlaLayer::project_latents(const Mat& h, std::size_t S, std::size_t start, Mat& c_kv,
                               Mat& k_rope) const {
  // h: (N, d_model) -> (N, d_c + d_rope) = [c_kv | k_rope]: one down-projection makes both.
  const Mat kv = linear(h, w_->kv_a_proj_with_mqa);
  c_kv = rmsnorm(columns(kv, 0, d_c_), w_->kv_a_layernorm, static_cast<float>(cfg_.rms_norm_eps));
  // k^R: ONE rope key per token, shared by every head (the "mqa" in the weight's name).
  k_rope = columns(kv, d_c_, d_rope_);
  for (std::size_t r = 0; r < k_rope.shape(0); ++r) {
    rope_.rotate(k_rope.data() + r * d_rope_, start + r % S);
  }
}

Tensor3 MlaLayer::forward(const Tensor3& x) {
  if (x.shape(0) != batch_ || x.shape(2) != cfg_.hidden_size) {
    throw std::invalid_argument("MlaLayer::forward: input " + shape_str(x) + ", expected [" +
                                std::to_string(batch_) + ", S, " +
                                std::to_string(cfg_.hidden_size) + "]");
  }
  const std::size_t S = x.shape(1), N = batch_ * S, start = position_;
  Tensor3 y = xt::zeros<float>({batch_, S, cfg_.hidden_size});
  if (S == 0) return y;
  // x: (B, S, d_model) viewed as N = B·S rows, sequence-major.
  Mat h = xt::empty<float>({N, cfg_.hidden_size});
  std::copy_n(x.data(), x.size(), h.data());

  const Mat q = project_queries(h, S, start);  // (N, H·d_qk)
  Mat c_kv, k_rope;                            // (N, d_c), (N, d_rope)
  project_latents(h, S, start, c_kv, k_rope);
  const Mat o = attend(q, c_kv, k_rope, S, start);  // (N, H·d_v)
  position_ += S;

  const Mat out = linear(o, w_->o_proj);  // (N, d_model)
  std::copy_n(out.data(), out.size(), y.data());
  return y;
}

// ---------------------------------------------------------------------------------------------
// Naive: cache full per-head keys and values
// ---------------------------------------------------------------------------------------------

NaiveMla::NaiveMla(const MlaConfig& cfg, std::shared_ptr<const MlaWeights> w, std::size_t batch)
    : MlaLayer(cfg, std::move(w), batch), k_cache_(batch), v_cache_(batch) {}

Mat NaiveMla::attend(const Mat& q, const Mat& c_kv, const Mat& k_rope, std::size_t S,
                     std::size_t start) {
  // Up-project the new latents: c_kv (N, d_c) -> (N, H·(d_nope + d_v)), per head [k_nope | v].
  const Mat kv = linear(c_kv, w_->kv_b_proj);
  const std::size_t kv_w = d_nope_ + d_v_;
  Mat out = xt::zeros<float>({q.shape(0), H_ * d_v_});
  std::vector<float> p(start + S);
  for (std::size_t b = 0; b < batch_; ++b) {
    std::vector<float>& K = k_cache_[b];  // (T, H, d_qk)
    std::vector<float>& V = v_cache_[b];  // (T, H, d_v)
    for (std::size_t s = 0; s < S; ++s) {
      const std::size_t r = b * S + s;
      const float* kr = k_rope.data() + r * d_rope_;
      for (std::size_t h = 0; h < H_; ++h) {
        const float* kvh = kv.data() + r * kv.shape(1) + h * kv_w;
        // Every head's key is [its own k_nope | the shared RoPE(k_rope)]: the copy is the waste
        // the absorbed path avoids.
        K.insert(K.end(), kvh, kvh + d_nope_);
        K.insert(K.end(), kr, kr + d_rope_);
        V.insert(V.end(), kvh + d_nope_, kvh + kv_w);
      }
    }
    for (std::size_t s = 0; s < S; ++s) {
      const std::size_t r = b * S + s, visible = start + s + 1;  // causal: 0 .. start+s
      for (std::size_t h = 0; h < H_; ++h) {
        const float* qh = q.data() + r * q.shape(1) + h * d_qk_;  // [q_nope | RoPE(q_rope)]
        for (std::size_t t = 0; t < visible; ++t) {
          const float* k = K.data() + (t * H_ + h) * d_qk_;
          float dot = 0.0f;
          for (std::size_t i = 0; i < d_qk_; ++i) dot += qh[i] * k[i];
          p[t] = scale_ * dot;
        }
        softmax(p.data(), visible);
        float* o = out.data() + r * out.shape(1) + h * d_v_;  // (d_v) = Σ_t p_t · v_t
        for (std::size_t t = 0; t < visible; ++t) {
          const float* v = V.data() + (t * H_ + h) * d_v_;
          for (std::size_t i = 0; i < d_v_; ++i) o[i] += p[t] * v[i];
        }
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Absorbed: cache only the latent and the shared rope key
// ---------------------------------------------------------------------------------------------

AbsorbedMla::AbsorbedMla(const MlaConfig& cfg, std::shared_ptr<const MlaWeights> w,
                         std::size_t batch, LatentAttentionFactory core)
    : MlaLayer(cfg, std::move(w), batch) {
  if (!core) throw std::invalid_argument("AbsorbedMla: no attention core factory");
  // kv_b_proj holds, per head, d_nope rows of W_UK then d_v rows of W_UV (chapter 4's layout).
  up_ = ch04::split_kv_up(w_->kv_b_proj, H_, d_nope_, d_v_);
  for (std::size_t b = 0; b < batch_; ++b) cores_.push_back(core(H_, d_c_, d_rope_));
}

Mat AbsorbedMla::attend(const Mat& q, const Mat& c_kv, const Mat& k_rope, std::size_t S,
                        std::size_t start) {
  return absorbed_attention(*this, up_, cores_, q, c_kv, k_rope, S, start);
}

Mat absorbed_attention(const MlaLayer& layer, const ch04::KvUp& up,
                       std::vector<std::unique_ptr<LatentAttention>>& cores, const Mat& q,
                       const Mat& c_kv, const Mat& k_rope, std::size_t S, std::size_t start) {
  const MlaConfig& cfg = layer.config();
  const std::size_t N = q.shape(0), H = cfg.num_attention_heads, d_nope = cfg.qk_nope_head_dim,
                    d_rope = cfg.qk_rope_head_dim, d_qk = cfg.qk_head_dim(), d_v = cfg.v_head_dim,
                    d_c = cfg.kv_lora_rank;
  // Split each head's query: q_nope (N·H, d_nope) goes through W_UK, q_rope (N·H, d_rope) does
  // not (it was rotated, and R_t cannot be folded into any weight).
  Mat q_nope = xt::empty<float>({N * H, d_nope});
  Mat q_rope = xt::empty<float>({N * H, d_rope});
  for (std::size_t r = 0; r < N * H; ++r) {
    const float* qh = q.data() + r * d_qk;  // row r = (token r / H, head r % H)
    std::copy_n(qh, d_nope, q_nope.data() + r * d_nope);
    std::copy_n(qh + d_nope, d_rope, q_rope.data() + r * d_rope);
  }
  // Chapter 5's absorption: q_lat_h = W_UK_hᵀ q_nope_h, (N·H, d_c), the same memory as (N, H, d_c).
  const Mat q_lat = ch05::absorb_query(q_nope, up.W_uk, H);

  // Attention against the latent cache, one sequence at a time: (S, H, d_c) per sequence.
  Mat o_lat = xt::empty<float>({N * H, d_c});
  for (std::size_t b = 0; b < layer.batch(); ++b) {
    cores[b]->append(c_kv.data() + b * S * d_c, k_rope.data() + b * S * d_rope, S);
    cores[b]->attend(q_lat.data() + b * S * H * d_c, q_rope.data() + b * S * H * d_rope, S, start,
                     layer.softmax_scale(), o_lat.data() + b * S * H * d_c);
  }
  // Chapter 5's expansion: Σ_t p_t v_t = W_UV_h (Σ_t p_t c_t): (N·H, d_c) -> (N·H, d_v), which is
  // (N, H·d_v), o_proj's input.
  Mat o = ch05::expand_output(o_lat, up.W_uv, H);
  o.reshape({N, H * d_v});
  return o;
}

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

MlaPath absorbed_path(std::string name, std::string description, LatentAttentionFactory core) {
  MlaPath p;
  p.name = std::move(name);
  p.description = std::move(description);
  p.make = [core = std::move(core)](const MlaConfig& cfg, std::shared_ptr<const MlaWeights> w,
                                    std::size_t batch) -> std::unique_ptr<MlaLayer> {
    return std::make_unique<AbsorbedMla>(cfg, std::move(w), batch, core);
  };
  return p;
}

std::vector<MlaPath> builtin_paths() {
  std::vector<MlaPath> paths;
  MlaPath naive;
  naive.name = "naive";
  naive.description = "per-head keys and values cached (H·(d_qk + d_v) numbers per token)";
  naive.make = [](const MlaConfig& cfg, std::shared_ptr<const MlaWeights> w,
                  std::size_t batch) -> std::unique_ptr<MlaLayer> {
    return std::make_unique<NaiveMla>(cfg, std::move(w), batch);
  };
  paths.push_back(std::move(naive));
  paths.push_back(absorbed_path("absorbed",
                                "latent + shared rope key cached (d_c + d_rope numbers per token), "
                                "reference core",
                                make_reference_latent_attention));
  return paths;
}

Tensor3 decode_token_by_token(MlaLayer& layer, const Tensor3& x) {
  const std::size_t B = x.shape(0), N = x.shape(1), D = x.shape(2);
  Tensor3 out = xt::zeros<float>({B, N, D});
  Tensor3 token = xt::empty<float>({B, std::size_t{1}, D});
  for (std::size_t n = 0; n < N; ++n) {
    for (std::size_t b = 0; b < B; ++b) {
      std::copy_n(x.data() + (b * N + n) * D, D, token.data() + b * D);
    }
    const Tensor3 y = layer.forward(token);  // (B, 1, D)
    for (std::size_t b = 0; b < B; ++b) {
      std::copy_n(y.data() + b * D, D, out.data() + (b * N + n) * D);
    }
  }
  return out;
}

std::pair<Tensor3, Tensor3> run_prefill_decode(MlaLayer& layer, const Tensor3& prefill,
                                               const Tensor3& decode) {
  Tensor3 pre = layer.forward(prefill);
  Tensor3 dec = decode_token_by_token(layer, decode);
  return {std::move(pre), std::move(dec)};
}

}  // namespace mla::ch06
