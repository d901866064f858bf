// ch06_decoupled_rope: why RoPE breaks absorption, DeepSeek's decoupled rope key, the full MLA
// layer of DeepSeek-V2/V3 on both paths, the 576 numbers per token, and YaRN.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "03_multi_head/cache_calculator.hpp"
#include "06_decoupled_rope/absorption_demo.hpp"
#include "06_decoupled_rope/mla_layer.hpp"
#include "mla/compare.hpp"
#include "mla/program.hpp"
#include "mla/table.hpp"

namespace {

using namespace mla::ch06;
using mla::fixed;
using mla::grouped;
using mla::num;

void heading(const std::string& title) {
  std::cout << "\n" << title << "\n" << std::string(title.size(), '=') << "\n";
}

std::string csv_note(const std::string& path) {
  return "(CSV: " + path + ")\n";
}

// ---------------------------------------------------------------------------------------------
// Part 1: RoPE on the latent key breaks absorption
// ---------------------------------------------------------------------------------------------

void part_breaking(mla::Rng& rng) {
  heading("1. RoPE on the latent key breaks absorption");
  const std::size_t d_c = 64, d_head = 32, d_rope = 16, T = 16;
  const RopeAbsorptionDemo demo =
      demonstrate_rope_breaks_absorption(d_c, d_head, d_rope, T, 10000.0, rng);
  std::cout << "One head, d_c = " << d_c << ", d_head = " << d_head << ", rope part " << d_rope
            << ", " << T << " positions, random latents and weights.\n"
            << "Absorbed score: c_Q,t^T (W_UQ^T W_UK) c_KV,s, one matrix precomputed before "
               "decoding.\n"
            << "RoPE on k^C: true score (R_t W_UQ c_Q,t)^T (R_s W_UK c_KV,s) = c_Q,t^T W_UQ^T "
               "R_(s-t) W_UK c_KV,s.\n"
            << "Decoupled: [q^C; R_t q^R]^T [k^C; R_s k^R], k^R cached once, rotated.\n\n";
  mla::Table t({"distance t-s", "max |error|, RoPE on k^C", "max |error|, decoupled"});
  for (std::size_t d : {0, 1, 2, 3, 4, 8, 12, 15}) {
    t.add({std::to_string(d), num(demo.rope_on_latent_key.max_error_by_distance[d], 3),
           num(demo.decoupled.max_error_by_distance[d], 3)});
  }
  t.print(std::cout);
  std::cout << "\nScores reach |" << num(demo.rope_on_latent_key.max_score, 3) << "|.\n"
            << "With RoPE on k^C the absorbed score is right only at distance 0 (R_0 = I): "
               "R_(s-t) sits\nbetween W_UQ and W_UK and changes with every pair of positions, so "
               "no single matrix absorbs it.\nThe decoupled design keeps k^C unrotated "
               "(absorbable) and carries position in a separate k^R,\ncached as it is "
               "(rounding-level error only).\n";

  mla::Table csv({"distance", "max_abs_error_rope_on_latent_key", "max_abs_error_decoupled"});
  for (std::size_t d = 0; d < T; ++d) {
    csv.add({std::to_string(d), num(demo.rope_on_latent_key.max_error_by_distance[d], 6),
             num(demo.decoupled.max_error_by_distance[d], 6)});
  }
  const std::string path = mla::results_dir() + "/ch06_rope_absorption.csv";
  csv.write_csv(path);
  std::cout << csv_note(path);
}

// ---------------------------------------------------------------------------------------------
// Part 2: the full layer, naive and absorbed
// ---------------------------------------------------------------------------------------------

void print_dataflow(const mla::MlaConfig& c, float scale) {
  const std::size_t H = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim,
                    dc = c.kv_lora_rank;
  const std::string h = "h (" + std::to_string(c.hidden_size) + ")";
  std::cout << "The data of one decoded token, for this config (H = " << H << " heads):\n  " << h;
  if (c.q_lora_rank) {
    std::cout << " -> q_a_proj -> c_Q (" << *c.q_lora_rank << ") -> q_a_layernorm -> q_b_proj";
  } else {
    std::cout << " -> q_proj";
  }
  std::cout << " -> (" << H << " x " << dn + dr << ") = per head [q_nope (" << dn << ") | q_rope ("
            << dr << ")], RoPE(q_rope)\n  " << h << " -> kv_a_proj_with_mqa -> [c_kv (" << dc
            << ") | k_rope (" << dr << ")] -> kv_a_layernorm(c_kv), RoPE(k_rope) -> cache (T, "
            << dc + dr << ")\n"
            << "  q_nope (" << H << " x " << dn << ") -> through W_UK -> q_lat (" << H << " x "
            << dc << ")\n"
            << "  scores (" << H << " x T) = (q_lat c_kv^T + q_rope k_rope^T) x " << num(scale, 4)
            << " -> softmax -> P c_kv (" << H << " x " << dc << ") -> through W_UV -> (" << H
            << " x " << c.v_head_dim << ") -> o_proj -> (" << c.hidden_size << ")\n\n";
}

// Refuse a layer whose weights, inputs and naive cache (the largest) would not fit, before
// allocating anything.
void check_layer_fits(const mla::MlaConfig& cfg, const std::string& cfg_name, std::size_t batch,
                      std::size_t prefill, std::size_t decode) {
  const double H = static_cast<double>(cfg.num_attention_heads);
  const double weights =
      static_cast<double>(cfg.hidden_size) *
          (H * cfg.qk_head_dim() + cfg.kv_lora_rank + cfg.qk_rope_head_dim + H * cfg.v_head_dim) +
      H * (cfg.qk_nope_head_dim + cfg.v_head_dim) * cfg.kv_lora_rank;
  const double cache =
      static_cast<double>(batch) * (prefill + decode) * H * (cfg.qk_head_dim() + cfg.v_head_dim);
  // The prefill call's queries, absorbed queries and per-head outputs: (B·S, H, d_qk + d_c + d_v).
  const double queries = static_cast<double>(batch) * prefill * H *
                         (cfg.qk_head_dim() + cfg.kv_lora_rank + cfg.v_head_dim);
  mla::check_memory(4.0 * (weights + cache + queries) * 1.5,
                    "the layer of " + cfg_name + " with --batch " + std::to_string(batch) +
                        " --prefill " + std::to_string(prefill) + " --decode " +
                        std::to_string(decode));
}

void part_layer(const mla::MlaConfig& cfg, const std::string& cfg_name, std::size_t batch,
                std::size_t prefill, std::size_t decode, mla::Rng& rng) {
  heading("2. The decoupled layer: naive and absorbed paths");
  const auto w = std::make_shared<const MlaWeights>(random_mla_weights(cfg, rng));
  const float std_in = 1.0f;
  mla::Tensor3 x_pre = xt::zeros<float>({batch, prefill, cfg.hidden_size});
  mla::Tensor3 x_dec = xt::zeros<float>({batch, decode, cfg.hidden_size});
  for (float& v : x_pre) v = rng.normal(std_in);
  for (float& v : x_dec) v = rng.normal(std_in);

  std::cout << cfg_name << ", random weights" << (yarn_active(cfg) ? ", YaRN on" : "")
            << ".\nBatch " << batch << ", prefill " << prefill
            << " tokens (one call, causal), then decode " << decode << " tokens one by one.\n";
  print_dataflow(cfg, mla_softmax_scale(cfg));

  // Speed is chapter 5's and chapter 7's subject; here the point is that both paths compute the
  // same layer while caching very different amounts.
  mla::Table t({"path", "cached per token", "cache after run", "prefill max |diff| vs naive",
                "decode max |diff| vs naive"});
  std::optional<std::pair<mla::Tensor3, mla::Tensor3>> reference;
  for (const MlaPath& path : builtin_paths()) {
    std::unique_ptr<MlaLayer> layer = path.make(cfg, w, batch);
    const auto [pre, dec] = run_prefill_decode(*layer, x_pre, x_dec);
    if (!reference) reference.emplace(pre, dec);
    t.add({path.name, grouped(static_cast<long long>(layer->cache_floats_per_token())),
           grouped(static_cast<long long>(layer->cache_floats())),
           num(mla::compare(pre, reference->first).max_abs, 3),
           num(mla::compare(dec, reference->second).max_abs, 3)});
  }
  t.print(std::cout);
  std::cout << "\nThe absorbed path caches c_kv and the one shared rope key: " << cfg.kv_lora_rank
            << " + " << cfg.qk_rope_head_dim << " = " << cfg.kv_lora_rank + cfg.qk_rope_head_dim
            << " numbers per token, for all " << cfg.num_attention_heads << " heads together.\n";
}

// ---------------------------------------------------------------------------------------------
// Part 3: the cache of real models
// ---------------------------------------------------------------------------------------------

std::map<std::string, mla::MlaConfig> real_configs() {
  // Every config in data/configs/ that has MLA fields (the others, Llama etc., fail to parse as
  // MlaConfig and are skipped).
  std::map<std::string, mla::MlaConfig> out;
  const std::filesystem::path dir = std::filesystem::path(mla::data_dir()) / "configs";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string file = e.path().filename().string();
    const std::string tail = ".config.json";
    if (file.size() <= tail.size() || file.substr(file.size() - tail.size()) != tail) continue;
    try {
      out.emplace(file.substr(0, file.size() - tail.size()),
                  mla::MlaConfig::load(e.path().string()));
    } catch (const mla::InputError&) {
      // not an MLA model
    }
  }
  return out;
}

