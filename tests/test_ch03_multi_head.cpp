// Chapter 3: MHA, GQA and MQA as one code path, cached decoding, and the KV-cache calculator on
// the real config.json files in data/configs.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <xtensor/xview.hpp>

#include "01_attention/attention.hpp"
#include "03_multi_head/cache_calculator.hpp"
#include "03_multi_head/multi_head.hpp"
#include "03_multi_head/toy_heads.hpp"
#include "mla/compare.hpp"
#include "mla/program.hpp"
#include "mla/random.hpp"
#include "support.hpp"

using namespace mla;
using namespace mla::ch03;

namespace {

// The same layer written as plain MHA: every query head gets its own copy of the key/value
// projection rows of the group it reads. GQA and MQA must equal this.
MhaWeights expand_to_mha(const MhaWeights& w) {
  MhaWeights m = w;
  m.n_kv_heads = w.n_heads;
  const std::size_t dh = w.head_dim, d = w.d_model();
  m.W_k = xt::empty<float>({w.n_heads * dh, d});
  m.W_v = xt::empty<float>({w.n_heads * dh, d});
  for (std::size_t h = 0; h < w.n_heads; ++h) {
    const std::size_t g = h / w.group_size();
    xt::view(m.W_k, xt::range(h * dh, (h + 1) * dh), xt::all()) =
        xt::view(w.W_k, xt::range(g * dh, (g + 1) * dh), xt::all());
    xt::view(m.W_v, xt::range(h * dh, (h + 1) * dh), xt::all()) =
        xt::view(w.W_v, xt::range(g * dh, (g + 1) * dh), xt::all());
  }
  return m;
}

// MHA by its definition, independently of mha_forward: the projections, then every head's
// attention in double (tests/support.hpp), then W_O.
Mat reference_mha(const Mat& x, const MhaWeights& w) {
  using namespace mla::test;
  const std::size_t dh = w.head_dim;
  const Mat q = linear(x, w.W_q), k = linear(x, w.W_k), v = linear(x, w.W_v);
  const Mat concat = to_float(ref_attention(to_double(q), to_double(k), to_double(v), w.n_heads,
                                            w.n_kv_heads, dh, dh, 1.0 / std::sqrt(double(dh)))
                                  .out);  // (T, n_h·d_h)
  return linear(concat, w.W_o);
}

std::string config_path(const std::string& model) {
  return std::string(MLA_TEST_DATA_DIR) + "/configs/" + model + ".config.json";
}

// A scratch folder for configs written by a test; removed when the test ends.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("mla_ch03_" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    const auto p = (path / name).string();
    std::ofstream(p) << text;
    return p;
  }
};

}  // namespace

TEST_CASE("MHA with one head equals chapter 1's attention", "[ch03]") {
  Rng rng(31);
  const std::size_t d = 24, T = 10;
  const MhaWeights w = random_mha(d, 1, 1, d, rng);
  const Mat x = rng.normal(T, d);
  const Mat ref =
      linear(ch01::attention(linear(x, w.W_q), linear(x, w.W_k), linear(x, w.W_v)), w.W_o);
  const Mat out = mha_forward(x, w);
  INFO(compare(out, ref).describe());
  CHECK(allclose(out, ref, 1e-5, 1e-4));
}

TEST_CASE("GQA with n_g = n_h is MHA", "[ch03]") {
  Rng rng(32);
  const MhaWeights w = random_mha(32, 4, 4, 8, rng);
  const Mat x = rng.normal(9, 32);
  CHECK(allclose(mha_forward(x, w), reference_mha(x, w), 1e-5, 1e-4));
}

TEST_CASE("GQA equals MHA whose heads share their group's key/value projections", "[ch03]") {
  Rng rng(33);
  const MhaWeights gqa = random_mha(32, 6, 2, 8, rng);
  REQUIRE(gqa.group_size() == 3);
  const Mat x = rng.normal(11, 32);
  const Mat out = mha_forward(x, gqa);
  CHECK(allclose(out, mha_forward(x, expand_to_mha(gqa)), 1e-5, 1e-4));
  CHECK(allclose(out, reference_mha(x, gqa), 1e-5, 1e-4));
}

