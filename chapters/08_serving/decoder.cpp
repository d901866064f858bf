#include "08_serving/decoder.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

#include "07_optimized_mla/fast_latent_attention.hpp"
#include "mla/errors.hpp"

namespace mla::ch08 {

// ---------------------------------------------------------------------------------------------
// The attention-independent parts
// ---------------------------------------------------------------------------------------------

Mat embed(const Model& m, const int* tokens, std::size_t n) {
  const std::size_t V = m.config.vocab_size, D = m.config.hidden_size;
  Mat x = xt::empty<float>({n, D});
  for (std::size_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || static_cast<std::size_t>(tokens[i]) >= V) {
      throw std::invalid_argument("embed: token " + std::to_string(tokens[i]) +
                                  " outside the vocabulary of " + std::to_string(V));
    }
    std::copy_n(m.weights.embed_tokens.data() + tokens[i] * D, D, x.data() + i * D);
  }
  return x;
}

void add_mlp(const LayerWeights& l, float eps, Mat& x) {
  // x: (N, D) -> y (N, D) normed -> gate, up (N, I) -> silu(gate)·up (N, I) -> down (N, D)
  const Mat y = rmsnorm(x, l.post_attention_layernorm, eps);
  Mat g = linear(y, l.gate_proj);
  const Mat u = linear(y, l.up_proj);
  for (std::size_t i = 0; i < g.size(); ++i) {
    const float a = g.data()[i];
    g.data()[i] = a / (1.0f + std::exp(-a)) * u.data()[i];  // SiLU(a) = a·sigmoid(a)
  }
  x += linear(g, l.down_proj);
}

Mat output_logits(const Model& m, const Mat& h) {
  return linear(rmsnorm(h, m.weights.norm, static_cast<float>(m.config.rms_norm_eps)),
                m.weights.lm_head);
}

HalfRope::HalfRope(std::size_t head_dim, double theta)
    : rope_(ch06::rope_frequencies(head_dim, theta)) {}

HalfRope::HalfRope(std::vector<float> freqs) : rope_(std::move(freqs)) {}

void HalfRope::rotate(float* x, std::size_t count, std::size_t stride, std::size_t pos) const {
  const std::size_t half = dim() / 2;
  std::vector<float> c(half), s(half);
  rope_.angles(pos, c.data(), s.data());
  for (std::size_t h = 0; h < count; ++h) {
    float* v = x + h * stride;
    for (std::size_t i = 0; i < half; ++i) {
      // rotate_half: (x1, x2) -> (x1·cos − x2·sin, x2·cos + x1·sin), x1 = v[i], x2 = v[i + d/2]
      const float x1 = v[i], x2 = v[i + half];
      v[i] = x1 * c[i] - x2 * s[i];
      v[i + half] = x2 * c[i] + x1 * s[i];
    }
  }
}

void gqa_project(const GqaWeights& w, const HalfRope& rope, const Mat& h, const std::size_t* pos,
                 Mat& q, Mat& k, Mat& v) {
  q = linear(h, w.q_proj);  // (N, H·d_h)
  k = linear(h, w.k_proj);  // (N, H_kv·d_h)
  v = linear(h, w.v_proj);  // (N, H_kv·d_h)
  const std::size_t d = rope.dim();
  for (std::size_t r = 0; r < h.shape(0); ++r) {
    rope.rotate(q.data() + r * q.shape(1), q.shape(1) / d, d, pos[r]);
    rope.rotate(k.data() + r * k.shape(1), k.shape(1) / d, d, pos[r]);
  }
}

// ---------------------------------------------------------------------------------------------
// Attention of one sequence
// ---------------------------------------------------------------------------------------------

namespace {

/// Chapter 6's layer, for a batch of one sequence.
class MlaSequenceAttention final : public SequenceAttention {
 public:
  explicit MlaSequenceAttention(std::unique_ptr<ch06::MlaLayer> layer) : layer_(std::move(layer)) {}
  Mat forward(const Mat& x) override {
    const std::size_t S = x.shape(0), D = x.shape(1);
    Tensor3 t = xt::empty<float>({std::size_t{1}, S, D});
    std::copy_n(x.data(), x.size(), t.data());
    const Tensor3 y = layer_->forward(t);
    Mat out = xt::empty<float>({S, D});
    std::copy_n(y.data(), y.size(), out.data());
    return out;
  }

