/// @file mla_from_mha.hpp
/// @brief A trained MHA model converted to MLA without training (chapter 4's mha_to_mla, layer by
///        layer), run as a whole model, scored in bits per byte, and saved for a fine-tune.
///
/// Each converted layer caches, per token, the latent c = W^DKV·x (r floats) and the one rope
/// key shared by all heads (d_r floats), and attends in the absorbed form (chapter 5, on chapter
/// 6's LatentAttention core, as ch06::absorbed_attention does): head h's
/// no-RoPE query q_h is moved into the latent space once, q̃_h = W^UK_hᵀ·q_h (r), so that
///
///     score_h(s, t) = (q̃_h(s)·c(t) + R_s q^R_h(s) · R_t k^R(t)) / √d_h
///     o_h(s)        = W^UV_h · Σ_t p_h(s, t)·c(t)
///
/// with the MHA model's own softmax scale 1/√d_h. Everything but the attention (embedding, norms,
/// MLP, output) is the MHA model's.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "04_low_rank_latents/mha_to_mla.hpp"
#include "06_decoupled_rope/latent_attention.hpp"
#include "08_serving/decoder.hpp"
#include "08_serving/model.hpp"

namespace mla::ch08 {

/// @addtogroup ch08
/// @{

/// An MHA model with every layer's attention converted to MLA.
struct MlaFromMhaModel {
  std::shared_ptr<const Model> base;     ///< the MHA model: everything but q/k/v comes from it
  ch04::MhaToMlaOptions options;         ///< what the conversion kept
  std::vector<ch04::MlaFromMha> layers;  ///< one converted attention per layer
  std::vector<float> rope_frequencies;   ///< the MHA head's d_h/2 frequencies, pair i first
  bool calibrated = false;  ///< the SVDs weighted by measured input moments (else diag(g))
  /// Floats cached per token per layer: r + d_r.
  std::size_t cache_floats_per_token() const;
};

/// Per layer, the second moment E[x·xᵀ] (D, D) of the attention's inputs x (the normed hidden
/// states) when the model reads `text` in windows of `window` bytes: calibration for
/// convert_mha_model. InputError for a model that is not MHA or a text shorter than 2 bytes.
std::vector<Mat> attention_input_moments(const Model& m, const std::vector<int>& text,
                                         std::size_t window);

/// Convert every layer of an MHA model. The SVDs weight input directions by `moments` (one per
/// layer, from attention_input_moments) when given, else by the layer's input_layernorm (the
/// input basis diag(g): the scale each feature reaches the projections with, all directions
/// alike otherwise). InputError naming the problem for a model that is not MHA (MLA, or fewer KV
/// heads than query heads), for moments of the wrong count, and for the options mha_to_mla
/// refuses.
MlaFromMhaModel convert_mha_model(std::shared_ptr<const Model> m, const ch04::MhaToMlaOptions& o,
                                  const std::vector<Mat>& moments = {});

/// A decoder running the converted model (one sequence): each layer's absorbed attention on a
/// chapter 6 LatentAttention core from `core` (heads H, d_c = r, d_r), which owns that layer's
/// cache. The reference core by default; chapter 7's cores (ch07::latent_attention_factory) run
/// it on the optimized kernels, as the "fast" paths of an MLA model's Decoder do.
Decoder converted_decoder(
    const std::shared_ptr<const MlaFromMhaModel>& m,
    const ch06::LatentAttentionFactory& core = ch06::make_reference_latent_attention);

/// Mean cross-entropy in bits per byte of next-byte prediction over non-overlapping windows of
/// `window` + 1 bytes of `text` (window j predicts bytes j·window + 1 .. (j + 1)·window from the
/// bytes before them in the window), at most `max_windows` of them: train.py's val_bits_per_byte
/// on the same bytes. `make` gives a fresh decoder for each window. InputError if `text` holds
/// no whole window.
double bits_per_byte(const std::function<Decoder()>& make, const std::vector<int>& text,
                     std::size_t window, std::size_t max_windows);

/// Write the converted model for data/models/train.py's fine-tune (`--finetune-from`): the MHA
/// config.json with an "mha2mla" block (rank, rope units and their frequencies), and
/// model.safetensors with the MHA model's tensors except k_proj and v_proj, and per layer
/// self_attn.{q_rope_proj, kv_a_proj, k_rope_proj, k_up_proj, v_up_proj} (F32).
void save_mla_from_mha(const MlaFromMhaModel& m, const std::string& dir);

/// @}

}  // namespace mla::ch08
