#include "02_kv_cache/kv_cache.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "mla/exercise.hpp"

namespace mla::ch02 {

ToyDecoder random_decoder(std::size_t n_layers, std::size_t d_model, std::size_t vocab, Rng& rng) {
  if (n_layers == 0 || d_model == 0 || vocab == 0) {
    throw std::invalid_argument("random_decoder: layers, d_model and vocab must be positive");
  }
  ToyDecoder m;
  m.embed = rng.normal(vocab, d_model);
  // Untied: with the embedding as output matrix, a random model mostly repeats its last token.
  m.unembed = rng.linear_weight(vocab, d_model);
  for (std::size_t l = 0; l < n_layers; ++l) {
    DecoderLayer layer;
    layer.norm = xt::ones<float>({d_model});
    layer.W_q = rng.linear_weight(d_model, d_model);
    layer.W_k = rng.linear_weight(d_model, d_model);
    layer.W_v = rng.linear_weight(d_model, d_model);
    layer.W_o = rng.linear_weight(d_model, d_model);
    m.layers.push_back(std::move(layer));
  }
  m.final_norm = xt::ones<float>({d_model});
  return m;
}

namespace {

// tokens -> (T, d_model): the embedding rows.
Mat embed_tokens(const ToyDecoder& model, const std::vector<int>& tokens) {
  const std::size_t d = model.d_model();
  Mat h = xt::empty<float>({tokens.size(), d});
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t] < 0 || static_cast<std::size_t>(tokens[t]) >= model.vocab()) {
      throw std::invalid_argument("token " + std::to_string(tokens[t]) + " is outside the vocab");
    }
    std::copy_n(&model.embed(static_cast<std::size_t>(tokens[t]), 0), d, &h(t, 0));
  }
  return h;
}

}  // namespace

Mat forward_full(const ToyDecoder& model, const std::vector<int>& tokens) {
  Mat h = embed_tokens(model, tokens);  // (T, d)
  for (const DecoderLayer& layer : model.layers) {
    const Mat a = rmsnorm(h, layer.norm, model.eps);
    // Every key and value of the whole prefix, recomputed: (T, d) each.
    const Mat q = linear(a, layer.W_q), k = linear(a, layer.W_k), v = linear(a, layer.W_v);
    h += linear(ch01::attention(q, k, v, ch01::Masking::causal), layer.W_o);
  }
  return rmsnorm(h, model.final_norm, model.eps);
}

int next_token(const ToyDecoder& model, const float* h) {
  const std::size_t d = model.d_model();
  int best = 0;
  float best_logit = 0.0f;
  for (std::size_t t = 0; t < model.vocab(); ++t) {
    const float* e = &model.unembed(t, 0);
    float logit = 0.0f;
    for (std::size_t i = 0; i < d; ++i) logit += e[i] * h[i];
    if (t == 0 || logit > best_logit) {
      best = static_cast<int>(t);
      best_logit = logit;
    }
  }
  return best;
}

KvCache::KvCache(std::size_t n_layers, std::size_t d_model)
    : d_model_(d_model), k_(n_layers), v_(n_layers) {}

void KvCache::append(std::size_t l, const Mat& k, const Mat& v) {
  if (k.shape(1) != d_model_ || v.shape(1) != d_model_ || k.shape(0) != v.shape(0)) {
    throw std::invalid_argument("KvCache::append: expected (n, " + std::to_string(d_model_) +
                                ") keys and values");
  }
  // Appending rows to a row-major buffer is amortized O(n·d): std::vector grows geometrically.
  k_[l].insert(k_[l].end(), k.data(), k.data() + k.size());
  v_[l].insert(v_[l].end(), v.data(), v.data() + v.size());
}

void KvCache::commit(std::size_t n) {
  tokens_ += n;
  for (std::size_t l = 0; l < k_.size(); ++l) {
    if (k_[l].size() != tokens_ * d_model_) {
      throw std::logic_error("KvCache::commit: layer " + std::to_string(l) +
                             " was not given the new tokens");
    }
  }
}

void KvCache::truncate(std::size_t n) {
  if (n >= tokens_) return;
  tokens_ = n;
  for (std::size_t l = 0; l < k_.size(); ++l) {
    k_[l].resize(n * d_model_);  // keeps the capacity: the next append does not reallocate
    v_[l].resize(n * d_model_);
  }
}

CachedDecoder::CachedDecoder(const ToyDecoder& model)
    : model_(model), cache_(model.layers.size(), model.d_model()) {}

