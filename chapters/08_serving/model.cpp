// The model's config and the jobs on its weights; every job walks the one list in model.hpp.
#include "08_serving/model.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "mla/errors.hpp"
#include "mla/json.hpp"
#include "mla/rows.hpp"  // shape_str
#include "mla/safetensors_writer.hpp"

namespace mla::ch08 {

namespace {

constexpr std::size_t kMaxSize = std::size_t{1} << 31;

std::size_t size_field(const nlohmann::json& j, const char* key, const std::string& origin) {
  const auto v = json_field<unsigned long>(j, key, origin);
  if (v == 0 || v > kMaxSize) {
    throw InputError(fmt::format("{}: field '{}' = {} must be in [1, 2^31]", origin, key, v));
  }
  return v;
}

/// DeepSeek's rule for which layers are MoE (modeling_deepseek.py, DeepseekV2DecoderLayer):
/// layer i has routed experts if n_routed_experts is set and i >= first_k_dense_replace and
/// i % moe_layer_freq == 0. (inference/model.py says the same with n_dense_layers.)
void refuse_experts(const nlohmann::json& j, std::size_t layers, const std::string& origin) {
  if (const auto n = json_optional<unsigned long>(j, "num_local_experts", origin); n && *n > 0) {
    throw InputError(fmt::format(
        "{}: field 'num_local_experts' = {}: every layer's MLP is a mixture of experts; this "
        "chapter runs dense layers only",
        origin, *n));
  }
  const auto routed = json_optional<unsigned long>(j, "n_routed_experts", origin);
  if (!routed || *routed == 0) return;
  const std::size_t first =
      json_optional<unsigned long>(j, "first_k_dense_replace", origin).value_or(0);
  const std::size_t freq = json_optional<unsigned long>(j, "moe_layer_freq", origin).value_or(1);
  if (freq == 0) throw InputError(fmt::format("{}: field 'moe_layer_freq' = 0", origin));
  for (std::size_t i = first; i < layers; ++i) {
    if (i % freq != 0) continue;
    throw InputError(fmt::format(
        "{}: field 'n_routed_experts' = {} (with first_k_dense_replace = {}, moe_layer_freq = {}) "
        "puts routed experts in layer {} of the {} to load; this chapter runs dense layers only "
        "(n_routed_experts null, or first_k_dense_replace >= num_hidden_layers)",
        origin, *routed, first, freq, i, layers));
  }
}

template <class T>
bool has_shape(const T& t, const WeightShape& shape) {
  return std::equal(t.shape().begin(), t.shape().end(), shape.begin(), shape.end());
}

}  // namespace

std::string ModelConfig::variant() const {
  if (attention == AttentionKind::MLA) return "mla";
  return gqa.kv_heads == gqa.heads ? "mha" : "gqa";
}

std::size_t ModelConfig::cache_floats_per_token() const {
  return attention == AttentionKind::MLA ? mla.kv_lora_rank + mla.qk_rope_head_dim
                                         : 2 * gqa.kv_heads * gqa.head_dim;
}

void check_model_config(const ModelConfig& c, const std::string& origin) {
  const auto positive = [&](const char* name, std::size_t v) {
    if (v == 0 || v > kMaxSize) {
      throw InputError(fmt::format("{}: field '{}' = {} must be in [1, 2^31]", origin, name, v));
    }
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("intermediate_size", c.intermediate_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  positive("max_position_embeddings", c.max_position_embeddings);
  if (!(std::isfinite(c.rms_norm_eps) && c.rms_norm_eps > 0)) {
    throw InputError(fmt::format("{}: field 'rms_norm_eps' must be finite and > 0", origin));
  }
  if (c.eos_token_id && *c.eos_token_id >= c.vocab_size) {
    throw InputError(fmt::format("{}: field 'eos_token_id' = {} is not below vocab_size = {}",
                                 origin, *c.eos_token_id, c.vocab_size));
  }
  if (c.attention == AttentionKind::MLA) {
    check_mla_config(c.mla, origin);
    if (c.mla.hidden_size != c.hidden_size || c.mla.num_hidden_layers != c.num_hidden_layers) {
      throw InputError(fmt::format("{}: the MLA fields disagree with hidden_size/layers", origin));
    }
    return;
  }
  const GqaConfig& g = c.gqa;
  positive("num_attention_heads", g.heads);
  positive("num_key_value_heads", g.kv_heads);
  positive("head_dim", g.head_dim);
  if (g.heads % g.kv_heads != 0) {
    throw InputError(
        fmt::format("{}: field 'num_key_value_heads' = {} does not divide num_attention_heads = {}",
                    origin, g.kv_heads, g.heads));
  }
  if (g.head_dim % 2 != 0) {
    throw InputError(fmt::format("{}: field 'head_dim' = {} must be even (RoPE rotates pairs)",
                                 origin, g.head_dim));
  }
  if (!(std::isfinite(g.rope_theta) && g.rope_theta > 1)) {
    throw InputError(fmt::format("{}: field 'rope_theta' must be finite and > 1", origin));
  }
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& origin) {
  if (!j.is_object()) throw InputError(origin + ": a config.json must be a JSON object");
  ModelConfig c;
  c.vocab_size = size_field(j, "vocab_size", origin);
  c.hidden_size = size_field(j, "hidden_size", origin);
  c.intermediate_size = size_field(j, "intermediate_size", origin);
  c.num_hidden_layers = size_field(j, "num_hidden_layers", origin);
  c.max_position_embeddings = size_field(j, "max_position_embeddings", origin);
  c.rms_norm_eps = json_optional<double>(j, "rms_norm_eps", origin).value_or(1e-6);
  if (const auto eos = json_optional<unsigned long>(j, "eos_token_id", origin))
    c.eos_token_id = *eos;
  if (const auto act = json_optional<std::string>(j, "hidden_act", origin); act && *act != "silu") {
    throw InputError(fmt::format("{}: field 'hidden_act' = \"{}\": the MLP here is SwiGLU (silu)",
                                 origin, *act));
  }
  if (json_optional<bool>(j, "tie_word_embeddings", origin).value_or(false)) {
    throw InputError(fmt::format(
        "{}: field 'tie_word_embeddings' = true: this chapter loads lm_head.weight on its own",
        origin));
  }
  refuse_experts(j, c.num_hidden_layers, origin);
  if (j.contains("kv_lora_rank")) {
    c.attention = AttentionKind::MLA;
    c.mla = MlaConfig::from_json(j, origin);
  } else {
    c.attention = AttentionKind::GQA;
    c.gqa.heads = size_field(j, "num_attention_heads", origin);
    c.gqa.kv_heads =
        json_optional<unsigned long>(j, "num_key_value_heads", origin).value_or(c.gqa.heads);
    c.gqa.head_dim = json_optional<unsigned long>(j, "head_dim", origin)
                         .value_or(c.gqa.heads ? c.hidden_size / c.gqa.heads : 0);
    c.gqa.rope_theta = json_optional<double>(j, "rope_theta", origin).value_or(10000.0);
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      throw InputError(
          fmt::format("{}: field 'rope_scaling': the MHA/GQA layers here use plain RoPE", origin));
    }
  }
  check_model_config(c, origin);
  return c;
}

ModelConfig ModelConfig::load(const std::string& path) {
  return from_json(load_json_file(path), path);
}

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json j;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = false;
  j["eos_token_id"] = eos_token_id ? nlohmann::json(*eos_token_id) : nlohmann::json(nullptr);
  if (attention == AttentionKind::MLA) {
    // DeepSeek-V2/V3 names, and no experts: a dense model.
    j["model_type"] = "deepseek_v2";
    j["architectures"] = {"DeepseekV2ForCausalLM"};
    j["n_routed_experts"] = nullptr;
    j["num_attention_heads"] = mla.num_attention_heads;
    j["kv_lora_rank"] = mla.kv_lora_rank;
    j["q_lora_rank"] = mla.q_lora_rank ? nlohmann::json(*mla.q_lora_rank) : nlohmann::json(nullptr);
    j["qk_nope_head_dim"] = mla.qk_nope_head_dim;
    j["qk_rope_head_dim"] = mla.qk_rope_head_dim;
    j["v_head_dim"] = mla.v_head_dim;
    j["rope_theta"] = mla.rope_theta;
    j["rope_scaling"] = nullptr;
    if (mla.yarn) {
      j["rope_scaling"] = {
          {"type", "yarn"},
          {"factor", mla.yarn->factor},
          {"original_max_position_embeddings", mla.yarn->original_max_position_embeddings},
          {"beta_fast", mla.yarn->beta_fast},
          {"beta_slow", mla.yarn->beta_slow},
          {"mscale", mla.yarn->mscale},
          {"mscale_all_dim", mla.yarn->mscale_all_dim}};
    }
  } else {
    j["model_type"] = "llama";
    j["architectures"] = {"LlamaForCausalLM"};
    j["num_attention_heads"] = gqa.heads;
    j["num_key_value_heads"] = gqa.kv_heads;
    j["head_dim"] = gqa.head_dim;
    j["rope_theta"] = gqa.rope_theta;
  }
  return j;
}

ModelWeights empty_weights(const ModelConfig& cfg) {
  ModelWeights w;
  w.layers.resize(cfg.num_hidden_layers);
  if (cfg.attention == AttentionKind::MLA) {
    for (auto& l : w.layers) l.mla = std::make_shared<ch06::MlaWeights>();
  }
  return w;
}

void check_model_weights(const ModelWeights& w, const ModelConfig& cfg) {
  if (w.layers.size() != cfg.num_hidden_layers) {
    throw InputError(fmt::format("model: {} layers of weights, the config has {}", w.layers.size(),
                                 cfg.num_hidden_layers));
  }
  for (const auto& l : w.layers) {
    if ((cfg.attention == AttentionKind::MLA) != bool(l.mla)) {
      throw InputError("model: the layers' attention weights are not of the config's kind");
    }
  }
  for_each_weight(w, cfg, [](const std::string& name, const auto& t, const WeightShape& shape) {
    if (!has_shape(t, shape)) {
      throw InputError(
          fmt::format("{}: expected shape {}, found {}", name, shape_str(shape), shape_str(t)));
    }
  });
}

Model random_model(const ModelConfig& cfg, std::uint64_t seed) {
  check_model_config(cfg);
  Model m{cfg, empty_weights(cfg)};
  Rng rng(seed);
  for_each_weight(m.weights, cfg, [&](const std::string& name, auto& t, const WeightShape& s) {
    if constexpr (std::decay_t<decltype(t)>::rank == 2) {
      // Embedding rows N(0, 1): an RMSNorm follows, so their scale does not matter.
      t = name == "model.embed_tokens.weight" ? rng.normal(s[0], s[1])
                                              : rng.linear_weight(s[0], s[1]);
    } else {
      t = rng.normal_vec(s[0], 0.1f);  // an RMSNorm weight: near 1
      t += 1.0f;
    }
  });
  return m;
}

Model load_model(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  if (!fs::is_directory(dir)) throw InputError(dir + ": not a model folder");
  if (!fs::exists(cfg_path)) throw InputError(dir + ": no config.json");
  Model m{ModelConfig::load(cfg_path), {}};
  m.weights = empty_weights(m.config);
  const Checkpoint ckpt = Checkpoint::open(dir);
  // Every tensor through the one list: a missing one or a wrong shape is named by the checkpoint.
  for_each_weight(m.weights, m.config, [&](const std::string& n, auto& t, const WeightShape& s) {
    ckpt.load_into(n, s, t);
  });
  // Then every value: a weight that is not a number is a broken checkpoint.
  for_each_weight(std::as_const(m.weights), m.config,
                  [&](const std::string& n, const auto& t, const WeightShape&) {
                    const auto bad =
                        std::find_if(t.begin(), t.end(), [](float v) { return !std::isfinite(v); });
                    if (bad != t.end()) {
                      throw InputError(fmt::format(
                          "{}: tensor '{}' holds a non-finite value at index {}; weights must be "
                          "finite",
                          ckpt.origin(), n, bad - t.begin()));
                    }
                  });
  return m;
}

void save_model(const Model& m, const std::string& dir, DType dtype) {
  namespace fs = std::filesystem;
  check_model_weights(m.weights, m.config);
  fs::create_directories(dir);
  std::vector<TensorData> tensors;
  for_each_weight(
      m.weights, m.config, [&](const std::string& n, const auto& t, const WeightShape&) {
        tensors.push_back({n, dtype, {t.shape().begin(), t.shape().end()}, {t.begin(), t.end()}});
      });
  write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
  std::ofstream out(fs::path(dir) / "config.json");
  out << m.config.to_json().dump(2) << "\n";
  if (!out) throw InputError(dir + ": cannot write config.json");
}

void check_byte_vocabulary(const ModelConfig& cfg, const std::string& origin) {
  if (cfg.vocab_size != kByteVocab) {
    throw InputError(fmt::format(
        "{}: field 'vocab_size' = {}: the byte-level tokenizer has {} symbols (one per byte)",
        origin, cfg.vocab_size, kByteVocab));
  }
}

std::vector<int> encode_bytes(const std::string& text) {
  std::vector<int> t;
  for (unsigned char ch : text) t.push_back(ch);
  return t;
}

std::string decode_byte(int token) {
  return std::string(1, static_cast<char>(static_cast<unsigned char>(token)));
}

ModelConfig make_mla_model_config(std::size_t layers, std::size_t intermediate, MlaConfig mla) {
  ModelConfig c;
  c.attention = AttentionKind::MLA;
  c.vocab_size = kByteVocab;
  c.hidden_size = mla.hidden_size;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = layers;
  c.max_position_embeddings = mla.max_position_embeddings;
  c.rms_norm_eps = mla.rms_norm_eps;
  mla.num_hidden_layers = layers;
  c.mla = mla;
  return c;
}

ModelConfig make_gqa_model_config(std::size_t d_model, std::size_t layers, std::size_t intermediate,
                                  GqaConfig gqa) {
  ModelConfig c;
  c.attention = AttentionKind::GQA;
  c.vocab_size = kByteVocab;
  c.hidden_size = d_model;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = layers;
  c.max_position_embeddings = 4096;
  c.gqa = gqa;
  return c;
}

}  // namespace mla::ch08
