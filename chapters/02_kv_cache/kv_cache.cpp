#include "02_kv_cache/kv_cache.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

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

Generation generate_recompute(const ToyDecoder& model, const std::vector<int>& prompt,
                              std::size_t steps) {
  if (prompt.empty()) throw std::invalid_argument("generate: the prompt is empty");
  Generation g;
  g.hidden = xt::empty<float>({steps, model.d_model()});
  std::vector<int> seq = prompt;
  for (std::size_t s = 0; s < steps; ++s) {
    const Mat H = forward_full(model, seq);  // the whole sequence, again
    const float* last = &H(seq.size() - 1, 0);
    std::copy_n(last, model.d_model(), &g.hidden(s, 0));
    g.tokens.push_back(next_token(model, last));
    seq.push_back(g.tokens.back());
  }
  return g;
}

Generation generate_cached(const ToyDecoder& model, const std::vector<int>& prompt,
                           std::size_t steps) {
  if (prompt.empty()) throw std::invalid_argument("generate: the prompt is empty");
#if MLA_EXERCISES
  (void)model, (void)steps;
  MLA_EXERCISE("2.2", "generate_cached()", "see chapters/02_kv_cache/README.md, exercise 2.2");
#else
  Generation g;
  g.hidden = xt::empty<float>({steps, model.d_model()});
  if (steps == 0) return g;
  CachedDecoder dec(model);
  Mat H = dec.step(prompt);  // the prompt once ("prefill")
  for (std::size_t s = 0; s < steps; ++s) {
    const float* last = &H(H.shape(0) - 1, 0);
    std::copy_n(last, model.d_model(), &g.hidden(s, 0));
    g.tokens.push_back(next_token(model, last));
    if (s + 1 < steps) H = dec.step({g.tokens.back()});  // then one token per step
  }
  return g;
#endif
}

std::size_t kv_cache_bytes(std::size_t n_layers, std::size_t tokens, std::size_t d_model,
                           std::size_t bytes_per_number) {
  return 2 * n_layers * tokens * d_model * bytes_per_number;
}

}  // namespace mla::ch02