TEST_CASE("MQA equals GQA with one group (and MHA with one shared key/value head)", "[ch03]") {
  Rng rng(34);
  const MhaWeights mqa = random_mha(16, 4, 1, 8, rng);
  const Mat x = rng.normal(7, 16);
  const Mat out = mha_forward(x, mqa);
  CHECK(allclose(out, reference_mha(x, mqa), 1e-5, 1e-4));
  CHECK(allclose(out, mha_forward(x, expand_to_mha(mqa)), 1e-5, 1e-4));
  CHECK_THROWS_AS(random_mha(16, 4, 3, 8, rng), std::invalid_argument);  // 4 % 3 != 0
}

TEST_CASE("cached decode equals full recompute, for MHA, GQA and MQA", "[ch03]") {
  const std::size_t d = 32, T = 13;
  for (std::size_t n_kv : {4u, 2u, 1u}) {
    Rng rng(35 + n_kv);
    const MhaWeights w = random_mha(d, 4, n_kv, 8, rng);
    const Mat x = rng.normal(T, d);
    const Mat full = mha_forward(x, w);
    MhaDecoder dec(w);
    std::size_t pos = 0;
    for (std::size_t chunk : {5u, 1u, 1u, 6u}) {
      const Mat part = xt::view(x, xt::range(pos, pos + chunk), xt::all());
      const Mat out = dec.step(part);
      for (std::size_t i = 0; i < chunk; ++i) {
        INFO("n_kv " << n_kv << ", token " << pos + i);
        CHECK(allclose(&out(i, 0), &full(pos + i, 0), d, 1e-5, 1e-4));
      }
      pos += chunk;
    }
    CHECK(dec.cached_tokens() == T);
    CHECK(dec.cache_floats() == 2 * n_kv * 8 * T);
  }
}

namespace {

// The token query i attends to most in one head's (T, T) weights (the first, on a tie).
std::size_t strongest(const Mat& P, std::size_t i) {
  std::size_t best = 0;
  for (std::size_t j = 1; j < P.shape(1); ++j) best = P(i, j) > P(i, best) ? j : best;
  return best;
}

}  // namespace

TEST_CASE("attention_weights_per_head gives the weights mha_forward uses", "[ch03]") {
  // out = concat_h(P_h · v_g(h)) · W_oᵀ, rebuilt from the returned weights, for MHA and GQA.
  for (std::size_t n_kv : {4u, 2u}) {
    Rng rng(40 + n_kv);
    const std::size_t d = 16, dh = 8, T = 9;
    const MhaWeights w = random_mha(d, 4, n_kv, dh, rng);
    const Mat x = rng.normal(T, d);
    const std::vector<Mat> P = attention_weights_per_head(x, w);
    REQUIRE(P.size() == 4);
    const Mat v = linear(x, w.W_v);
    Mat heads = xt::empty<float>({T, 4 * dh});
    for (std::size_t h = 0; h < 4; ++h) {
      REQUIRE(P[h].shape(0) == T);
      REQUIRE(P[h].shape(1) == T);
      const Mat o = matmul(P[h], columns(v, (h / w.group_size()) * dh, dh));
      for (std::size_t t = 0; t < T; ++t) std::copy_n(&o(t, 0), dh, &heads(t, h * dh));
    }
    INFO("n_kv " << n_kv);
    CHECK(allclose(linear(heads, w.W_o), mha_forward(x, w), 1e-5, 1e-4));
  }
}