void part_cache(const std::map<std::string, mla::MlaConfig>& configs) {
  heading("3. What one token costs in cache, real models (bf16, all layers)");
  if (configs.empty()) {
    std::cout << "No MLA config found in " << mla::data_dir() << "/configs; skipped.\n";
    return;
  }
  mla::Table t({"model", "layers", "heads", "MLA d_c+d_R", "naive H(d_qk+d_v)", "MHA 2*H*d_h",
                "MLA bytes", "MHA bytes", "MHA/MLA", "layer weights BF16", "FP8+scales"});
  mla::Table csv({"model", "layers", "heads", "mla_floats_per_layer", "naive_floats_per_layer",
                  "mha_floats_per_layer", "mla_bytes_per_token_bf16", "mha_bytes_per_token_bf16"});
  for (const auto& [name, c] : configs) {
    const long long L = static_cast<long long>(c.num_hidden_layers);
    const long long H = static_cast<long long>(c.num_attention_heads);
    const long long mla = static_cast<long long>(c.kv_lora_rank + c.qk_rope_head_dim);
    // The naive path caches each head's full key [k_nope | k_rope] and value.
    const long long naive = H * static_cast<long long>(c.qk_head_dim() + c.v_head_dim);
    // Plain MHA with the model's head width d_h = qk_nope_head_dim (128): 2·H·d_h.
    const long long mha = 2 * H * static_cast<long long>(c.qk_nope_head_dim);
    const long long mla_b = mla * L * 2, mha_b = mha * L * 2;
    // One attention layer's weights, BF16 vs the FP8 release's format (128x128 blocks, one
    // fp32 scale each; norms BF16): chapter 3's calculator.
    const mla::ch03::LayerWeightBytes wb = mla::ch03::mla_layer_weight_bytes(
        {c.hidden_size, c.num_attention_heads, c.q_lora_rank.value_or(0), c.kv_lora_rank,
         c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim});
    t.add({name, std::to_string(L), std::to_string(H), grouped(mla), grouped(naive), grouped(mha),
           grouped(mla_b), grouped(mha_b),
           fixed(static_cast<double>(mha_b) / static_cast<double>(mla_b), 1) + "x",
           grouped(static_cast<long long>(wb.bf16)), grouped(static_cast<long long>(wb.fp8))});
    csv.add({name, std::to_string(L), std::to_string(H), std::to_string(mla), std::to_string(naive),
             std::to_string(mha), std::to_string(mla_b), std::to_string(mha_b)});
  }
  t.print(std::cout);
  const std::string path = mla::results_dir() + "/ch06_cache_per_token.csv";
  csv.write_csv(path);
  std::cout << "Numbers per token and layer; bytes per token for all layers in bf16. MHA: the "
               "same model with\nplain multi-head attention, head width d_h = qk_nope_head_dim. "
               "576 = 512 latent numbers\n+ 64 rope-key numbers, shared by every head. Layer "
               "weights: bytes of one attention layer's\nweights (chapter 3's calculator), all "
               "BF16, or FP8 e4m3 with an fp32 scale per 128x128 block as\nDeepSeek-V3's release "
               "stores them (norms BF16).\n"
            << csv_note(path);
}