Mat CachedDecoder::step(const std::vector<int>& new_tokens) {
#if MLA_EXERCISES
  (void)new_tokens;
  MLA_EXERCISE("2.1", "CachedDecoder::step()", "see chapters/02_kv_cache/README.md, exercise 2.1");
#else
  const std::size_t n = new_tokens.size(), d = model_.d_model(), past = cache_.tokens();
  Mat h = embed_tokens(model_, new_tokens);  // (n, d): only the new tokens
  Mat att = xt::empty<float>({n, d});
  scratch_.resize(past + n);
  for (std::size_t l = 0; l < model_.layers.size(); ++l) {
    const DecoderLayer& layer = model_.layers[l];
    const Mat a = rmsnorm(h, layer.norm, model_.eps);
    // NEW: keys and values of the new tokens only, (n, d); the old ones come from the cache.
    const Mat q = linear(a, layer.W_q), k = linear(a, layer.W_k), v = linear(a, layer.W_v);
    cache_.append(l, k, v);
    for (std::size_t i = 0; i < n; ++i) {
      // New token i sits at position past+i and sees the cached tokens 0..past+i: no mask needed,
      // the cache simply holds nothing later.
      const std::size_t seen = past + i + 1;
      ch01::attend_one(&q(i, 0), cache_.keys(l).rows_range(0, seen),
                       cache_.values(l).rows_range(0, seen), scratch_.data(), &att(i, 0));
    }
    h += linear(att, layer.W_o);
  }
  cache_.commit(n);
  return rmsnorm(h, model_.final_norm, model_.eps);
#endif
}

std::vector<int> loop_recompute(NextToken& m, const std::vector<int>& prompt, std::size_t steps) {
  if (prompt.empty()) throw std::invalid_argument("generate: the prompt is empty");
  std::vector<int> seq = prompt, out;
  for (std::size_t s = 0; s < steps; ++s) {
    out.push_back(m.recompute(seq));  // the whole sequence, again
    seq.push_back(out.back());
  }
  return out;
}

std::vector<int> loop_cached(NextToken& m, const std::vector<int>& prompt, std::size_t steps) {
  if (prompt.empty()) throw std::invalid_argument("generate: the prompt is empty");
#if MLA_EXERCISES
  (void)m, (void)steps;
  MLA_EXERCISE("2.2", "loop_cached()", "see chapters/02_kv_cache/README.md, exercise 2.2");
#else
  std::vector<int> out;
  if (steps == 0) return out;
  out.push_back(m.cached(prompt));                                   // the prompt once ("prefill")
  while (out.size() < steps) out.push_back(m.cached({out.back()}));  // then one token per step
  return out;
#endif
}

namespace {

/// The toy decoder behind NextToken; keeps the final hidden state each token was chosen from.
class ToyNextToken final : public NextToken {
 public:
  ToyNextToken(const ToyDecoder& model, std::size_t steps)
      : model_(model), dec_(model), hidden_(xt::empty<float>({steps, model.d_model()})) {}
  int recompute(const std::vector<int>& tokens) override {
    return choose(forward_full(model_, tokens));
  }
  int cached(const std::vector<int>& new_tokens) override { return choose(dec_.step(new_tokens)); }
  Generation result(std::vector<int> tokens) { return {std::move(tokens), std::move(hidden_)}; }

 private:
  int choose(const Mat& H) {  // H (n, d_model): the last row picks the token
    const float* last = &H(H.shape(0) - 1, 0);
    std::copy_n(last, model_.d_model(), &hidden_(calls_++, 0));
    return next_token(model_, last);
  }
  const ToyDecoder& model_;
  CachedDecoder dec_;
  Mat hidden_;  // (steps, d_model)
  std::size_t calls_ = 0;
};

}  // namespace

Generation generate_recompute(const ToyDecoder& model, const std::vector<int>& prompt,
                              std::size_t steps) {
  ToyNextToken m(model, steps);
  return m.result(loop_recompute(m, prompt, steps));
}

Generation generate_cached(const ToyDecoder& model, const std::vector<int>& prompt,
                           std::size_t steps) {
  ToyNextToken m(model, steps);
  return m.result(loop_cached(m, prompt, steps));
}

std::size_t kv_cache_bytes(std::size_t n_layers, std::size_t tokens, std::size_t d_model,
                           std::size_t bytes_per_number) {
  return 2 * n_layers * tokens * d_model * bytes_per_number;
}

}  // namespace mla::ch02
