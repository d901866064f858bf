/// @file decoder.hpp
/// @brief The model's forward pass for ONE sequence, layer by layer, with chapter 6's MLA layer
///        (any of its paths, chapter 7's kernels included) or a Llama-style MHA/GQA layer: the
///        reference the batched, paged engine (engine.hpp) is checked against.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "02_kv_cache/kv_cache.hpp"
#include "06_decoupled_rope/mla_layer.hpp"
#include "06_decoupled_rope/rope.hpp"
#include "08_serving/model.hpp"
#include "08_serving/sampling.hpp"
#include "mla/tensor.hpp"

namespace mla::ch08 {

/// @addtogroup ch08
/// @{

// ---------------------------------------------------------------------------------------------
// The parts of a layer that do not depend on the attention (shared with the engine)
// ---------------------------------------------------------------------------------------------

/// The embedding rows of n tokens: (n, D). std::invalid_argument for a token outside [0, V).
Mat embed(const Model& m, const int* tokens, std::size_t n);
/// x += mlp(post_attention_layernorm(x)), mlp(y) = down(silu(gate(y)) ⊙ up(y)).
/// x: (N, D): every row at once, so the MLP's weights are read once for the whole batch.
void add_mlp(const LayerWeights& l, float eps, Mat& x);
/// norm then lm_head: h (N, D) -> logits (N, V).
Mat output_logits(const Model& m, const Mat& h);

/// Llama's RoPE on whole heads: pairs (x[i], x[i + d/2]) ("rotate half"), frequencies
/// θ^(-2i/d) — not DeepSeek's interleaved pairs (chapter 6's Rope), whose angles it reuses.
class HalfRope {
 public:
  /// Frequencies for heads of `head_dim` floats (even) and base `theta`.
  HalfRope(std::size_t head_dim, double theta);
  /// The same layout with any frequencies (radians per position), one per pair: dim() =
  /// 2·freqs.size(). For rope vectors whose pairs come from several heads' frequency schedules
  /// (the MLA converted from MHA, mla_from_mha.hpp).
  explicit HalfRope(std::vector<float> freqs);
  /// Rotate `count` heads of dim() floats, `stride` apart, to position `pos`.
  void rotate(float* x, std::size_t count, std::size_t stride, std::size_t pos) const;
  std::size_t dim() const { return rope_.dim(); }  ///< d_h: floats per head

 private:
  ch06::Rope rope_;
};

/// A GQA layer's queries, keys and values of N rows, row r at position pos[r], RoPE applied:
/// h (N, D) -> q (N, H·d_h), k (N, H_kv·d_h), v (N, H_kv·d_h).
void gqa_project(const GqaWeights& w, const HalfRope& rope, const Mat& h, const std::size_t* pos,
                 Mat& q, Mat& k, Mat& v);

// ---------------------------------------------------------------------------------------------
// One sequence
// ---------------------------------------------------------------------------------------------

/// One layer's attention for one sequence, owning that sequence's cache.
class SequenceAttention {
 public:
  virtual ~SequenceAttention() = default;
  /// x (S, D), already normed, at positions position().. -> (S, D); appends S tokens.
  virtual Mat forward(const Mat& x) = 0;
};

/// A Llama-style MHA/GQA layer's attention over one sequence with a plain K/V cache: what a
/// Decoder of an MHA/GQA model runs in each layer.
std::unique_ptr<SequenceAttention> gqa_attention(const GqaWeights& w, const GqaConfig& c);

/// The MLA paths a Decoder can run: chapter 6's "naive" and "absorbed", chapter 7's "fast"
/// (fp32 tiles, v5) and "fast_bf16" (bf16 tiles, v6).
std::vector<ch06::MlaPath> mla_paths(int threads = 1);

/// The whole model over one sequence, one layer after another, as DeepSeek's `Transformer`.
class Decoder {
 public:
  /// `path` names an MLA path (mla_paths()) for an MLA model; a GQA model has one path, "gqa".
  Decoder(std::shared_ptr<const Model> m, const std::string& path = "absorbed", int threads = 1);
  /// A decoder whose layers attend with `attn` (one per layer, each owning its cache), the rest
  /// of every layer (norms, MLP, embedding, output) from `m`: for attention in another form than
  /// the model's own, e.g. the MLA converted from an MHA model (mla_from_mha.hpp).
  Decoder(std::shared_ptr<const Model> m, std::vector<std::unique_ptr<SequenceAttention>> attn);
  /// The next tokens (prefill: many; decode: one) -> logits (n, V); appends them to the caches.
  /// std::invalid_argument past max_position_embeddings.
  Mat forward(const std::vector<int>& tokens);
  /// Tokens seen so far.
  std::size_t position() const { return position_; }
  const Model& model() const { return *m_; }  ///< the model it runs

 private:
  std::shared_ptr<const Model> m_;
  std::vector<std::unique_ptr<SequenceAttention>> attn_;  // one per layer
  std::size_t position_ = 0;
};

/// Chapter 2's NextToken on a whole model, greedy: recompute() runs a fresh Decoder (nothing
/// cached) over every token so far; cached() runs new tokens through one Decoder that keeps its
/// caches. With ch02::loop_recompute and ch02::loop_cached: chapter 2's two loops on real text.
class DecoderNextToken final : public ch02::NextToken {
 public:
  /// `path` as Decoder's (an MLA path, or "gqa").
  DecoderNextToken(std::shared_ptr<const Model> m, const std::string& path);
  /// All of `tokens` through a new Decoder -> argmax of the last row's logits.
  int recompute(const std::vector<int>& tokens) override;
  /// `new_tokens` through the kept Decoder -> argmax of the last row's logits.
  int cached(const std::vector<int>& new_tokens) override;

 private:
  std::shared_ptr<const Model> m_;
  std::string path_;
  Decoder decoder_;  // the one whose caches cached() keeps
};

/// The attention weights of every head of layer `layer` of an MHA/GQA model over `tokens`, run
/// as one prefill: heads matrices (S, S), row s = query s's softmax over the keys 0..s (zeros
/// right of the diagonal). InputError for an MLA model (its weights live inside chapter 6's
/// layers), a layer out of range or more tokens than the context.
std::vector<Mat> attention_weights(const Model& m, const std::vector<int>& tokens,
                                   std::size_t layer);

/// Greedy, or sampled per `sampling`, generation: feed `prompt` (prefill), then up to `max_new`
/// tokens one at a time, stopping after the model's eos_token_id if it has one. `on_token` sees
/// every new token as it is made. Returns the new tokens.
std::vector<int> generate(Decoder& d, const std::vector<int>& prompt, std::size_t max_new,
                          const SamplingParams& sampling,
                          const std::function<void(int)>& on_token = {});

/// @}

}  // namespace mla::ch08