 private:
  std::unique_ptr<ch06::MlaLayer> layer_;
};

/// Llama-style attention with a plain cache: K and V rows (T, H_kv·d_h) of this sequence.
class GqaSequenceAttention final : public SequenceAttention {
 public:
  /// With `record`, each forward() also stores its attention weights there: heads matrices
  /// (T, T) over every token cached so far (attention_weights() runs one prefill).
  GqaSequenceAttention(const GqaWeights& w, const GqaConfig& c, std::vector<Mat>* record = nullptr)
      : w_(w), c_(c), rope_(c.head_dim, c.rope_theta), record_(record) {}
  Mat forward(const Mat& x) override {
    const std::size_t S = x.shape(0), d = c_.head_dim, kvw = c_.kv_heads * d;
    const std::size_t group = c_.heads / c_.kv_heads, start = T_;
    std::vector<std::size_t> pos(S);
    for (std::size_t s = 0; s < S; ++s) pos[s] = start + s;
    Mat q, k, v;
    gqa_project(w_, rope_, x, pos.data(), q, k, v);
    K_.insert(K_.end(), k.begin(), k.end());
    V_.insert(V_.end(), v.begin(), v.end());
    T_ += S;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    Mat o = xt::zeros<float>({S, c_.heads * d});
    std::vector<float> p(T_);
    if (record_) record_->assign(c_.heads, xt::zeros<float>({T_, T_}));
    for (std::size_t s = 0; s < S; ++s) {
      const std::size_t visible = start + s + 1;  // causal
      for (std::size_t h = 0; h < c_.heads; ++h) {
        const std::size_t g = h / group;  // the KV head this query head reads
        const float* qh = q.data() + s * q.shape(1) + h * d;
        for (std::size_t t = 0; t < visible; ++t) {
          const float* kt = K_.data() + t * kvw + g * d;
          float dot = 0;
          for (std::size_t i = 0; i < d; ++i) dot += qh[i] * kt[i];
          p[t] = scale * dot;
        }
        softmax(p.data(), visible);
        if (record_) std::copy_n(p.data(), visible, &(*record_)[h](start + s, 0));
        float* oh = o.data() + s * o.shape(1) + h * d;
        for (std::size_t t = 0; t < visible; ++t) {
          const float* vt = V_.data() + t * kvw + g * d;
          for (std::size_t i = 0; i < d; ++i) oh[i] += p[t] * vt[i];
        }
      }
    }
    return linear(o, w_.o_proj);
  }

 private:
  const GqaWeights& w_;
  GqaConfig c_;
  HalfRope rope_;
  std::vector<float> K_, V_;  // (T, H_kv·d_h) each
  std::size_t T_ = 0;
  std::vector<Mat>* record_;  // null: keep no weights
};

}  // namespace

std::unique_ptr<SequenceAttention> gqa_attention(const GqaWeights& w, const GqaConfig& c) {
  return std::make_unique<GqaSequenceAttention>(w, c);
}

std::vector<ch06::MlaPath> mla_paths(int threads) {
  std::vector<ch06::MlaPath> paths = ch06::builtin_paths();
  for (auto& p : ch07::optimized_paths(threads)) paths.push_back(std::move(p));
  return paths;
}

Decoder::Decoder(std::shared_ptr<const Model> m, const std::string& path, int threads)
    : m_(std::move(m)) {
  if (!m_) throw std::invalid_argument("Decoder: no model");
  const ModelConfig& c = m_->config;
  check_model_weights(m_->weights, c);
  if (c.attention == AttentionKind::GQA) {
    if (path != "gqa" && path != "absorbed") {  // "absorbed" is every Decoder's default
      throw std::invalid_argument("Decoder: an MHA/GQA model has one path, 'gqa', not '" + path +
                                  "'");
    }
    for (const auto& l : m_->weights.layers) {
      attn_.push_back(gqa_attention(l.gqa, c.gqa));
    }
    return;
  }
  const auto paths = mla_paths(threads);
  const auto it = std::find_if(paths.begin(), paths.end(),
                               [&](const ch06::MlaPath& p) { return p.name == path; });
  if (it == paths.end()) throw std::invalid_argument("Decoder: no MLA path '" + path + "'");
  for (const auto& l : m_->weights.layers) {
    attn_.push_back(std::make_unique<MlaSequenceAttention>(it->make(c.mla, l.mla, 1)));
  }
}