TEST_CASE("the two toy heads look at different things on chapter 1's sentence", "[ch03]") {
  // What chapters/03_multi_head/README.md says of the heatmaps (docs/figures/ch03_heads.svg).
  const std::vector<std::string> tok = ch01::tokenize(ch01::kSentence);
  REQUIRE(tok.size() == 9);  // The American flag is red , white , and
  const std::size_t The = 0, American = 1, flag = 2, is = 3, red = 4, comma1 = 5, white = 6,
                    comma2 = 7, and_ = 8;
  const std::vector<Mat> P = attention_weights_per_head(ch01::toy_embeddings(tok), toy_heads());
  REQUIRE(P.size() == 2);
  REQUIRE(toy_head_names().size() == 2);
  const Mat& noun = P[0];
  const Mat& list = P[1];
  for (const Mat& p : P) {
    for (std::size_t i = 0; i < tok.size(); ++i) {
      double sum = 0;
      for (std::size_t j = 0; j < tok.size(); ++j) {
        sum += p(i, j);
        if (j > i) CHECK(p(i, j) == 0.0f);  // causal
      }
      CHECK(sum == Approx(1.0).margin(1e-5));
    }
  }
  // "flag": the noun head looks at its adjective, the list head at its article; chapter 1's one
  // head blended the two.
  CHECK(strongest(noun, flag) == American);
  CHECK(noun(flag, American) > 0.9f);
  CHECK(strongest(list, flag) == The);
  CHECK(list(flag, The) > 0.9f);
  // "American" looks at "The" in the noun head; in the list head it finds nothing: even weights.
  CHECK(strongest(noun, American) == The);
  CHECK(list(American, The) == Approx(0.5f).margin(1e-6));
  CHECK(list(American, American) == Approx(0.5f).margin(1e-6));
  // Every word after "flag" looks at "flag" in the noun head.
  for (std::size_t i : {is, red, comma1, white, comma2, and_}) {
    INFO("token " << i << " " << tok[i]);
    CHECK(strongest(noun, i) == flag);
    CHECK(noun(i, flag) > 0.7f);
  }
  // "is" finds nothing in the list head: a quarter on each of the four tokens it sees.
  for (std::size_t j = 0; j <= is; ++j) CHECK(list(is, j) == Approx(0.25f).margin(1e-6));
  // In the list head a colour, a comma and "and" look at the colours so far, not at "flag".
  CHECK(strongest(list, red) == red);
  CHECK(strongest(list, comma1) == red);
  for (std::size_t i : {white, comma2, and_}) {
    INFO("token " << i << " " << tok[i]);
    CHECK(list(i, red) == Approx(list(i, white)).margin(1e-6));
    CHECK(list(i, red) + list(i, white) > 0.8f);
    CHECK(list(i, flag) < 0.05f);
  }
  // So "and" looks at "flag" in one head and at the colours in the other.
  CHECK(strongest(noun, and_) == flag);
  CHECK(strongest(list, and_) != flag);
}

TEST_CASE("DeepSeek-V3 caches 70,272 bytes per token, 56.9x less than MHA", "[ch03]") {
  const ModelShape v3 = load_model_shape(config_path("DeepSeek-V3"));
  CHECK(v3.name == "DeepSeek-V3");
  CHECK(v3.kind == AttentionKind::MLA);
  const CacheCost c = cache_cost(v3, 16);
  // The published figures (Welch Labs notes, from the V3 config): computed here from the file.
  CHECK(c.bytes_per_token == 70272);
  CHECK(c.mha_bytes_per_token == 3997696);
  CHECK(c.ratio == Approx(56.9).margin(0.05));
  const double rope = double(per_head_rope_elements_per_layer(v3) * v3.layers) * 2;
  CHECK(rope == 4997120);
  CHECK(rope / c.bytes_per_token == Approx(71.1).margin(0.05));
}

