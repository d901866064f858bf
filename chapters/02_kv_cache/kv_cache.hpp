/// @file kv_cache.hpp
/// @brief Chapter 2: autoregressive decoding with a toy decoder stack — recomputing every key and
///        value at each step, versus keeping them in a KV cache.
#pragma once

#include <cstddef>
#include <vector>

#include "01_attention/attention.hpp"
#include "mla/random.hpp"
#include "mla/rows.hpp"
#include "mla/tensor.hpp"

namespace mla::ch02 {

/// @defgroup ch02 Chapter 2 — KV cache
/// @brief Same outputs, far less work: keep the keys and values of past tokens.
/// @{

/// One decoder layer: pre-norm single-head attention with a residual connection,
/// `h ← h + attention(q, k, v) · W_oᵀ` with q, k, v projections of `rmsnorm(h)`.
/// (A real layer adds an MLP after it; the MLP works on each token alone, so it changes nothing
/// about what has to be cached.)
struct DecoderLayer {
  Vec norm;  ///< (d_model) RMSNorm weight
  Mat W_q;   ///< (d_model, d_model)
  Mat W_k;   ///< (d_model, d_model)
  Mat W_v;   ///< (d_model, d_model)
  Mat W_o;   ///< (d_model, d_model)
};

/// A toy language model: token embeddings, a stack of DecoderLayer, a final norm, and logits
/// through an output matrix.
struct ToyDecoder {
  Mat embed;                         ///< (vocab, d_model): row t is token t's embedding
  Mat unembed;                       ///< (vocab, d_model): logits = h · unembedᵀ
  std::vector<DecoderLayer> layers;  ///< the stack, in order; each layer caches its own K and V
  Vec final_norm;                    ///< (d_model)
  float eps = 1e-6f;                 ///< RMSNorm epsilon, shared by every norm

  /// Width of the hidden state (columns of embed).
  std::size_t d_model() const { return embed.shape(1); }
  /// Vocabulary size (rows of embed).
  std::size_t vocab() const { return embed.shape(0); }
};

/// Random weights: embeddings N(0, 1), projections and unembedding N(0, 1/d_model), norm weights 1.
/// Throws std::invalid_argument for a zero size.
ToyDecoder random_decoder(std::size_t n_layers, std::size_t d_model, std::size_t vocab, Rng& rng);

/// The whole sequence through every layer, recomputing every key and value: no cache.
/// @param tokens T token ids (each < vocab)
/// @return (T, d_model) the final hidden state of every position (after the final norm)
Mat forward_full(const ToyDecoder& model, const std::vector<int>& tokens);

/// Greedy choice of the next token: argmax over the vocabulary of `h · unembedᵀ`.
/// @param h (d_model) a final hidden state
int next_token(const ToyDecoder& model, const float* h);

/// The keys and values of every past token, for every layer: the KV cache.
/// Layer l holds K_l, V_l of shape (tokens(), d_model), stored row after row.
class KvCache {
 public:
  /// An empty cache for `n_layers` layers of keys and values of width `d_model`.
  KvCache(std::size_t n_layers, std::size_t d_model);
  /// Tokens held in every layer (counted by commit(), not by append()).
  std::size_t tokens() const { return tokens_; }
  /// Layers cached.
  std::size_t n_layers() const { return k_.size(); }
  /// Width of every key and value.
  std::size_t d_model() const { return d_model_; }
  /// Numbers held: 2 · n_layers · tokens · d_model (a key and a value per token per layer).
  std::size_t floats() const { return 2 * k_.size() * tokens_ * d_model_; }
  /// Bytes held at `bytes_per_number` bytes each (4 for float32, 2 for bf16).
  std::size_t bytes(std::size_t bytes_per_number = sizeof(float)) const {
    return floats() * bytes_per_number;
  }
  /// Keys of layer `l`: (rows appended to layer l, d_model), which is (tokens(), d_model) after
  /// commit(); valid until the next append().
  RowView<const float> keys(std::size_t l) const {
    return {k_[l].data(), k_[l].size() / d_model_, d_model_};
  }
  /// Values of layer `l`, as keys(l).
  RowView<const float> values(std::size_t l) const {
    return {v_[l].data(), v_[l].size() / d_model_, d_model_};
  }
  /// Append n rows of keys and values to layer `l`: k, v (n, d_model). Call layer by layer; the
  /// token count advances with commit().
  void append(std::size_t l, const Mat& k, const Mat& v);
  /// Declare that every layer now holds `n` more tokens.
  void commit(std::size_t n);
  /// Forget every token after the first `n` (undo a step, for timing or speculative decoding).
  void truncate(std::size_t n);

