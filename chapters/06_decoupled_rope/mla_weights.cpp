// The bookkeeping of an MLA layer's weights: every job below walks the one list in
// mla_weights.hpp (for_each_weight) instead of naming the eight tensors again.
#include "06_decoupled_rope/mla_weights.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

#include "mla/rows.hpp"  // shape_str

namespace mla::ch06 {

namespace {

/// The weight's own name, as messages about weights in memory print it:
/// "self_attn.q_a_proj.weight" -> "q_a_proj".
std::string module_name(std::string name) {
  const std::string suffix = ".weight";
  if (name.size() > suffix.size() &&
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
    name.resize(name.size() - suffix.size());
  }
  const std::size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

template <class T>
bool has_shape(const T& t, const WeightShape& shape) {
  return std::equal(t.shape().begin(), t.shape().end(), shape.begin(), shape.end());
}

/// Weights must be finite: one NaN or Inf in a weight would silently turn every output it
/// touches into NaN, so a damaged checkpoint is refused, naming the first bad value. (NaN/Inf in
/// the *inputs* is propagated instead: see tests/README.md.)
template <class T>
void require_finite(const T& t, const std::string& origin, const std::string& name) {
  const std::size_t cols = t.dimension() == 2 ? t.shape(1) : 0;
  for (std::size_t i = 0; i < t.size(); ++i) {
    const float v = t.data()[i];
    if (std::isfinite(v)) continue;
    const char* kind = std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf";
    const std::string cell = cols ? fmt::format(" (row {}, column {})", i / cols, i % cols) : "";
    throw InputError(fmt::format(
        "{}: tensor '{}' holds a non-finite value ({}) at index {}{}; weights must be finite",
        origin, name, kind, i, cell));
  }
}

}  // namespace

std::string layer_prefix(std::size_t layer) {
  return fmt::format("model.layers.{}.", layer);
}

std::string attention_prefix(std::size_t layer) {
  return layer_prefix(layer) + "self_attn.";
}

void check_mla_weights(const MlaWeights& w, const MlaConfig& cfg) {
  // Which query weights exist is the config's choice; name the mismatch before any shape.
  if (cfg.q_lora_rank && !w.compressed_query()) {
    throw InputError(
        fmt::format("q_a_proj: missing, but the config has q_lora_rank = {}", *cfg.q_lora_rank));
  }
  if (!cfg.q_lora_rank && w.compressed_query()) {
    throw InputError("q_a_proj: present, but the config has q_lora_rank = null (expects q_proj)");
  }
  for_each_weight(w, cfg, [](const std::string& name, const auto& t, const WeightShape& shape) {
    if (!has_shape(t, shape)) {
      throw InputError(fmt::format("{}: expected shape {}, found {}", module_name(name),
                                   shape_str(shape), shape_str(t)));
    }
  });
}

MlaWeights load_mla_weights(const Checkpoint& ckpt, const MlaConfig& cfg, std::size_t layer) {
  check_mla_config(cfg);
  const std::string p = attention_prefix(layer);
  const auto name = [&](const char* n) { return p + n + ".weight"; };
  // Two mistakes get a message of their own: a layer that is not there at all, and query
  // weights of the other kind than the config says (a config that does not fit the file).
  if (!ckpt.contains(name("kv_a_proj_with_mqa"))) {
    throw InputError(fmt::format("{}: no MLA attention layer {} (no tensor '{}')", ckpt.origin(),
                                 layer, name("kv_a_proj_with_mqa")));
  }
  if (cfg.q_lora_rank && !ckpt.contains(name("q_a_proj")) && ckpt.contains(name("q_proj"))) {
    throw InputError(fmt::format(
        "{}: no tensor '{}': the config sets q_lora_rank = {} but the checkpoint has q_proj (is "
        "q_lora_rank meant to be null?)",
        ckpt.origin(), name("q_a_proj"), *cfg.q_lora_rank));
  }
  if (!cfg.q_lora_rank && !ckpt.contains(name("q_proj")) && ckpt.contains(name("q_a_proj"))) {
    throw InputError(fmt::format(
        "{}: no tensor '{}': the config has q_lora_rank = null but the checkpoint has q_a_proj",
        ckpt.origin(), name("q_proj")));
  }
  MlaWeights w;
  // Every tensor first (a missing one, a wrong shape or dtype is named by the checkpoint), then
  // every value.
  for_each_weight(w, cfg,
                  with_prefix(layer_prefix(layer),
                              [&](const std::string& n, auto& t, const WeightShape& shape) {
                                ckpt.load_weight(n, shape, t, cfg.quantization);
                              }));
  for_each_weight(std::as_const(w), cfg,
                  with_prefix(layer_prefix(layer),
                              [&](const std::string& n, const auto& t, const WeightShape&) {
                                require_finite(t, ckpt.origin(), n);
                              }));
  return w;
}

MlaWeights random_mla_weights(const MlaConfig& cfg, Rng& rng) {
  check_mla_config(cfg);
  MlaWeights w;
  for_each_weight(w, cfg, [&](const std::string&, auto& t, const WeightShape& shape) {
    if constexpr (std::decay_t<decltype(t)>::rank == 2) {
      t = rng.linear_weight(shape[0], shape[1]);  // Linear (out, in): N(0, 1/in)
    } else {
      t = rng.normal_vec(shape[0], 0.1f);  // an RMSNorm weight: near 1
      t += 1.0f;
    }
  });
  return w;
}

std::vector<TensorData> mla_weight_tensors(const MlaWeights& w, const MlaConfig& cfg,
                                           std::size_t layer, DType dtype) {
  std::vector<TensorData> out;
  for_each_weight(
      w, cfg,
      with_prefix(
          layer_prefix(layer), [&](const std::string& n, const auto& t, const WeightShape&) {
            out.push_back({n, dtype, {t.shape().begin(), t.shape().end()}, {t.begin(), t.end()}});
          }));
  return out;
}

MlaConfig make_mla_config(std::size_t d_model, std::size_t heads, std::optional<std::size_t> q_lora,
                          std::size_t d_c, std::size_t d_nope, std::size_t d_rope, std::size_t d_v,
                          std::optional<YarnScaling> yarn) {
  MlaConfig c;
  c.hidden_size = d_model;
  c.num_attention_heads = heads;
  c.num_hidden_layers = 1;
  c.q_lora_rank = q_lora;
  c.kv_lora_rank = d_c;
  c.qk_nope_head_dim = d_nope;
  c.qk_rope_head_dim = d_rope;
  c.v_head_dim = d_v;
  c.max_position_embeddings = 4096;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-6;
  c.yarn = yarn;
  return c;
}

}  // namespace mla::ch06
