#include "08_serving/engine.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "05_absorption/absorption.hpp"
#include "07_optimized_mla/kernels/mla_decode.hpp"
#include "mla/parallel.hpp"

namespace mla::ch08 {

Engine::Engine(std::shared_ptr<const Model> m, const PageLayout& layout, int threads)
    : m_(std::move(m)), layout_(layout), threads_(std::max(1, threads)) {
  if (!m_) throw std::invalid_argument("Engine: no model");
  const ModelConfig& c = m_->config;
  check_model_weights(m_->weights, c);
  if (c.attention == AttentionKind::MLA) {
    for (const auto& l : m_->weights.layers) {
      mla_.push_back(std::make_unique<ch06::AbsorbedMla>(c.mla, l.mla, 1));
      up_.push_back(ch04::split_kv_up(l.mla->kv_b_proj, c.mla.num_attention_heads,
                                      c.mla.qk_nope_head_dim, c.mla.v_head_dim));
    }
  } else {
    half_rope_ = std::make_unique<HalfRope>(c.gqa.head_dim, c.gqa.rope_theta);
  }
}

Mat Engine::mla_attention(std::size_t l, const Mat& h, const std::vector<PagedSequence*>& row_seq,
                          const std::vector<std::size_t>& pos) {
  const MlaConfig& c = m_->config.mla;
  const ch06::MlaLayer& layer = *mla_[l];
  const std::size_t N = h.shape(0), H = c.num_attention_heads, dn = c.qk_nope_head_dim,
                    dr = c.qk_rope_head_dim, dqk = dn + dr, dc = c.kv_lora_rank;
  // Chapter 6's projections over all N rows at once (one matrix product per weight), at
  // position 0 — a rotation by angle 0, exactly the identity — then each row rotated to its own
  // position: the rows of one step belong to sequences at different lengths.
  Mat q = layer.project_queries(h, 1, 0);  // (N, H·d_qk)
  Mat c_kv, k_rope;                        // (N, d_c), (N, d_r)
  layer.project_latents(h, 1, 0, c_kv, k_rope);
  for (std::size_t r = 0; r < N; ++r) {
    layer.rope().rotate(q.data() + r * H * dqk + dn, H, dqk, pos[r]);
    layer.rope().rotate(k_rope.data() + r * dr, pos[r]);
    row_seq[r]->latent(l).append(c_kv.data() + r * dc, k_rope.data() + r * dr, 1);
  }
  // Split each head's query, absorb q_nope through W_UK (chapter 5): q_lat (N·H, d_c).
  Mat q_nope = xt::empty<float>({N * H, dn}), q_rope = xt::empty<float>({N * H, dr});
  for (std::size_t r = 0; r < N * H; ++r) {
    std::copy_n(q.data() + r * dqk, dn, q_nope.data() + r * dn);
    std::copy_n(q.data() + r * dqk + dn, dr, q_rope.data() + r * dr);
  }
  const Mat q_lat = ch05::absorb_query(q_nope, up_[l].W_uk, H);
  // Chapter 7's kernel, once for every row of the step: row r reads its sequence's pages up to
  // its own position (a prefill chunk's rows are causal prefixes of one cache).
  std::vector<ch07::SeqRef> seqs(N);
  for (std::size_t r = 0; r < N; ++r) seqs[r] = {&row_seq[r]->latent(l), pos[r] + 1};
  Mat o_lat = xt::empty<float>({N * H, dc});
  ch07::mla_decode_best(seqs.data(),
                        ch07::make_decode_args(N, H, dc, dr, q_lat.data(), q_rope.data(),
                                               layer.softmax_scale(), o_lat.data(), threads_));
  Mat o = ch05::expand_output(o_lat, up_[l].W_uv, H);  // (N·H, d_v)
  o.reshape({N, H * c.v_head_dim});
  return linear(o, m_->weights.layers[l].mla->o_proj);
}

Mat Engine::gqa_attention(std::size_t l, const Mat& h, const std::vector<PagedSequence*>& row_seq,
                          const std::vector<std::size_t>& pos) {
  const GqaConfig& g = m_->config.gqa;
  const GqaWeights& w = m_->weights.layers[l].gqa;
  const std::size_t N = h.shape(0), d = g.head_dim, group = g.heads / g.kv_heads;
  Mat q, k, v;
  gqa_project(w, *half_rope_, h, pos.data(), q, k, v);
  for (std::size_t r = 0; r < N; ++r) {
    row_seq[r]->write_kv(l, pos[r], k.data() + r * k.shape(1), v.data() + r * v.shape(1));
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  Mat o = xt::empty<float>({N, g.heads * d});
  // Threads over rows × heads; each reads its sequence's pages up to its own position.
  parallel_for(long(N * g.heads), threads_, [&](long i) {
    const std::size_t r = std::size_t(i) / g.heads, hq = std::size_t(i) % g.heads;
    gqa_paged_attend_head(*row_seq[r], l, hq / group, pos[r] + 1,
                          q.data() + r * q.shape(1) + hq * d, scale,
                          o.data() + r * o.shape(1) + hq * d);
  });
  return linear(o, w.o_proj);
}

Mat Engine::step(const std::vector<StepItem>& items) {
  const ModelConfig& c = m_->config;
  std::vector<int> tokens;
  std::vector<PagedSequence*> row_seq;
  std::vector<std::size_t> pos, last;
  for (const StepItem& it : items) {
    if (!it.seq || it.tokens.empty()) throw std::invalid_argument("Engine::step: empty item");
    if (it.seq->length() + it.tokens.size() > it.seq->capacity()) {
      throw std::logic_error("Engine::step: a sequence's pages cannot hold its tokens");
    }
    if (it.seq->length() + it.tokens.size() > c.max_position_embeddings) {
      throw std::invalid_argument("Engine::step: past max_position_embeddings");
    }
    for (std::size_t j = 0; j < it.tokens.size(); ++j) {
      tokens.push_back(it.tokens[j]);
      row_seq.push_back(it.seq);
      pos.push_back(it.seq->length() + j);
    }
    last.push_back(tokens.size() - 1);
  }
  const float eps = static_cast<float>(c.rms_norm_eps);
  Mat x = embed(*m_, tokens.data(), tokens.size());  // (N, D): every row of the step
  for (std::size_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = m_->weights.layers[l];
    const Mat hn = rmsnorm(x, lw.input_layernorm, eps);
    x += c.attention == AttentionKind::MLA ? mla_attention(l, hn, row_seq, pos)
                                           : gqa_attention(l, hn, row_seq, pos);
    add_mlp(lw, eps, x);  // one product per MLP weight over all N rows
  }
  for (const StepItem& it : items) it.seq->advance(it.tokens.size());
  Mat h = xt::empty<float>({last.size(), c.hidden_size});
  for (std::size_t i = 0; i < last.size(); ++i) {
    std::copy_n(x.data() + last[i] * c.hidden_size, c.hidden_size, h.data() + i * c.hidden_size);
  }
  return output_logits(*m_, h);
}

}  // namespace mla::ch08