 private:
  std::size_t d_model_;
  std::size_t tokens_ = 0;
  std::vector<std::vector<float>> k_, v_;  // per layer, (tokens, d_model) row-major
};

/// Decoding with a KV cache: each step runs only the new tokens through the stack, reading the
/// keys and values of the earlier ones from the cache.
class CachedDecoder {
 public:
  explicit CachedDecoder(const ToyDecoder& model);  ///< keeps a reference: `model` must outlive it
  /// Run n new tokens (positions cache().tokens() ..) and cache their keys and values.
  /// @return (n, d_model) their final hidden states, the rows forward_full gives for them
  Mat step(const std::vector<int>& new_tokens);
  /// The keys and values of every token run so far (cache().tokens() is the next position).
  const KvCache& cache() const { return cache_; }
  /// Forget every token after the first `n`.
  void truncate(std::size_t n) { cache_.truncate(n); }

 private:
  const ToyDecoder& model_;
  KvCache cache_;
  std::vector<float> scratch_;  // (tokens) scores of one query
};

/// What the two generation loops ask of a model: its next token, with or without a cache. The
/// toy decoder above is one (generate_recompute, generate_cached); chapter 8 plugs its trained
/// models in (ch08::DecoderNextToken), so the same two loops generate real text.
class NextToken {
 public:
  virtual ~NextToken() = default;
  /// Without a cache: run all of `tokens` (the whole sequence so far) from scratch, keeping
  /// nothing from earlier calls; return the greedy next token.
  virtual int recompute(const std::vector<int>& tokens) = 0;
  /// With a cache: run only `new_tokens`, after every token earlier calls ran (their keys and
  /// values are kept); return the greedy next token.
  virtual int cached(const std::vector<int>& new_tokens) = 0;
};

/// The loop without a cache: `steps` calls of m.recompute() on the growing sequence, each one
/// running every token again. Returns the generated tokens (not the prompt).
/// std::invalid_argument for an empty prompt.
std::vector<int> loop_recompute(NextToken& m, const std::vector<int>& prompt, std::size_t steps);

/// The loop with a cache: m.cached(prompt) once (the prefill), then each new token alone.
/// Returns the generated tokens. std::invalid_argument for an empty prompt.
std::vector<int> loop_cached(NextToken& m, const std::vector<int>& prompt, std::size_t steps);

/// The result of generating `steps` tokens greedily after a prompt.
struct Generation {
  std::vector<int> tokens;  ///< the generated tokens (not the prompt)
  Mat hidden;  ///< (steps, d_model): the final hidden state each generated token was chosen from
};

/// Generate without a cache: every step runs the whole sequence so far through forward_full
/// (loop_recompute on the toy decoder).
Generation generate_recompute(const ToyDecoder& model, const std::vector<int>& prompt,
                              std::size_t steps);

/// Generate with a cache: the prompt once, then one token per step through CachedDecoder
/// (loop_cached on the toy decoder).
Generation generate_cached(const ToyDecoder& model, const std::vector<int>& prompt,
                           std::size_t steps);

/// Bytes of a KV cache: 2 (key and value) · n_layers · tokens · d_model · bytes_per_number.
std::size_t kv_cache_bytes(std::size_t n_layers, std::size_t tokens, std::size_t d_model,
                           std::size_t bytes_per_number);

/// @}

}  // namespace mla::ch02