TEST_CASE("the DeepSeek-V2 paper's 93.3% and the seed notes' 92.8%", "[ch03]") {
  const ModelShape v2 = load_model_shape(config_path("DeepSeek-V2"));
  const ModelShape d67 = load_model_shape(config_path("deepseek-llm-67b-base"));
  REQUIRE(v2.kind == AttentionKind::MLA);
  REQUIRE(d67.kind == AttentionKind::GQA);
  CHECK(d67.kv_heads == 8);
  CHECK(d67.layers == 95);
  // V2's cache at ~6 bits per element (deployment) vs 67B's GQA cache at 16 bits.
  const double v2_6bit = cache_cost(v2, 6).bytes_per_token;
  const double v2_16bit = cache_cost(v2, 16).bytes_per_token;
  const double d67_16bit = cache_cost(d67, 16).bytes_per_token;
  CHECK(reduction(v2_6bit, d67_16bit) == Approx(0.933).margin(0.0005));
  CHECK(reduction(v2_16bit, d67_16bit) == Approx(0.822).margin(0.0005));

  // The seed notes: 32 heads and 30 layers (code defaults) instead of V2's 128 and 60.
  ModelShape notes = v2;
  notes.heads = 32;
  notes.layers = 30;
  const CacheCost cn = cache_cost(notes, 16);
  CHECK(cn.mha_bytes_per_token == 491520);
  CHECK(cn.bytes_per_token == 34560);
  const double diff = cn.mha_bytes_per_token - cn.bytes_per_token;
  CHECK(diff / 492520 == Approx(0.928).margin(0.0005));  // their typo'd denominator
  CHECK(reduction(cn.bytes_per_token, cn.mha_bytes_per_token) == Approx(0.930).margin(0.0005));
  const CacheCost c2 = cache_cost(v2, 16);
  CHECK(reduction(c2.bytes_per_token, c2.mha_bytes_per_token) == Approx(0.982).margin(0.0005));
}

TEST_CASE("cache sizes follow the DeepSeek-V2 paper's Table 1", "[ch03]") {
  for (const ModelShape& m : load_model_shapes(std::string(MLA_TEST_DATA_DIR) + "/configs")) {
    INFO(m.name);
    const std::size_t elems = cache_cost(m, 16).elements_per_token;
    const std::size_t table1 = table1_elements(m.kind, m.heads, m.kv_heads, m.head_dim, m.layers,
                                               m.kv_lora_rank, m.qk_rope_head_dim);
    CHECK(elems == table1);
    CHECK(cache_cost(m, 16).mha_elements_per_token ==
          table1_elements(AttentionKind::MHA, m.heads, 0, m.head_dim, m.layers, 0, 0));
    if (m.kind == AttentionKind::MLA) {
      // d_c = 4·d_h and d_h^R = d_h/2 in every DeepSeek MLA model: (d_c + d_h^R)·l = 4.5·d_h·l.
      CHECK(double(elems) == Approx(4.5 * double(m.head_dim * m.layers)));
    }
  }
  CHECK(table1_elements(AttentionKind::MQA, 32, 1, 128, 10, 0, 0) ==
        table1_elements(AttentionKind::GQA, 32, 1, 128, 10, 0, 0));
  const ModelShape llama2 = load_model_shape(config_path("Llama-2-7b-hf"));
  const ModelShape llama3 = load_model_shape(config_path("Meta-Llama-3-8B"));
  CHECK(llama2.kind == AttentionKind::MHA);
  CHECK(cache_cost(llama2).ratio == Approx(1.0));
  CHECK(llama3.kind == AttentionKind::GQA);
  CHECK(cache_cost(llama3).ratio == Approx(double(llama3.heads) / double(llama3.kv_heads)));
  CHECK(cache_cost(llama2, 16).bytes_per_token == 2.0 * 32 * 128 * 32 * 2);  // 512 KiB, known
}