// ---------------------------------------------------------------------------------------------
// Part 4: YaRN
// ---------------------------------------------------------------------------------------------

void part_yarn(const std::map<std::string, mla::MlaConfig>& configs) {
  heading("4. YaRN: longer context by slowing down the slow rotations");
  // DeepSeek-V3's rope_scaling if its config is there, else the same numbers (its config.json).
  std::string name = "DeepSeek-V3";
  mla::MlaConfig cfg = make_mla_config(7168, 128, 1536, 512, 128, 64, 128,
                                       mla::YarnScaling{40, 4096, 32, 1, 1.0, 1.0});
  cfg.max_position_embeddings = 163840;
  if (auto it = configs.find("DeepSeek-V3"); it != configs.end() && yarn_active(it->second)) {
    cfg = it->second;
  } else {
    name += " (built-in values)";
  }
  const mla::YarnScaling& y = *cfg.yarn;
  const std::size_t d = cfg.qk_rope_head_dim;
  const YarnRamp r = yarn_ramp(d, cfg.rope_theta, y);
  const std::vector<float> plain = rope_frequencies(d, cfg.rope_theta);
  const std::vector<float> yarn = yarn_frequencies(d, cfg.rope_theta, y);
  const double two_pi = 6.283185307179586;
  std::cout << name << ": d_rope " << d << ", theta " << num(cfg.rope_theta, 6) << ", factor "
            << num(y.factor, 4) << ", original context " << y.original_max_position_embeddings
            << ", beta_fast " << num(y.beta_fast, 3) << ", beta_slow " << num(y.beta_slow, 3)
            << ".\nPairs i <= low = " << num(r.low, 4)
            << " keep their frequency (many turns within the original context),\npairs i >= high = "
            << num(r.high, 4)
            << " are divided by the factor (less than a turn in it), the ones between blend.\n\n";
  mla::Table t({"pair i", "wavelength (tokens)", "ramp", "freq", "YaRN freq", "YaRN wavelength"});
  mla::Table csv({"pair", "freq", "ramp", "yarn_freq"});
  for (std::size_t i = 0; i < plain.size(); ++i) {
    csv.add({std::to_string(i), num(plain[i], 8), num(r.ramp[i], 6), num(yarn[i], 8)});
    if (i % 4 != 0 && i + 1 != plain.size() && i != static_cast<std::size_t>(r.low) + 1) continue;
    t.add({std::to_string(i), num(two_pi / plain[i], 4), fixed(r.ramp[i], 3), num(plain[i], 4),
           num(yarn[i], 4), num(two_pi / yarn[i], 4)});
  }
  t.print(std::cout);
  const double m = yarn_mscale(y.factor, y.mscale);
  std::cout << "\nAttention temperature: m = 0.1 * mscale * ln(factor) + 1 = 0.1 * "
            << num(y.mscale, 4) << " * ln(" << num(y.factor, 4) << ") + 1 = " << num(m, 6)
            << ";\nsoftmax scale = d_qk^-0.5 * m^2 = " << cfg.qk_head_dim() << "^-0.5 * "
            << num(m * m, 6) << " = " << num(mla_softmax_scale(cfg), 6) << ".\n";
  const std::string path = mla::results_dir() + "/ch06_yarn_frequencies.csv";
  csv.write_csv(path);
  std::cout << csv_note(path);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Chapter 6: decoupled RoPE. Shows numerically that RoPE on the latent key breaks "
      "absorption, runs DeepSeek's full MLA layer (decoupled rope key, query compression, YaRN) "
      "on its naive and absorbed paths, and prints what the cache holds for real models."};
  std::string config;
  std::size_t batch = 2, prefill = 16, decode = 8;
  std::uint64_t seed = mla::kDefaultSeed;
  app.add_option("--config", config,
                 "Hugging Face config.json for part 2's layer (random weights); default: a small "
                 "V3-shaped layer with YaRN");
  app.add_option("--batch", batch, "Sequences in the batch")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{4096}));
  app.add_option("--prefill", prefill, "Tokens per sequence in the prefill call")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 16));
  app.add_option("--decode", decode, "Tokens per sequence then decoded one by one")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{0}, std::size_t{1} << 16));
  mla::add_seed_option(app, seed);
  if (int rc = mla::parse_options(app, argc, argv); rc >= 0) return rc;

  return mla::run_program("ch06_decoupled_rope", [&] {
    // The layer's config first, so a bad --config or sizes are refused before any output.
    mla::MlaConfig cfg;
    std::string cfg_name;
    if (config.empty()) {
      // DeepSeek's proportions at a small size: d_c = 4·d_h, d_R = d_h/2 (d_h = 64 here), a
      // query latent, and YaRN stretching a 64-token original context 40 times.
      cfg =
          make_mla_config(512, 8, 192, 256, 64, 32, 64, mla::YarnScaling{40, 64, 32, 1, 1.0, 1.0});
      cfg.max_position_embeddings = 2560;
      cfg_name = "A small V3-shaped layer (d_model 512, 8 heads, q_lora 192, d_c 256, rope 32)";
    } else {
      cfg = mla::MlaConfig::load(config);
      cfg_name = std::filesystem::path(config).filename().string();
    }
    check_mla_config(cfg);
    // RoPE/YaRN are defined up to the config's context; positions beyond it are not the model.
    if (cfg.max_position_embeddings > 0 && prefill + decode > cfg.max_position_embeddings) {
      throw mla::InputError("--prefill " + std::to_string(prefill) + " + --decode " +
                            std::to_string(decode) + " tokens exceed the context of " + cfg_name +
                            " (max_position_embeddings " +
                            std::to_string(cfg.max_position_embeddings) + ")");
    }

    check_layer_fits(cfg, cfg_name, batch, prefill, decode);

    mla::Rng rng(seed);
    std::cout << "Chapter 6 — Decoupled RoPE\n";
    part_breaking(rng);

    part_layer(cfg, cfg_name, batch, prefill, decode, rng);

    const auto configs = real_configs();
    part_cache(configs);
    part_yarn(configs);
    return 0;
  });
}
