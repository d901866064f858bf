#include "03_multi_head/cache_calculator.hpp"

#include <algorithm>
#include <filesystem>

#include "mla/exercise.hpp"
#include "mla/json.hpp"

namespace mla::ch03 {

const char* kind_name(AttentionKind kind) {
  switch (kind) {
    case AttentionKind::MHA:
      return "MHA";
    case AttentionKind::GQA:
      return "GQA";
    case AttentionKind::MQA:
      return "MQA";
    case AttentionKind::MLA:
      return "MLA";
  }
  return "?";
}

namespace {

std::size_t positive_field(const nlohmann::json& j, const std::string& key,
                           const std::string& origin) {
  const auto v = json_field<std::size_t>(j, key, origin);
  if (v == 0) throw InputError(origin + ": field '" + key + "' must be positive (got 0)");
  return v;
}

std::string stem(const std::string& path) {
  std::string name = std::filesystem::path(path).filename().string();
  for (const char* suffix : {".config.json", ".json"}) {
    const std::string s = suffix;
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      return name.substr(0, name.size() - s.size());
    }
  }
  return name;
}

}  // namespace

ModelShape model_shape_from_json(const nlohmann::json& config, const std::string& origin,
                                 const std::string& name) {
  ModelShape m;
  m.name = name;
  m.model_type = json_optional<std::string>(config, "model_type", origin).value_or("");
  m.layers = positive_field(config, "num_hidden_layers", origin);
  m.heads = positive_field(config, "num_attention_heads", origin);
  m.max_position_embeddings =
      json_optional<std::size_t>(config, "max_position_embeddings", origin).value_or(0);
  if (json_optional<std::size_t>(config, "kv_lora_rank", origin)) {
    // MLA: what is cached is the latent and the rope key; the head counts only matter for the
    // MHA it replaces.
    m.kind = AttentionKind::MLA;
    m.kv_lora_rank = positive_field(config, "kv_lora_rank", origin);
    m.qk_rope_head_dim = json_field<std::size_t>(config, "qk_rope_head_dim", origin);
    m.head_dim = positive_field(config, "qk_nope_head_dim", origin);
    m.v_head_dim = positive_field(config, "v_head_dim", origin);
    m.kv_heads = m.heads;
    m.hidden_size = json_optional<std::size_t>(config, "hidden_size", origin).value_or(0);
    m.q_lora_rank = json_optional<std::size_t>(config, "q_lora_rank", origin).value_or(0);
    return m;
  }
  // Absent num_key_value_heads means one key/value head per query head (older MHA configs).
  m.kv_heads = json_optional<std::size_t>(config, "num_key_value_heads", origin).value_or(m.heads);
  if (m.kv_heads == 0) {
    throw InputError(origin + ": field 'num_key_value_heads' must be positive (got 0)");
  }
  if (m.heads % m.kv_heads != 0) {
    throw InputError(origin + ": field 'num_attention_heads' (" + std::to_string(m.heads) +
                     ") is not a multiple of field 'num_key_value_heads' (" +
                     std::to_string(m.kv_heads) + ")");
  }
  if (auto hd = json_optional<std::size_t>(config, "head_dim", origin)) {
    if (*hd == 0) throw InputError(origin + ": field 'head_dim' must be positive (got 0)");
    m.head_dim = *hd;
  } else {
    const std::size_t hidden = positive_field(config, "hidden_size", origin);
    if (hidden % m.heads != 0) {
      throw InputError(origin + ": field 'hidden_size' (" + std::to_string(hidden) +
                       ") is not a multiple of field 'num_attention_heads' (" +
                       std::to_string(m.heads) + ") and there is no field 'head_dim'");
    }
    m.head_dim = hidden / m.heads;
  }
  m.v_head_dim = m.head_dim;
  m.kind = m.kv_heads == m.heads ? AttentionKind::MHA
           : m.kv_heads == 1     ? AttentionKind::MQA
                                 : AttentionKind::GQA;
  return m;
}

ModelShape load_model_shape(const std::string& path) {
  return model_shape_from_json(load_json_file(path), path, stem(path));
}

std::vector<ModelShape> load_model_shapes(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw InputError(dir + ": not a folder of config.json files");
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_regular_file() && entry.path().extension() == ".json") {
      files.push_back(entry.path().string());
    }
  }
  if (ec) throw InputError(dir + ": cannot list the folder (" + ec.message() + ")");
  if (files.empty()) throw InputError(dir + ": holds no .json config file");
  std::sort(files.begin(), files.end());
  std::vector<ModelShape> shapes;
  for (const auto& f : files) shapes.push_back(load_model_shape(f));
  return shapes;
}