TEST_CASE("a config with a missing or inconsistent field is an error naming field and file",
          "[ch03]") {
  TempDir dir;
  const std::string base = R"("hidden_size": 4096, "num_hidden_layers": 32, )";
  SECTION("heads not divisible by key/value heads") {
    const auto p =
        dir.write("bad_gqa.config.json",
                  "{" + base + R"("num_attention_heads": 32, "num_key_value_heads": 5})");
    CHECK_THROWS_AS(load_model_shape(p), InputError);
    CHECK_THROWS_WITH(load_model_shape(p), Catch::Contains("num_key_value_heads") &&
                                               Catch::Contains("bad_gqa.config.json"));
  }
  SECTION("zero layers") {
    const auto p =
        dir.write("zero.config.json",
                  R"({"hidden_size": 4096, "num_hidden_layers": 0, "num_attention_heads": 32})");
    CHECK_THROWS_WITH(load_model_shape(p),
                      Catch::Contains("num_hidden_layers") && Catch::Contains("zero.config.json"));
  }
  SECTION("missing heads") {
    const auto p = dir.write("nohead.config.json", "{" + base + R"("vocab_size": 10})");
    CHECK_THROWS_WITH(load_model_shape(p), Catch::Contains("num_attention_heads") &&
                                               Catch::Contains("nohead.config.json"));
  }
  SECTION("hidden size not divisible by heads, and no head_dim") {
    const auto p =
        dir.write("odd.config.json",
                  R"({"hidden_size": 1000, "num_hidden_layers": 2, "num_attention_heads": 48})");
    CHECK_THROWS_WITH(load_model_shape(p),
                      Catch::Contains("hidden_size") && Catch::Contains("odd.config.json"));
  }
  SECTION("MLA without its rope dimension") {
    const auto p =
        dir.write("mla.config.json", "{" + base + R"("num_attention_heads": 16, "kv_lora_rank": 512,
            "qk_nope_head_dim": 128, "v_head_dim": 128})");
    CHECK_THROWS_WITH(load_model_shape(p),
                      Catch::Contains("qk_rope_head_dim") && Catch::Contains("mla.config.json"));
  }
  SECTION("a wrong type") {
    const auto p =
        dir.write("type.config.json", "{" + base + R"("num_attention_heads": "thirty-two"})");
    CHECK_THROWS_WITH(load_model_shape(p), Catch::Contains("num_attention_heads") &&
                                               Catch::Contains("type.config.json"));
  }
  SECTION("a folder holding one bad file fails, naming it") {
    dir.write("good.json", "{" + base + R"("num_attention_heads": 32})");
    dir.write("worse.json", "{" + base + R"("num_attention_heads": 32, "num_key_value_heads": 0})");
    CHECK_THROWS_WITH(load_model_shapes(dir.path.string()), Catch::Contains("worse.json"));
  }
  SECTION("an empty folder") {
    CHECK_THROWS_AS(load_model_shapes(dir.path.string()), InputError);
  }
  SECTION("a valid one reads") {
    const auto p = dir.write("ok.config.json", "{" + base + R"("num_attention_heads": 32,
        "num_key_value_heads": 1})");
    const ModelShape m = load_model_shape(p);
    CHECK(m.name == "ok");
    CHECK(m.kind == AttentionKind::MQA);
    CHECK(cache_elements_per_layer(m) == 2 * 128);
  }
}

TEST_CASE("Cache calculator: DeepSeek-V3.2 caches 656 + 132 bytes per token and layer", "[ch03]") {
  const ch03::V32CacheBytes c = ch03::v32_cache_bytes();
  CHECK(c.latent_per_layer == 656);   // 512 e4m3 + 4 scales · 4 B + 64 bf16 · 2 B
  CHECK(c.indexer_per_layer == 132);  // 128 e4m3 + 1 scale · 4 B
  CHECK(c.per_token() == 48068);      // (656 + 132) · 61 layers
}