Decoder::Decoder(std::shared_ptr<const Model> m,
                 std::vector<std::unique_ptr<SequenceAttention>> attn)
    : m_(std::move(m)), attn_(std::move(attn)) {
  if (!m_) throw std::invalid_argument("Decoder: no model");
  if (attn_.size() != m_->weights.layers.size()) {
    throw std::invalid_argument("Decoder: " + std::to_string(attn_.size()) +
                                " attention layers for a model of " +
                                std::to_string(m_->weights.layers.size()));
  }
}

Mat Decoder::forward(const std::vector<int>& tokens) {
  const ModelConfig& c = m_->config;
  if (position_ + tokens.size() > c.max_position_embeddings) {
    throw std::invalid_argument(
        "Decoder: position " + std::to_string(position_ + tokens.size()) +
        " beyond max_position_embeddings = " + std::to_string(c.max_position_embeddings));
  }
  const float eps = static_cast<float>(c.rms_norm_eps);
  Mat x = embed(*m_, tokens.data(), tokens.size());  // (S, D)
  for (std::size_t i = 0; i < attn_.size(); ++i) {
    const LayerWeights& l = m_->weights.layers[i];
    // DeepSeek's Block: x = x + attn(attn_norm(x)); x = x + ffn(ffn_norm(x)).
    x += attn_[i]->forward(rmsnorm(x, l.input_layernorm, eps));
    add_mlp(l, eps, x);
  }
  position_ += tokens.size();
  return output_logits(*m_, x);
}

DecoderNextToken::DecoderNextToken(std::shared_ptr<const Model> m, const std::string& path)
    : m_(m), path_(path), decoder_(std::move(m), path) {}

int DecoderNextToken::recompute(const std::vector<int>& tokens) {
  Decoder fresh(m_, path_);  // empty caches: every key and value is computed again
  const Mat logits = fresh.forward(tokens);
  return argmax(logits.data() + (logits.shape(0) - 1) * logits.shape(1), logits.shape(1));
}

int DecoderNextToken::cached(const std::vector<int>& new_tokens) {
  const Mat logits = decoder_.forward(new_tokens);
  return argmax(logits.data() + (logits.shape(0) - 1) * logits.shape(1), logits.shape(1));
}

std::vector<Mat> attention_weights(const Model& m, const std::vector<int>& tokens,
                                   std::size_t layer) {
  const ModelConfig& c = m.config;
  if (c.attention != AttentionKind::GQA) {
    throw InputError(
        "attention maps: an MHA/GQA model only (an MLA model's weights are inside "
        "chapter 6's layers)");
  }
  if (layer >= c.num_hidden_layers) {
    throw InputError("attention maps: layer " + std::to_string(layer) + " of a model of " +
                     std::to_string(c.num_hidden_layers) + " layers");
  }
  if (tokens.empty() || tokens.size() > c.max_position_embeddings) {
    throw InputError("attention maps: " + std::to_string(tokens.size()) +
                     " tokens, expected 1 to the context of " +
                     std::to_string(c.max_position_embeddings));
  }
  const float eps = static_cast<float>(c.rms_norm_eps);
  std::vector<Mat> maps;
  Mat x = embed(m, tokens.data(), tokens.size());  // (S, D)
  for (std::size_t i = 0; i <= layer; ++i) {  // the layers below, then the asked one's attention
    const LayerWeights& l = m.weights.layers[i];
    GqaSequenceAttention attn(l.gqa, c.gqa, i == layer ? &maps : nullptr);
    x += attn.forward(rmsnorm(x, l.input_layernorm, eps));
    if (i < layer) add_mlp(l, eps, x);
  }
  return maps;
}

std::vector<int> generate(Decoder& d, const std::vector<int>& prompt, std::size_t max_new,
                          const SamplingParams& sampling,
                          const std::function<void(int)>& on_token) {
  if (prompt.empty()) throw std::invalid_argument("generate: empty prompt");
  Sampler sampler(sampling);
  const std::size_t V = d.model().config.vocab_size;
  const auto eos = d.model().config.eos_token_id;
  std::vector<int> out;
  Mat logits = d.forward(prompt);
  while (out.size() < max_new) {
    const int t = sampler.sample(logits.data() + (logits.shape(0) - 1) * V, V);
    out.push_back(t);
    if (on_token) on_token(t);
    if ((eos && static_cast<std::size_t>(t) == *eos) || out.size() == max_new) break;
    logits = d.forward({t});
  }
  return out;
}

}  // namespace mla::ch08
