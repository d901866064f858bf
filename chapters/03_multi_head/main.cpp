// ch03_multi_head: heads, and what they cost in cache. MHA, GQA and MQA on one toy layer, then
// the KV cache per token of real models, read from their config.json files.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <xtensor/xview.hpp>

#include "01_attention/attention.hpp"
#include "03_multi_head/cache_calculator.hpp"
#include "03_multi_head/multi_head.hpp"
#include "03_multi_head/toy_heads.hpp"
#include "mla/cli.hpp"
#include "mla/compare.hpp"
#include "mla/program.hpp"
#include "mla/table.hpp"

namespace {

using namespace mla::ch03;
using mla::grouped;

std::string g(double v) {
  return grouped(std::llround(v));
}
std::string pct(double v) {
  return mla::fixed(100.0 * v, 1) + "%";
}

// Part 0: two hand-made heads on chapter 1's sentence look at different things. Prints where
// each token looks most in each head and writes each head's (T, T) weights as
// results/ch03_head<h>_weights.csv (the heatmaps of docs/plots/ch03_heads.gp).
void toy_heads_part() {
  namespace ch01 = mla::ch01;
  const std::vector<std::string> tokens = ch01::tokenize(ch01::kSentence);
  const MhaWeights w = toy_heads();
  const mla::Mat x = ch01::toy_embeddings(tokens);                   // (T, 7)
  const std::vector<mla::Mat> P = attention_weights_per_head(x, w);  // n_h x (T, T)
  const auto& heads = toy_head_names();
  const std::size_t T = tokens.size();
  std::cout << "Two hand-made heads on chapter 1's sentence \"" << ch01::kSentence
            << "\" (its toy features, d_h " << w.head_dim << "):\nwhere each token looks most, per "
            << "head (weight)\n";
  std::vector<std::string> header = {"", "token"};
  for (const auto& name : heads) header.push_back(name + " head");
  mla::Table table(header);
  for (std::size_t i = 0; i < T; ++i) {
    std::vector<std::string> row = {std::to_string(i), tokens[i]};
    for (std::size_t h = 0; h < P.size(); ++h) {
      float top = 0.0f;
      for (std::size_t j = 0; j <= i; ++j) top = std::max(top, P[h](i, j));
      std::string names;  // every token that shares the largest weight
      std::size_t ties = 0;
      for (std::size_t j = 0; j <= i; ++j) {
        if (P[h](i, j) < top - 1e-4f) continue;
        names += (ties++ ? "+" : "") + tokens[j];
      }
      // Equal weights on all it sees: the head found nothing to look for in this token's row.
      const std::string w = mla::fixed(top, 2);
      row.push_back(i > 0 && ties == i + 1 ? "(evenly, " + w + " each)"
                                           : names + " " + w + (ties > 1 ? " each" : ""));
    }
    table.add(row);
  }
  table.print(std::cout);
  // CSV cells cannot hold a bare ",": name that token, as chapter 1's CSV does.
  auto label = [&](std::size_t t) {
    return std::to_string(t) + ":" + (tokens[t] == "," ? std::string("comma") : tokens[t]);
  };
  std::string paths;
  for (std::size_t h = 0; h < P.size(); ++h) {
    std::vector<std::string> labels;
    for (std::size_t j = 0; j < T; ++j) labels.push_back(label(j));
    const std::string path = mla::results_dir() + "/ch03_head" + std::to_string(h) + "_weights.csv";
    mla::write_matrix_csv(path, labels, P[h].data());
    paths += (h ? ", " : "") + path;
  }
  std::cout << "One head blends what it finds into one average; two heads keep \"the noun\" and "
               "\"the list\" apart.\nEach head's weights written to "
            << paths << "\n\n";
}

// Part 1: one layer, three kinds of head sharing, cached decode checked against full recompute.
bool toy_layer(std::size_t d_model, std::size_t heads, std::size_t groups, std::size_t head_dim,
               std::size_t tokens, std::uint64_t seed) {
  std::cout << "One attention layer: d_model " << d_model << ", " << heads << " query heads of "
            << head_dim << ", " << tokens << " tokens (random weights, seed " << seed << ")\n";
  mla::Rng rng(seed);
  const mla::Mat x = rng.normal(tokens, d_model);
  mla::Table table({"kind", "kv heads", "cached floats/token", "cache for all tokens",
                    "cached decode vs full: max abs"});
  bool ok = true;
  const std::vector<std::pair<const char*, std::size_t>> kinds = {
      {"MHA", heads}, {"GQA", groups}, {"MQA", 1}};
  for (const auto& [name, n_kv] : kinds) {
    mla::Rng wrng(seed + 1);  // each kind its own weights, the same for every run
    const MhaWeights w = random_mha(d_model, heads, n_kv, head_dim, wrng);
    const mla::Mat full = mha_forward(x, w);  // (T, d_model), all at once
    MhaDecoder dec(w);
    mla::Mat stepped = xt::empty<float>({tokens, d_model});
    for (std::size_t t = 0; t < tokens; ++t) {  // one token at a time, through the cache
      const mla::Mat row = dec.step(xt::eval(xt::view(x, xt::range(t, t + 1), xt::all())));
      std::copy_n(row.data(), d_model, &stepped(t, 0));
    }
    const mla::Comparison c = mla::compare(stepped, full);
    ok = ok && mla::allclose(stepped, full, 1e-5, 1e-4);
    table.add({name, std::to_string(n_kv), std::to_string(dec.cache_floats() / tokens),
               std::to_string(dec.cache_floats()), mla::num(c.max_abs, 2)});
  }
  table.print(std::cout);
  std::cout << "Same code, one parameter: query head h reads key/value head h / (n_h / n_kv). "
               "Fewer key/value heads, smaller cache.\n\n";
  return ok;
}

const ModelShape* find(const std::vector<ModelShape>& models, const std::string& name) {
  for (const auto& m : models) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

// Part 3: the published numbers, each derived from the config files.
void explain(const std::vector<ModelShape>& models, const std::string& dir) {
  const ModelShape* v3 = find(models, "DeepSeek-V3");
  const ModelShape* v2 = find(models, "DeepSeek-V2");
  const ModelShape* d67 = find(models, "deepseek-llm-67b-base");
  if (!v3 || !v2 || !d67) {
    std::cout << "(The derivations below need DeepSeek-V3, DeepSeek-V2 and deepseek-llm-67b-base "
                 "in "
              << dir << "; skipped.)\n";
    return;
  }
  const auto s = [](std::size_t v) { return std::to_string(v); };

  const CacheCost c3 = cache_cost(*v3, 16);
  const double rope_bytes =
      static_cast<double>(per_head_rope_elements_per_layer(*v3) * v3->layers) * 2;
  std::cout << "DeepSeek-V3 (" << v3->layers << " layers, " << v3->heads << " heads of "
            << v3->head_dim << ", d_c " << v3->kv_lora_rank << ", rope dim " << v3->qk_rope_head_dim
            << "), 2 bytes per number:\n"
            << "  MLA caches (d_c + d_h^R)·l·2 = (" << v3->kv_lora_rank << " + "
            << v3->qk_rope_head_dim << ")·" << v3->layers << "·2 = " << g(c3.bytes_per_token)
            << " B/token\n"
            << "  plain MHA would cache 2·n_h·d_h·l·2 = 2·" << v3->heads << "·" << v3->head_dim
            << "·" << v3->layers << "·2 = " << g(c3.mha_bytes_per_token)
            << " B/token: " << mla::fixed(c3.ratio, 1) << "x more\n"
            << "  a per-head cache whose keys keep the rope dims (n_h·(" << v3->head_dim << "+"
            << v3->qk_rope_head_dim << " + " << v3->v_head_dim << ")·l·2, as DeepSeek's "
            << "non-absorbed reference code caches) = " << g(rope_bytes)
            << " B/token: " << mla::fixed(rope_bytes / c3.bytes_per_token, 1) << "x more\n\n";

  // The DeepSeek-V2 paper (arXiv 2405.04434): "reduces the KV cache by 93.3%" compared with
  // DeepSeek 67B. In deployment V2's cache is quantized to about 6 bits per element (the
  // paper's inference-efficiency paragraph); DeepSeek 67B's is 16-bit.
  constexpr double kV2DeployedBits = 6, kFullBits = 16;
  const double v2_bits =
      static_cast<double>(cache_cost(*v2, 1).elements_per_token) * kV2DeployedBits;
  const double v2_bits16 = static_cast<double>(cache_cost(*v2, 1).elements_per_token) * kFullBits;
  const double d67_bits = static_cast<double>(cache_cost(*d67, 1).elements_per_token) * kFullBits;
  std::cout << "The DeepSeek-V2 paper's \"93.3% smaller KV cache\" compares DeepSeek-V2 with "
               "DeepSeek 67B ("
            << kind_name(d67->kind) << ", " << d67->kv_heads << " KV heads of " << d67->head_dim
            << ", " << d67->layers << " layers):\n"
            << "  V2:  " << cache_elements_per_layer(*v2) << "·" << v2->layers
            << " numbers · 6 bits (its cache is quantized to ~6 bits in deployment) = "
            << g(v2_bits) << " bits/token\n"
            << "  67B: 2·" << d67->kv_heads << "·" << d67->head_dim << "·" << d67->layers
            << " numbers · 16 bits = " << g(d67_bits) << " bits/token\n"
            << "  1 - " << g(v2_bits) << "/" << g(d67_bits) << " = "
            << pct(reduction(v2_bits, d67_bits)) << "; without the quantization (16 bits both): "
            << "1 - " << g(v2_bits16) << "/" << g(d67_bits) << " = "
            << pct(reduction(v2_bits16, d67_bits)) << "\n\n";

  // The seed notes (Welch Labs, "technical notes" of the video) estimate the same figure from
  // configuration_deepseek.py's *defaults*: 32 heads, 30 layers (DeepSeek-V2 itself: 128, 60).
  ModelShape notes = *v2;
  notes.heads = 32;
  notes.layers = 30;
  const CacheCost cn = cache_cost(notes, 16), c2 = cache_cost(*v2, 16);
  const double typo = 492520;  // the notes' denominator
  std::cout << "The seed notes' 92.8% for DeepSeek-V2 uses 32 heads and 30 layers (the defaults "
               "in configuration_deepseek.py), not V2's "
            << v2->heads << " and " << v2->layers << ":\n"
            << "  MHA 2·32·" << notes.head_dim << "·30·2 = " << g(cn.mha_bytes_per_token)
            << " B/token, MLA " << cache_elements_per_layer(notes)
            << "·30·2 = " << g(cn.bytes_per_token) << " B/token\n"
            << "  they divide by " << g(typo) << " where they meant " << g(cn.mha_bytes_per_token)
            << ": (" << g(cn.mha_bytes_per_token) << " - " << g(cn.bytes_per_token) << ")/"
            << g(typo) << " = " << pct((cn.mha_bytes_per_token - cn.bytes_per_token) / typo)
            << ", but /" << g(cn.mha_bytes_per_token) << " = "
            << pct(reduction(cn.bytes_per_token, cn.mha_bytes_per_token)) << "\n"
            << "  with DeepSeek-V2's real " << v2->heads << " heads and " << v2->layers
            << " layers: 1 - " << g(c2.bytes_per_token) << "/" << g(c2.mha_bytes_per_token) << " = "
            << pct(reduction(c2.bytes_per_token, c2.mha_bytes_per_token))
            << " (vs its own MHA; the paper's 93.3% is vs DeepSeek 67B)\n\n";

  // The paper's Table 1, evaluated at DeepSeek-V2's dimensions (GQA with 67B's 8 groups).
  const std::size_t nh = v2->heads, dh = v2->head_dim, l = v2->layers, dc = v2->kv_lora_rank,
                    dr = v2->qk_rope_head_dim, ng = d67->kv_heads;
  mla::Table t1({"attention", "KV cache per token (# element)", "at DeepSeek-V2's sizes"});
  t1.add({"MHA", "2*n_h*d_h*l", g(table1_elements(AttentionKind::MHA, nh, ng, dh, l, dc, dr))});
  t1.add({"GQA", "2*n_g*d_h*l (n_g = " + s(ng) + ")",
          g(table1_elements(AttentionKind::GQA, nh, ng, dh, l, dc, dr))});
  t1.add({"MQA", "2*d_h*l", g(table1_elements(AttentionKind::MQA, nh, ng, dh, l, dc, dr))});
  t1.add({"MLA", "(d_c + d_h^R)*l ~ 4.5*d_h*l",
          g(table1_elements(AttentionKind::MLA, nh, ng, dh, l, dc, dr))});
  std::cout << "DeepSeek-V2 paper, Table 1 (n_h " << nh << ", d_h " << dh << ", l " << l << ", d_c "
            << dc << " = " << mla::num(double(dc) / dh) << "·d_h, d_h^R " << dr << " = "
            << mla::num(double(dr) / dh) << "·d_h):\n";
  t1.print(std::cout);
  std::cout << "MLA's " << dc + dr << " numbers per layer are what GQA would cache with "
            << mla::num(double(dc + dr) / (2.0 * dh)) << " groups.\n\n";
}

// Part 3: FP8 as DeepSeek-V3 ships it. The weights of one attention layer in BF16 and in the
// release's block-scaled FP8 (one byte per number, an fp32 scale per 128x128 block), and the
// cache DeepSeek-V3.2 deploys (656 bytes a token and layer) beside the bf16 one.
void fp8_part(const std::vector<ModelShape>& models) {
  const ModelShape* v3 = find(models, "DeepSeek-V3");
  if (!v3 || v3->hidden_size == 0) return;
  const MlaLayerSizes sz = mla_layer_sizes(*v3);
  std::cout << "DeepSeek-V3's attention layer, weights stored in BF16 vs FP8 e4m3 + one fp32 scale "
               "per 128x128 block\n(the release's format; edge blocks partial, norms stay BF16):\n";
  mla::Table t({"weight", "shape", "scale shape", "BF16 bytes", "FP8+scales bytes", "ratio"});
  for (const WeightMatrix& w : mla_layer_matrices(sz)) {
    const std::size_t bf16 = 2 * w.rows * w.cols, fp8 = fp8_weight_bytes(w.rows, w.cols);
    t.add({w.name, "[" + std::to_string(w.rows) + ", " + std::to_string(w.cols) + "]",
           "[" + std::to_string((w.rows + 127) / 128) + ", " +
               std::to_string((w.cols + 127) / 128) + "]",
           g(double(bf16)), g(double(fp8)), mla::fixed(double(fp8) / double(bf16), 4)});
  }
  const LayerWeightBytes b = mla_layer_weight_bytes(sz);
  t.add({"norms (BF16)", std::to_string(norm_numbers(sz)) + " numbers", "-",
         g(2.0 * double(norm_numbers(sz))), g(2.0 * double(norm_numbers(sz))), "1"});
  t.add({"layer", g(double(b.numbers)) + " numbers", "-", g(double(b.bf16)), g(double(b.fp8)),
         mla::fixed(double(b.fp8) / double(b.bf16), 4)});
  t.print(std::cout);
  std::cout << "All " << v3->layers
            << " layers' attention: " << mla::human_bytes(double(b.bf16 * v3->layers))
            << " in BF16, " << mla::human_bytes(double(b.fp8 * v3->layers)) << " in FP8.\n\n";

  // DeepSeek-V3.2's deployed latent cache (chapter 7's FP8 cache, the same row layout).
  const V32CacheBytes c = v32_cache_bytes(v3->kv_lora_rank, v3->qk_rope_head_dim, 128, v3->layers);
  const double bf16_row = 2.0 * double(v3->kv_lora_rank + v3->qk_rope_head_dim);
  std::cout << "The latent cache per token, " << v3->layers << " layers: bf16 (" << v3->kv_lora_rank
            << " + " << v3->qk_rope_head_dim << ")·2 = " << g(bf16_row) << " B/layer, "
            << g(bf16_row * double(v3->layers)) << " B/token; DeepSeek-V3.2's FP8 row "
            << v3->kv_lora_rank << " + 4·" << (v3->kv_lora_rank + 127) / 128 << " + 2·"
            << v3->qk_rope_head_dim << " = " << c.latent_per_layer << " B/layer, "
            << g(double(c.latent_per_layer * c.layers)) << " B/token ("
            << mla::fixed(bf16_row / double(c.latent_per_layer), 2) << "x smaller; with "
            << "V3.2's indexer key, " << c.indexer_per_layer
            << " B more a layer: " << g(double(c.per_token())) << " B/token).\n\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Chapter 3: multi-head attention with n_h heads; GQA and MQA as the same code with fewer "
      "key/value heads; and the KV cache per token of real models, from their config.json."};
  std::string configs = mla::data_dir() + "/configs";
  std::size_t d_model = 256, heads = 8, groups = 2, head_dim = 32, tokens = 48;
  double bits = 16;
  std::uint64_t seed = mla::kDefaultSeed;
  app.add_option("--configs", configs, "Folder of Hugging Face config.json files")
      ->capture_default_str();
  app.add_option("--bits", bits, "Bits per cached number (16 = bf16/fp16)")
      ->check(CLI::Range(1.0, 64.0))
      ->capture_default_str();
  app.add_option("--d-model", d_model, "Toy layer: model width")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--heads", heads, "Toy layer: query heads")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--groups", groups, "Toy layer: key/value groups for GQA (divides --heads)")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--head-dim", head_dim, "Toy layer: width of a head")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--tokens", tokens, "Toy layer: tokens decoded")
      ->check(mla::kPositive)
      ->capture_default_str();
  mla::add_seed_option(app, seed);
  if (int rc = mla::parse_options(app, argc, argv); rc >= 0) return rc;

  return mla::run_program("ch03_multi_head", [&] {
    if (heads % groups != 0) {
      throw mla::InputError("--groups (" + std::to_string(groups) + ") must divide --heads (" +
                            std::to_string(heads) + ")");
    }
    if (tokens > 4096) {
      throw mla::InputError("--tokens: at most 4096 (the toy layer decodes them one by one)");
    }
    if (!std::filesystem::is_directory(configs)) {
      throw mla::InputError("--configs: '" + configs + "' is not a folder");
    }
    // The toy layer's weights (W_q, W_o and at most n_h key/value heads), its input, the
    // (T, T) scores of every head and the caches of its decoders, before allocating them.
    const double D = static_cast<double>(d_model), T = static_cast<double>(tokens),
                 HD = static_cast<double>(heads) * static_cast<double>(head_dim);
    mla::check_memory(
        4.0 * (4.0 * HD * D + 3.0 * T * D + T * T * static_cast<double>(heads) + 6.0 * T * HD),
        "the toy layer (--d-model " + std::to_string(d_model) + " --heads " +
            std::to_string(heads) + " --head-dim " + std::to_string(head_dim) + " --tokens " +
            std::to_string(tokens) + ")");
    toy_heads_part();
    const bool ok = toy_layer(d_model, heads, groups, head_dim, tokens, seed);

    // Part 2: the calculator.
    const std::vector<ModelShape> models = load_model_shapes(configs);
    std::cout << "KV cache per token of real models (" << configs << "), at " << mla::num(bits)
              << " bits per number:\n";
    mla::Table table({"model", "kind", "l", "n_h", "n_kv", "d_h", "numbers/layer", "B/token/layer",
                      "B/token", "as MHA", "ratio", "full context"});
    mla::Table csv({"model", "kind", "bytes_per_token", "mha_equivalent_bytes", "ratio",
                    "elements_per_layer", "layers", "bits"});
    for (const ModelShape& m : models) {
      const CacheCost c = cache_cost(m, bits);
      const std::string head_dim_text =
          m.kind == AttentionKind::MLA
              ? std::to_string(m.head_dim) + "+" + std::to_string(m.qk_rope_head_dim)
              : std::to_string(m.head_dim);
      const std::string per_layer =
          m.kind == AttentionKind::MLA
              ? std::to_string(m.kv_lora_rank) + "+" + std::to_string(m.qk_rope_head_dim)
              : "2*" + std::to_string(m.kv_heads) + "*" + std::to_string(m.head_dim);
      const std::string full =
          m.max_position_embeddings
              ? mla::human_bytes(c.bytes_per_token * double(m.max_position_embeddings)) + " @" +
                    std::to_string(m.max_position_embeddings / 1024) + "K"
              : "-";
      table.add({m.name, kind_name(m.kind), std::to_string(m.layers), std::to_string(m.heads),
                 m.kind == AttentionKind::MLA ? "-" : std::to_string(m.kv_heads), head_dim_text,
                 per_layer + "=" + std::to_string(c.elements_per_layer),
                 g(c.bytes_per_token / double(m.layers)), g(c.bytes_per_token),
                 g(c.mha_bytes_per_token), mla::fixed(c.ratio, 1) + "x", full});
      csv.add({m.name, kind_name(m.kind), mla::num(c.bytes_per_token, 12),
               mla::num(c.mha_bytes_per_token, 12), mla::num(c.ratio, 6),
               std::to_string(c.elements_per_layer), std::to_string(m.layers), mla::num(bits)});
    }
    table.print(std::cout);
    std::cout
        << "l layers, n_h query heads, n_kv key/value heads of d_h. MHA/GQA/MQA cache 2·n_kv·d_h "
           "numbers per layer (a key and a value\nper key/value head); MLA caches d_c + d_h^R "
           "(one latent and one rope key shared by all heads). \"as MHA\": the same\nmodel with "
           "a key and a value for every head; ratio = as MHA / B/token. \"full context\": one "
           "sequence at max_position_embeddings.\n\n";

    explain(models, configs);
    fp8_part(models);

    const std::string path = mla::results_dir() + "/ch03_cache_per_token.csv";
    csv.write_csv(path);
    std::cout << "Cache sizes written to " << path << "\n";
    return ok ? mla::kExitOk : mla::kExitFailed;
  });
}
