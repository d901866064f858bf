#include "08_serving/mla_from_mha.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <utility>

#include <fmt/format.h>

#include "05_absorption/absorption.hpp"
#include "06_decoupled_rope/latent_attention.hpp"
#include "06_decoupled_rope/rope.hpp"
#include "mla/errors.hpp"
#include "mla/safetensors_writer.hpp"

namespace mla::ch08 {

namespace {

/// One converted layer's attention over one sequence, attending in the absorbed form (the file
/// comment of mla_from_mha.hpp) with the three steps of ch06::absorbed_attention: chapter 5's
/// query absorption, a chapter 6 LatentAttention core over the cached latent (T, r) and rope key
/// (T, d_r), chapter 5's output expansion.
///
/// The core caches ONE rope key per token, shared by every head, which is exactly what the
/// conversion makes even when RoPE stays on m > 1 directions across heads: mha_to_mla mixes the
/// heads' pair-i components into m directions and stacks those m·n rotated 2-vectors into the
/// one key k^R (d_r = 2·m·n), each head reading all of it with its own rope query q^R_h (zero
/// where head h does not load a direction). So the rope units need no per-head key; only their
/// frequencies differ from DeepSeek's (each unit rotates with its MHA pair's frequency, applied
/// here before the core sees the keys, as chapter 6's layer does).
class ConvertedAttention final : public SequenceAttention {
 public:
  ConvertedAttention(std::shared_ptr<const MlaFromMhaModel> m, std::size_t layer,
                     const ch06::LatentAttentionFactory& core)
      : m_(std::move(m)),
        w_(m_->layers.at(layer)),
        o_proj_(m_->base->weights.layers[layer].gqa.o_proj),
        core_(core(w_.heads, w_.rank, w_.rope_dim())) {
    if (w_.units() > 0) {
      std::vector<float> f;
      for (std::size_t p : w_.rope_pair) f.push_back(m_->rope_frequencies.at(p));
      rope_.emplace(std::move(f));
    }
  }

  Mat forward(const Mat& x) override {
    const std::size_t S = x.shape(0), H = w_.heads, d = w_.head_dim, r = w_.rank;
    const std::size_t dr = w_.rope_dim(), start = core_->size();
    Mat q = linear(x, w_.W_q);          // (S, H·d): no-RoPE queries
    Mat qr = linear(x, w_.W_qr);        // (S, H·d_r): each head's rope query
    const Mat c = linear(x, w_.W_dkv);  // (S, r): the latent, cached
    Mat kr = linear(x, w_.W_kr);        // (S, d_r): the shared rope key, cached
    if (rope_) {
      for (std::size_t s = 0; s < S; ++s) {
        rope_->rotate(qr.data() + s * H * dr, H, dr, start + s);
        rope_->rotate(kr.data() + s * dr, 1, dr, start + s);
      }
    }
    // Chapter 5's absorption q̃_h = W^UK_hᵀ·q_h: (S·H, d) -> (S·H, r), the same memory as
    // (S, H, r).
    q.reshape({S * H, d});
    const Mat q_lat = ch05::absorb_query(q, w_.W_uk, H);
    // The core: scores q̃_h·c_t + q^R_h·k^R_t over the visible tokens, softmax with the MHA
    // model's own scale 1/√d_h, weighted sum of the latents: (S, H, r).
    core_->append(c.data(), kr.data(), S);
    Mat o_lat = xt::empty<float>({S * H, r});
    core_->attend(q_lat.data(), qr.data(), S, start, 1.0f / std::sqrt(static_cast<float>(d)),
                  o_lat.data());
    // Chapter 5's expansion o_h = W^UV_h·Σ_t p_t c_t: (S·H, r) -> (S·H, d), which is (S, H·d).
    Mat o = ch05::expand_output(o_lat, w_.W_uv, H);
    o.reshape({S, H * d});
    return linear(o, o_proj_);
  }