TEST_CASE("Calculator: DeepSeek-V3's attention weights in BF16 and in block-scaled FP8", "[ch03]") {
  const ch03::ModelShape v3 = ch03::load_model_shape(config_path("DeepSeek-V3"));
  REQUIRE(v3.hidden_size == 7168);
  REQUIRE(v3.q_lora_rank == 1536);
  const ch03::MlaLayerSizes s = ch03::mla_layer_sizes(v3);
  const std::vector<ch03::WeightMatrix> w = ch03::mla_layer_matrices(s);
  REQUIRE(w.size() == 5);
  // The shapes of the release's layer-0 tensors: [out, in].
  CHECK((w[0].name == "q_a_proj" && w[0].rows == 1536 && w[0].cols == 7168));
  CHECK((w[1].name == "q_b_proj" && w[1].rows == 128 * 192 && w[1].cols == 1536));
  CHECK((w[2].name == "kv_a_proj_with_mqa" && w[2].rows == 576 && w[2].cols == 7168));
  CHECK((w[3].name == "kv_b_proj" && w[3].rows == 128 * 256 && w[3].cols == 512));
  CHECK((w[4].name == "o_proj" && w[4].rows == 7168 && w[4].cols == 128 * 128));
  // kv_a_proj_with_mqa [576, 7168] has a [5, 56] scale: 576 = 4·128 + 64, a partial bottom row
  // of blocks; 7168 = 56·128 exactly.
  CHECK(ch03::fp8_scale_blocks(576, 7168) == 5 * 56);
  CHECK(ch03::fp8_weight_bytes(576, 7168) == 576u * 7168u + 4u * 5u * 56u);
  CHECK(ch03::fp8_scale_blocks(129, 1) == 2);  // one number past a block is a whole block more
  CHECK(ch03::fp8_scale_blocks(128, 128) == 1);
  CHECK(ch03::fp8_scale_blocks(576, 7168, 64, 128) == 9 * 56);  // other block sizes
  // The layer: Σ rows·cols numbers, 2 bytes each in BF16; 1 byte plus 4 per block in FP8;
  // the two norms (q_a_layernorm 1536, kv_a_layernorm 512) in BF16 both ways.
  std::size_t numbers = 0, blocks = 0;
  for (const auto& m : w) {
    numbers += m.rows * m.cols;
    blocks += ((m.rows + 127) / 128) * ((m.cols + 127) / 128);
  }
  CHECK(numbers == 187105280);  // 1536·7168 + 24576·1536 + 576·7168 + 32768·512 + 7168·16384
  CHECK(blocks == 12 * 56 + 192 * 12 + 5 * 56 + 256 * 4 + 56 * 128);
  const ch03::LayerWeightBytes b = ch03::mla_layer_weight_bytes(s);
  CHECK(b.numbers == numbers);
  CHECK(b.bf16 == 2 * numbers + 2 * (1536 + 512));
  CHECK(b.fp8 == numbers + 4 * blocks + 2 * (1536 + 512));
  // Without query compression the layer has q_proj [n_h (nope + rope), hidden] instead.
  ch03::MlaLayerSizes lite = s;
  lite.q_lora_rank = 0;
  const auto wl = ch03::mla_layer_matrices(lite);
  REQUIRE(wl.size() == 4);
  CHECK((wl[0].name == "q_proj" && wl[0].rows == 128 * 192 && wl[0].cols == 7168));
  CHECK(ch03::norm_numbers(lite) == 512);
  // A model that is not MLA has no such layer.
  CHECK_THROWS_AS(ch03::mla_layer_sizes(ch03::load_model_shape(config_path("Llama-2-7b-hf"))),
                  mla::InputError);
}

TEST_CASE("Calculator: the 656-byte FP8 cache row beside the bf16 one, all of V3's layers",
          "[ch03]") {
  const ch03::ModelShape v3 = ch03::load_model_shape(config_path("DeepSeek-V3"));
  const ch03::V32CacheBytes c =
      ch03::v32_cache_bytes(v3.kv_lora_rank, v3.qk_rope_head_dim, 128, v3.layers);
  CHECK(c.latent_per_layer == 512 + 4 * 4 + 2 * 64);
  CHECK(c.latent_per_layer * c.layers == 656 * 61);                         // 40,016 B per token
  CHECK(2 * (v3.kv_lora_rank + v3.qk_rope_head_dim) * v3.layers == 70272);  // bf16
}
