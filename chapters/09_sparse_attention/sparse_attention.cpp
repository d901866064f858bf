#include "09_sparse_attention/sparse_attention.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "mla/rows.hpp"  // shape_str

namespace mla::ch09 {

// ---------------------------------------------------------------------------------------------
// The two forms of sparse attention, plain loops
// ---------------------------------------------------------------------------------------------

void check_indices(const std::int32_t* idx, std::size_t k, std::size_t visible) {
  std::vector<char> seen(visible, 0);
  for (std::size_t j = 0; j < k; ++j) {
    const std::int32_t t = idx[j];
    if (t == -1) continue;
    if (t < -1 || static_cast<std::size_t>(t) >= visible) {
      throw std::invalid_argument("sparse attention: index " + std::to_string(j) + " is " +
                                  std::to_string(t) + ", outside 0.." +
                                  std::to_string(visible - 1) + " (the tokens this query sees)" +
                                  " and not -1 (unused)");
    }
    if (seen[t]) {
      throw std::invalid_argument("sparse attention: position " + std::to_string(t) +
                                  " is listed twice (index " + std::to_string(j) +
                                  "); a token is selected at most once");
    }
    seen[t] = 1;
  }
}

namespace {

float score(const LatentRows& c, const SparseQuery& q, std::size_t h, std::size_t t) {
  const float* ql = q.q_lat + h * c.d_c;
  const float* qr = q.q_rope + h * c.d_r;
  const float* ct = c.c + t * c.d_c;
  const float* kt = c.kr + t * c.d_r;
  float dot = 0.0f, rot = 0.0f;
  for (std::size_t i = 0; i < c.d_c; ++i) dot += ql[i] * ct[i];
  for (std::size_t i = 0; i < c.d_r; ++i) rot += qr[i] * kt[i];
  return q.scale * (dot + rot);
}

}  // namespace

void sparse_attend_gathered(const LatentRows& c, const std::int32_t* idx, std::size_t k,
                            std::size_t visible, const SparseQuery& q) {
  check_indices(idx, k, visible);
  std::vector<std::int32_t> rows;  // the valid entries, in list order
  for (std::size_t j = 0; j < k; ++j) {
    if (idx[j] >= 0) rows.push_back(idx[j]);
  }
  std::vector<float> p(rows.size());
  for (std::size_t h = 0; h < q.heads; ++h) {
    for (std::size_t j = 0; j < rows.size(); ++j) p[j] = score(c, q, h, rows[j]);
    softmax(p.data(), p.size());
    float* o = q.out + h * c.d_c;  // (d_c) = Σ_j p_j · C[idx_j]; 0 if nothing is selected
    std::fill(o, o + c.d_c, 0.0f);
    for (std::size_t j = 0; j < rows.size(); ++j) {
      const float* ct = c.c + static_cast<std::size_t>(rows[j]) * c.d_c;
      for (std::size_t i = 0; i < c.d_c; ++i) o[i] += p[j] * ct[i];
    }
  }
}

void sparse_attend_masked(const LatentRows& c, const std::int32_t* idx, std::size_t k,
                          std::size_t visible, const SparseQuery& q) {
  check_indices(idx, k, visible);
  // The index mask of DeepSeek's reference: -inf everywhere, 0 at the selected positions.
  std::vector<float> mask(visible, kMasked);
  for (std::size_t j = 0; j < k; ++j) {
    if (idx[j] >= 0) mask[idx[j]] = 0.0f;
  }
  std::vector<float> p(visible);
  for (std::size_t h = 0; h < q.heads; ++h) {
    for (std::size_t t = 0; t < visible; ++t) p[t] = score(c, q, h, t) + mask[t];
    softmax(p.data(), visible);  // masked tokens: probability exactly 0
    float* o = q.out + h * c.d_c;
    std::fill(o, o + c.d_c, 0.0f);
    for (std::size_t t = 0; t < visible; ++t) {
      if (p[t] == 0.0f) continue;
      const float* ct = c.c + t * c.d_c;
      for (std::size_t i = 0; i < c.d_c; ++i) o[i] += p[t] * ct[i];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The sparse attention core: chapter 6's LatentAttention, reading the selection
// ---------------------------------------------------------------------------------------------

namespace {

class SparseLatentAttention final : public ch06::LatentAttention {
 public:
  SparseLatentAttention(std::size_t heads, std::size_t d_c, std::size_t d_r,
                        std::shared_ptr<const Selection> sel, std::size_t seq, SparseForm form)
      : heads_(heads), d_c_(d_c), d_r_(d_r), sel_(std::move(sel)), seq_(seq), form_(form) {}

  void append(const float* c_kv, const float* k_rope, std::size_t n) override {
    c_.insert(c_.end(), c_kv, c_kv + n * d_c_);
    kr_.insert(kr_.end(), k_rope, k_rope + n * d_r_);
    tokens_ += n;
  }

  void attend(const float* q_lat, const float* q_rope, std::size_t S, std::size_t start,
              float scale, float* out) override {
    if (start + S > tokens_ || sel_->S != S || seq_ >= sel_->indices.size()) {
      throw std::logic_error("SparseLatentAttention: the selection does not fit this call");
    }
    const LatentRows rows{c_.data(), kr_.data(), tokens_, d_c_, d_r_};
    for (std::size_t s = 0; s < S; ++s) {
      const SparseQuery q{heads_, q_lat + s * heads_ * d_c_, q_rope + s * heads_ * d_r_, scale,
                          out + s * heads_ * d_c_};
      const std::int32_t* idx = sel_->row(seq_, s);
      if (form_ == SparseForm::Gathered) {
        sparse_attend_gathered(rows, idx, sel_->topk, start + s + 1, q);
      } else {
        sparse_attend_masked(rows, idx, sel_->topk, start + s + 1, q);
      }
    }
  }

  std::size_t size() const override { return tokens_; }

 private:
  std::size_t heads_, d_c_, d_r_;
  std::shared_ptr<const Selection> sel_;
  std::size_t seq_;
  SparseForm form_;
  std::size_t tokens_ = 0;
  std::vector<float> c_;   // (T, d_c)
  std::vector<float> kr_;  // (T, d_r)
};

}  // namespace

std::unique_ptr<ch06::LatentAttention> make_sparse_latent_attention(
    std::size_t heads, std::size_t d_c, std::size_t d_r, std::shared_ptr<const Selection> selection,
    std::size_t seq, SparseForm form) {
  return std::make_unique<SparseLatentAttention>(heads, d_c, d_r, std::move(selection), seq, form);
}

SparseCoreFactory reference_sparse_cores(SparseForm form) {
  return [form](std::size_t heads, std::size_t d_c, std::size_t d_r,
                std::shared_ptr<const Selection> sel, std::size_t seq) {
    return make_sparse_latent_attention(heads, d_c, d_r, std::move(sel), seq, form);
  };
}

// ---------------------------------------------------------------------------------------------
// Weights of the whole layer
// ---------------------------------------------------------------------------------------------

DsaWeights load_dsa_weights(const Checkpoint& ckpt, const DsaConfig& cfg, std::size_t layer) {
  check_dsa_config(cfg);
  DsaWeights w;
  w.mla = std::make_shared<const ch06::MlaWeights>(ch06::load_mla_weights(ckpt, cfg.mla, layer));
  w.indexer = load_indexer_weights(ckpt, cfg, layer);
  return w;
}

DsaWeights random_dsa_weights(const DsaConfig& cfg, Rng& rng) {
  check_dsa_config(cfg);
  DsaWeights w;
  w.mla = std::make_shared<const ch06::MlaWeights>(ch06::random_mla_weights(cfg.mla, rng));
  w.indexer = random_indexer_weights(cfg, rng);
  return w;
}

std::vector<TensorData> dsa_weight_tensors(const DsaWeights& w, const DsaConfig& cfg,
                                           std::size_t layer, DType dtype) {
  std::vector<TensorData> out = ch06::mla_weight_tensors(*w.mla, cfg.mla, layer, dtype);
  for (TensorData& t : indexer_weight_tensors(w.indexer, cfg, layer, dtype)) {
    out.push_back(std::move(t));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The DSA layer
// ---------------------------------------------------------------------------------------------

namespace {

const DsaWeights& checked(const std::shared_ptr<const DsaWeights>& w, const DsaConfig& cfg) {
  if (!w || !w->mla) throw std::invalid_argument("DsaLayer: no weights");
  check_dsa_config(cfg);
  return *w;
}

}  // namespace

DsaLayer::DsaLayer(const DsaConfig& cfg, std::shared_ptr<const DsaWeights> w, std::size_t batch,
                   DsaOptions opt)
    : cfg_(cfg),
      w_(std::move(w)),
      batch_(batch),
      indexer_(cfg_, *checked(w_, cfg_).mla, w_->indexer, batch, opt.indexer),
      selection_(std::make_shared<Selection>()),
      scores_(batch) {
  if (!opt.cores) throw std::invalid_argument("DsaLayer: no sparse core factory");
  selection_->indices.resize(batch_);
  // Chapter 6's absorbed layer, unchanged: its cores are made in sequence order 0..B-1, so the
  // factory numbers them and each core reads its own sequence's index lists.
  auto next = std::make_shared<std::size_t>(0);
  std::shared_ptr<const Selection> sel = selection_;
  SparseCoreFactory cores = opt.cores;
  ch06::LatentAttentionFactory factory = [sel, next, cores](std::size_t heads, std::size_t d_c,
                                                            std::size_t d_r) {
    return cores(heads, d_c, d_r, sel, (*next)++);
  };
  mla_ = std::make_unique<ch06::AbsorbedMla>(cfg_.mla, w_->mla, batch_, factory);
}

Tensor3 DsaLayer::forward(const Tensor3& x) {
  if (x.shape(0) != batch_ || x.shape(2) != cfg_.mla.hidden_size) {
    throw std::invalid_argument("DsaLayer::forward: input " + shape_str(x) + ", expected [" +
                                std::to_string(batch_) + ", S, " +
                                std::to_string(cfg_.mla.hidden_size) + "]");
  }
  const std::size_t S = x.shape(1), start = position(), K = cfg_.index_topk;
  Mat h = xt::empty<float>({batch_ * S, cfg_.mla.hidden_size});  // (B·S, d_model)
  std::copy_n(x.data(), x.size(), h.data());
  // 1. The indexer: keys into its cache, queries and head weights of this call.
  const IndexerQueries q = indexer_.project(h, S, start);
  // 2. Scores and top-k per query: query s sees tokens 0..start+s (causal in prefill).
  selection_->S = S;
  selection_->topk = K;
  for (std::size_t b = 0; b < batch_; ++b) {
    std::vector<float>& sc = scores_[b];
    sc.assign(S * (start + S), 0.0f);  // (S, start + S), 0 after each query's position
    selection_->indices[b].assign(S * K, -1);
    for (std::size_t s = 0; s < S; ++s) {
      const std::size_t visible = start + s + 1;
      float* row = sc.data() + s * (start + S);
      indexer_.scores(q, b * S + s, b, visible, row);
      select_topk(row, visible, K, selection_->indices[b].data() + s * K);
    }
  }
  // 3. Chapter 6's absorbed MLA, its attention restricted to the selection.
  return mla_->forward(x);
}

std::pair<Tensor3, Tensor3> run_prefill_decode(
    DsaLayer& layer, const Tensor3& prefill, const Tensor3& decode,
    const std::function<void(const DsaLayer&)>& on_call) {
  Tensor3 pre = layer.forward(prefill);
  if (on_call) on_call(layer);
  const std::size_t B = decode.shape(0), N = decode.shape(1), D = decode.shape(2);
  Tensor3 dec = xt::zeros<float>({B, N, D});
  Tensor3 token = xt::empty<float>({B, std::size_t{1}, D});
  for (std::size_t n = 0; n < N; ++n) {
    for (std::size_t b = 0; b < B; ++b) {
      std::copy_n(decode.data() + (b * N + n) * D, D, token.data() + b * D);
    }
    const Tensor3 y = layer.forward(token);
    if (on_call) on_call(layer);
    for (std::size_t b = 0; b < B; ++b)
      std::copy_n(y.data() + b * D, D, dec.data() + (b * N + n) * D);
  }
  return {std::move(pre), std::move(dec)};
}

}  // namespace mla::ch09