std::size_t cache_elements_per_layer(const ModelShape& m) {
#if MLA_EXERCISES
  (void)m;
  MLA_EXERCISE("3.3", "cache_elements_per_layer()",
               "see chapters/03_multi_head/README.md, exercise 3.3");
#else
  if (m.kind == AttentionKind::MLA) return m.kv_lora_rank + m.qk_rope_head_dim;
  return 2 * m.kv_heads * m.head_dim;
#endif
}

std::size_t mha_elements_per_layer(const ModelShape& m) {
  return m.heads * (m.head_dim + m.v_head_dim);
}

std::size_t per_head_rope_elements_per_layer(const ModelShape& m) {
  if (m.kind != AttentionKind::MLA) return mha_elements_per_layer(m);
  return m.heads * (m.head_dim + m.qk_rope_head_dim + m.v_head_dim);
}

CacheCost cache_cost(const ModelShape& m, double bits) {
  CacheCost c;
  c.elements_per_layer = cache_elements_per_layer(m);
  c.elements_per_token = c.elements_per_layer * m.layers;
  c.bytes_per_token = static_cast<double>(c.elements_per_token) * bits / 8.0;
  c.mha_elements_per_token = mha_elements_per_layer(m) * m.layers;
  c.mha_bytes_per_token = static_cast<double>(c.mha_elements_per_token) * bits / 8.0;
  c.ratio = c.mha_bytes_per_token / c.bytes_per_token;
  return c;
}

std::size_t table1_elements(AttentionKind kind, std::size_t n_h, std::size_t n_g, std::size_t d_h,
                            std::size_t l, std::size_t d_c, std::size_t d_h_rope) {
  switch (kind) {
    case AttentionKind::MHA:
      return 2 * n_h * d_h * l;
    case AttentionKind::GQA:
      return 2 * n_g * d_h * l;
    case AttentionKind::MQA:
      return 2 * d_h * l;
    case AttentionKind::MLA:
      return (d_c + d_h_rope) * l;
  }
  return 0;
}

double reduction(double ours, double theirs) {
  return 1.0 - ours / theirs;
}

V32CacheBytes v32_cache_bytes(std::size_t d_c, std::size_t d_r, std::size_t index_head_dim,
                              std::size_t layers) {
  const auto scales = [](std::size_t n) { return 4 * ((n + 127) / 128); };  // float per 128
  return {d_c + scales(d_c) + 2 * d_r, index_head_dim + scales(index_head_dim), layers};
}

MlaLayerSizes mla_layer_sizes(const ModelShape& m) {
  if (m.kind != AttentionKind::MLA || m.hidden_size == 0) {
    throw InputError(m.name + ": the MLA layer's weights need an MLA config with hidden_size");
  }
  return {m.hidden_size,      m.heads,     m.q_lora_rank, m.kv_lora_rank, m.head_dim,
          m.qk_rope_head_dim, m.v_head_dim};
}

std::vector<WeightMatrix> mla_layer_matrices(const MlaLayerSizes& s) {
  const std::size_t qk = s.heads * (s.nope + s.rope);
  std::vector<WeightMatrix> w;
  if (s.q_lora_rank > 0) {
    w.push_back({"q_a_proj", s.q_lora_rank, s.hidden});
    w.push_back({"q_b_proj", qk, s.q_lora_rank});
  } else {
    w.push_back({"q_proj", qk, s.hidden});
  }
  w.push_back({"kv_a_proj_with_mqa", s.kv_lora_rank + s.rope, s.hidden});
  w.push_back({"kv_b_proj", s.heads * (s.nope + s.v), s.kv_lora_rank});
  w.push_back({"o_proj", s.hidden, s.heads * s.v});
  return w;
}

std::size_t norm_numbers(const MlaLayerSizes& s) {
  return s.q_lora_rank + s.kv_lora_rank;
}

std::size_t fp8_scale_blocks(std::size_t rows, std::size_t cols, std::size_t br, std::size_t bc) {
  return ((rows + br - 1) / br) * ((cols + bc - 1) / bc);
}

std::size_t fp8_weight_bytes(std::size_t rows, std::size_t cols, std::size_t br, std::size_t bc) {
  return rows * cols + 4 * fp8_scale_blocks(rows, cols, br, bc);
}

LayerWeightBytes mla_layer_weight_bytes(const MlaLayerSizes& s, std::size_t br, std::size_t bc) {
  LayerWeightBytes b;
  const std::size_t norms = 2 * norm_numbers(s);  // BF16 either way
  b.bf16 = b.fp8 = norms;
  for (const WeightMatrix& m : mla_layer_matrices(s)) {
    b.numbers += m.rows * m.cols;
    b.bf16 += 2 * m.rows * m.cols;
    b.fp8 += fp8_weight_bytes(m.rows, m.cols, br, bc);
  }
  return b;
}

}  // namespace mla::ch03