 private:
  std::shared_ptr<const MlaFromMhaModel> m_;  // keeps the weights below alive
  const ch04::MlaFromMha& w_;
  const Mat& o_proj_;
  std::unique_ptr<ch06::LatentAttention> core_;  // this sequence's cache: (T, r) + (T, d_r)
  std::optional<HalfRope> rope_;                 // none when no unit keeps RoPE
};

}  // namespace

std::size_t MlaFromMhaModel::cache_floats_per_token() const {
  return layers.empty() ? 0 : layers.front().cache_floats();
}

namespace {

/// InputError unless the model's attention is MHA.
void check_mha(const ModelConfig& c) {
  if (c.attention != AttentionKind::GQA || c.gqa.kv_heads != c.gqa.heads) {
    throw InputError(fmt::format(
        "the model's attention is {}{}: the conversion starts from MHA (as many key/value "
        "heads as query heads)",
        c.variant(),
        c.attention == AttentionKind::GQA
            ? fmt::format(" ({} key/value heads for {} query heads)", c.gqa.kv_heads, c.gqa.heads)
            : std::string(" (already latent)")));
  }
}

/// A layer's attention that also adds its inputs' x·xᵀ to a running sum.
class RecordingAttention final : public SequenceAttention {
 public:
  RecordingAttention(std::unique_ptr<SequenceAttention> inner, Mat& sum, std::size_t& count)
      : inner_(std::move(inner)), sum_(sum), count_(count) {}
  Mat forward(const Mat& x) override {
    const Mat xt_ = xt::transpose(x);
    sum_ += matmul(xt_, x);  // Σ_rows x·xᵀ: (D, D)
    count_ += x.shape(0);
    return inner_->forward(x);
  }

 private:
  std::unique_ptr<SequenceAttention> inner_;
  Mat& sum_;
  std::size_t& count_;
};

}  // namespace

std::vector<Mat> attention_input_moments(const Model& m, const std::vector<int>& text,
                                         std::size_t window) {
  check_mha(m.config);
  if (text.size() < 2 || window == 0) {
    throw InputError("calibration: the text holds no window to read");
  }
  const std::size_t D = m.config.hidden_size, L = m.weights.layers.size();
  std::vector<Mat> sums(L, xt::zeros<float>({D, D}));
  std::vector<std::size_t> counts(L, 0);
  auto view = std::shared_ptr<const Model>(&m, [](const Model*) {});  // not owned: lives in m
  for (std::size_t start = 0; start + 1 < text.size(); start += window) {
    std::vector<std::unique_ptr<SequenceAttention>> attn;
    for (std::size_t i = 0; i < L; ++i) {
      attn.push_back(std::make_unique<RecordingAttention>(
          gqa_attention(m.weights.layers[i].gqa, m.config.gqa), sums[i], counts[i]));
    }
    Decoder d(view, std::move(attn));
    const std::size_t n = std::min(window, text.size() - start);
    d.forward(std::vector<int>(text.begin() + start, text.begin() + start + n));
  }
  for (std::size_t i = 0; i < L; ++i) sums[i] /= static_cast<float>(counts[i]);
  return sums;
}

MlaFromMhaModel convert_mha_model(std::shared_ptr<const Model> m, const ch04::MhaToMlaOptions& o,
                                  const std::vector<Mat>& moments) {
  if (!m) throw std::invalid_argument("convert_mha_model: no model");
  const ModelConfig& c = m->config;
  check_mha(c);
  MlaFromMhaModel out;
  out.base = m;
  out.options = o;
  out.calibrated = !moments.empty();
  out.rope_frequencies = ch06::rope_frequencies(c.gqa.head_dim, c.gqa.rope_theta);
  if (!moments.empty() && moments.size() != m->weights.layers.size()) {
    throw InputError(fmt::format("convert_mha_model: {} calibration moments for {} layers",
                                 moments.size(), m->weights.layers.size()));
  }
  for (std::size_t li = 0; li < m->weights.layers.size(); ++li) {
    const LayerWeights& l = m->weights.layers[li];
    const ch04::MhaProjections p{l.gqa.q_proj, l.gqa.k_proj, l.gqa.v_proj, c.gqa.heads,
                                 c.gqa.head_dim};
    const std::size_t D = c.hidden_size;
    Mat basis = xt::zeros<float>({D, D});  // diag(input_layernorm)
    for (std::size_t i = 0; i < D; ++i) basis(i, i) = l.input_layernorm(i);
    if (!moments.empty()) basis = ch04::input_basis_from_second_moment(moments[li]);
    out.layers.push_back(ch04::mha_to_mla(p, o, basis));
  }
  return out;
}

Decoder converted_decoder(const std::shared_ptr<const MlaFromMhaModel>& m,
                          const ch06::LatentAttentionFactory& core) {
  std::vector<std::unique_ptr<SequenceAttention>> attn;
  for (std::size_t i = 0; i < m->layers.size(); ++i) {
    attn.push_back(std::make_unique<ConvertedAttention>(m, i, core));
  }
  return Decoder(m->base, std::move(attn));
}

double bits_per_byte(const std::function<Decoder()>& make, const std::vector<int>& text,
                     std::size_t window, std::size_t max_windows) {
  if (window == 0 || text.size() < window + 1) {
    throw InputError(fmt::format("bits_per_byte: a text of {} bytes holds no window of {} + 1",
                                 text.size(), window));
  }
  const std::size_t n = std::min((text.size() - 1) / window, max_windows);
  double total = 0.0;
  std::size_t count = 0;
  for (std::size_t j = 0; j < n; ++j) {
    Decoder d = make();
    const std::vector<int> x(text.begin() + j * window, text.begin() + (j + 1) * window);
    const Mat logits = d.forward(x);  // (window, V)
    const std::size_t V = logits.shape(1);
    for (std::size_t s = 0; s < window; ++s) {
      const float* row = logits.data() + s * V;
      const double mx = *std::max_element(row, row + V);
      double sum = 0.0;
      for (std::size_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
      const int target = text[j * window + s + 1];
      total += mx + std::log(sum) - row[target];  // −log softmax(row)[target]
      ++count;
    }
  }
  return total / static_cast<double>(count) / std::log(2.0);
}

void save_mla_from_mha(const MlaFromMhaModel& m, const std::string& dir) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  std::vector<TensorData> tensors;
  auto add = [&](const std::string& name, const auto& t) {
    tensors.push_back(
        {name, DType::F32, {t.shape().begin(), t.shape().end()}, {t.begin(), t.end()}});
  };
  const auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  for_each_weight(
      m.base->weights, m.base->config,
      [&](const std::string& n, const auto& t, const WeightShape&) {
        // k_proj and v_proj are replaced by the latent's tensors; q_proj stays (the
        // no-RoPE queries are MHA's queries).
        if (!ends_with(n, "self_attn.k_proj.weight") && !ends_with(n, "self_attn.v_proj.weight")) {
          add(n, t);
        }
      });
  for (std::size_t i = 0; i < m.layers.size(); ++i) {
    const std::string p = ch06::layer_prefix(i) + "self_attn.";
    const ch04::MlaFromMha& w = m.layers[i];
    add(p + "q_rope_proj.weight", w.W_qr);
    add(p + "kv_a_proj.weight", w.W_dkv);
    add(p + "k_rope_proj.weight", w.W_kr);
    add(p + "k_up_proj.weight", w.W_uk);
    add(p + "v_up_proj.weight", w.W_uv);
  }
  write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
  nlohmann::json j = m.base->config.to_json();
  const ch04::MlaFromMha& w0 = m.layers.front();
  std::vector<float> unit_freq;
  for (std::size_t pr : w0.rope_pair) unit_freq.push_back(m.rope_frequencies[pr]);
  j["mha2mla"] = {{"kv_lora_rank", w0.rank},
                  {"rope_pairs", m.options.rope_pairs},
                  {"rope_components", m.options.rope_components},
                  {"rope_units", w0.units()},
                  {"rope_unit_pairs", w0.rope_pair},
                  {"rope_unit_frequencies", unit_freq},
                  {"svd_basis", m.calibrated ? "calibration" : "input_layernorm"}};
  std::ofstream out(fs::path(dir) / "config.json");
  out << j.dump(2) << "\n";
  if (!out) throw InputError(dir + ": cannot write config.json");
}

}  // namespace mla::ch08
