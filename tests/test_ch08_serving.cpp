// Chapter 8: the whole model equals a layer-by-layer double-precision reference (MLA and GQA);
// MLA's paths make the same greedy tokens; model folders load (single file and sharded) and bad
// ones are refused by name; sampling is repeatable.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "06_decoupled_rope/rope.hpp"
#include "08_serving/decoder.hpp"
#include "08_serving/model.hpp"
#include "08_serving/sampling.hpp"
#include "mla/errors.hpp"
#include "mla/safetensors_writer.hpp"
#include "support.hpp"

using namespace mla;
using namespace mla::ch08;
using mla::test::DMat;

namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// The reference, in double, written from the equations (DeepSeek's Block and MLA, Llama's
// attention), sharing nothing with the code under test but the weights.
// ---------------------------------------------------------------------------------------------

DMat ref_rmsnorm(const DMat& x, const Vec& w, double eps) {
  DMat y(x.rows, x.cols);
  for (std::size_t i = 0; i < x.rows; ++i) {
    double ss = 0;
    for (std::size_t j = 0; j < x.cols; ++j) ss += x(i, j) * x(i, j);
    const double r = 1.0 / std::sqrt(ss / x.cols + eps);
    for (std::size_t j = 0; j < x.cols; ++j) y(i, j) = x(i, j) * r * w(j);
  }
  return y;
}

DMat lin(const DMat& x, const Mat& W) {
  return test::mul_t(x, test::to_double(W));
}

DMat cols(const DMat& x, std::size_t c0, std::size_t n) {
  DMat y(x.rows, n);
  for (std::size_t i = 0; i < x.rows; ++i) {
    for (std::size_t j = 0; j < n; ++j) y(i, j) = x(i, c0 + j);
  }
  return y;
}

/// Rotate d features at p by position t: interleaved pairs (DeepSeek) or halves (Llama).
void ref_rope(double* p, std::size_t d, double theta, std::size_t t, bool interleaved) {
  const std::vector<float> f = ch06::rope_frequencies(d, theta);
  for (std::size_t i = 0; i < d / 2; ++i) {
    const double a = double(float(t) * f[i]), c = std::cos(a), s = std::sin(a);
    double& x1 = interleaved ? p[2 * i] : p[i];
    double& x2 = interleaved ? p[2 * i + 1] : p[i + d / 2];
    const double a1 = x1, a2 = x2;
    x1 = a1 * c - a2 * s;
    x2 = a2 * c + a1 * s;
  }
}

DMat ref_mla(const ch06::MlaWeights& w, const MlaConfig& c, const DMat& x) {
  const std::size_t S = x.rows, H = c.num_attention_heads, d_c = c.kv_lora_rank;
  const std::size_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dqk = dn + dr,
                    dv = c.v_head_dim;
  DMat q = c.q_lora_rank
               ? lin(ref_rmsnorm(lin(x, w.q_a_proj), w.q_a_layernorm, c.rms_norm_eps), w.q_b_proj)
               : lin(x, w.q_proj);               // (S, H·d_qk)
  const DMat kv = lin(x, w.kv_a_proj_with_mqa);  // (S, d_c + d_r)
  const DMat lat = ref_rmsnorm(cols(kv, 0, d_c), w.kv_a_layernorm, c.rms_norm_eps);
  DMat kr = cols(kv, d_c, dr);
  const DMat up = lin(lat, w.kv_b_proj);  // (S, H·(d_nope + d_v))
  DMat K(S, H * dqk), V(S, H * dv);
  for (std::size_t t = 0; t < S; ++t) {
    ref_rope(&kr(t, 0), dr, c.rope_theta, t, true);
    for (std::size_t h = 0; h < H; ++h) {
      ref_rope(&q(t, h * dqk + dn), dr, c.rope_theta, t, true);
      for (std::size_t i = 0; i < dn; ++i) K(t, h * dqk + i) = up(t, h * (dn + dv) + i);
      for (std::size_t i = 0; i < dr; ++i) K(t, h * dqk + dn + i) = kr(t, i);
      for (std::size_t i = 0; i < dv; ++i) V(t, h * dv + i) = up(t, h * (dn + dv) + dn + i);
    }
  }
  const double scale = 1.0 / std::sqrt(double(dqk));
  return lin(test::ref_attention(q, K, V, H, H, dqk, dv, scale).out, w.o_proj);
}

DMat ref_gqa(const GqaWeights& w, const GqaConfig& c, const DMat& x) {
  DMat q = lin(x, w.q_proj), k = lin(x, w.k_proj);
  const DMat v = lin(x, w.v_proj);
  const std::size_t d = c.head_dim;
  for (std::size_t t = 0; t < x.rows; ++t) {
    for (std::size_t h = 0; h < c.heads; ++h) ref_rope(&q(t, h * d), d, c.rope_theta, t, false);
    for (std::size_t h = 0; h < c.kv_heads; ++h) ref_rope(&k(t, h * d), d, c.rope_theta, t, false);
  }
  return lin(
      test::ref_attention(q, k, v, c.heads, c.kv_heads, d, d, 1.0 / std::sqrt(double(d))).out,
      w.o_proj);
}

/// The model's logits (S, V) for a sequence of tokens, in double.
DMat ref_model(const Model& m, const std::vector<int>& tokens) {
  const ModelConfig& c = m.config;
  DMat x(tokens.size(), c.hidden_size);
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    for (std::size_t j = 0; j < c.hidden_size; ++j) {
      x(t, j) = m.weights.embed_tokens(std::size_t(tokens[t]), j);
    }
  }
  for (const LayerWeights& l : m.weights.layers) {
    const DMat hn = ref_rmsnorm(x, l.input_layernorm, c.rms_norm_eps);
    const DMat a =
        c.attention == AttentionKind::MLA ? ref_mla(*l.mla, c.mla, hn) : ref_gqa(l.gqa, c.gqa, hn);
    for (std::size_t i = 0; i < x.v.size(); ++i) x.v[i] += a.v[i];
    const DMat y = ref_rmsnorm(x, l.post_attention_layernorm, c.rms_norm_eps);
    DMat g = lin(y, l.gate_proj);
    const DMat u = lin(y, l.up_proj);
    for (std::size_t i = 0; i < g.v.size(); ++i) g.v[i] = g.v[i] / (1 + std::exp(-g.v[i])) * u.v[i];
    const DMat dn = lin(g, l.down_proj);
    for (std::size_t i = 0; i < x.v.size(); ++i) x.v[i] += dn.v[i];
  }
  return lin(ref_rmsnorm(x, m.weights.norm, c.rms_norm_eps), m.weights.lm_head);
}

// ---------------------------------------------------------------------------------------------
// Small models
// ---------------------------------------------------------------------------------------------

ModelConfig small_mla(bool q_lora = true) {
  return make_mla_model_config(
      2, 96,
      ch06::make_mla_config(48, 4, q_lora ? std::optional<std::size_t>(24) : std::nullopt, 32, 16,
                            8, 12));
}

ModelConfig small_gqa(std::size_t kv_heads) {
  GqaConfig g;
  g.heads = 4;
  g.kv_heads = kv_heads;
  g.head_dim = 12;
  return make_gqa_model_config(48, 2, 96, g);
}

fs::path temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("mla_ch08_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::vector<float> values(const Mat& m) {
  return {m.begin(), m.end()};
}

/// Logits of a whole sequence, prefill of `split` tokens then one token at a time.
Mat decoder_logits(const std::shared_ptr<const Model>& m, const std::vector<int>& toks,
                   std::size_t split, const std::string& path = "absorbed") {
  Decoder d(m, path);
  const std::size_t V = m->config.vocab_size;
  Mat out = xt::empty<float>({toks.size(), V});
  Mat first = d.forward({toks.begin(), toks.begin() + split});
  std::copy(first.begin(), first.end(), out.data());
  for (std::size_t t = split; t < toks.size(); ++t) {
    const Mat l = d.forward({toks[t]});
    std::copy(l.begin(), l.end(), out.data() + t * V);
  }
  return out;
}

}  // namespace

TEST_CASE("ch08: the MLA model's logits equal a layer-by-layer double reference", "[ch08]") {
  for (bool q_lora : {true, false}) {
    const auto m = std::make_shared<const Model>(random_model(small_mla(q_lora), 7));
    Rng rng(3);
    const auto toks = test::random_tokens(rng, 13, 256);
    const DMat ref = ref_model(*m, toks);
    for (const char* path : {"naive", "absorbed", "fast"}) {
      INFO("path " << path << ", q_lora " << q_lora);
      test::check_close(decoder_logits(m, toks, 13, path), ref, 1e-4, 1e-3, "prefill");
      test::check_close(decoder_logits(m, toks, 5, path), ref, 1e-4, 1e-3, "prefill + decode");
    }
  }
}

TEST_CASE("ch08: the MHA and GQA models' logits equal a layer-by-layer double reference",
          "[ch08]") {
  for (std::size_t kv : {4, 2, 1}) {
    const auto m = std::make_shared<const Model>(random_model(small_gqa(kv), 8));
    CHECK(m->config.variant() == (kv == 4 ? "mha" : "gqa"));
    Rng rng(4);
    const auto toks = test::random_tokens(rng, 11, 256);
    const DMat ref = ref_model(*m, toks);
    INFO("kv heads " << kv);
    test::check_close(decoder_logits(m, toks, 11, "gqa"), ref, 1e-4, 1e-3, "prefill");
    test::check_close(decoder_logits(m, toks, 4, "gqa"), ref, 1e-4, 1e-3, "prefill + decode");
  }
}

TEST_CASE("ch08: MLA's naive, absorbed and optimized paths make the same greedy tokens", "[ch08]") {
  const auto m = std::make_shared<const Model>(random_model(small_mla(), 11));
  const auto prompt = encode_bytes("Multi-head latent attention");
  std::vector<std::vector<int>> outs;
  for (const char* path : {"naive", "absorbed", "fast"}) {
    Decoder d(m, path);
    outs.push_back(generate(d, prompt, 24, {}));
  }
  REQUIRE(outs[0].size() == 24);
  CHECK(outs[1] == outs[0]);
  CHECK(outs[2] == outs[0]);
}

TEST_CASE("ch08: a saved model folder loads back to the same logits, single file and sharded",
          "[ch08]") {
  for (const auto& cfg : {small_mla(), small_gqa(2)}) {
    const auto m = std::make_shared<const Model>(random_model(cfg, 5));
    const fs::path dir = temp_dir("roundtrip_" + cfg.variant());
    save_model(*m, dir.string());
    const auto back = std::make_shared<const Model>(load_model(dir.string()));
    const std::vector<int> toks = encode_bytes("round trip");
    CHECK(values(decoder_logits(back, toks, 4, cfg.variant() == "mla" ? "absorbed" : "gqa")) ==
          values(decoder_logits(m, toks, 4, cfg.variant() == "mla" ? "absorbed" : "gqa")));

    // The same tensors in two shards with an index, as large models ship.
    const fs::path sharded = temp_dir("sharded_" + cfg.variant());
    fs::copy_file(dir / "config.json", sharded / "config.json");
    std::vector<TensorData> a, b;
    nlohmann::json index;
    for_each_weight(
        m->weights, m->config, [&](const std::string& n, const auto& t, const WeightShape&) {
          auto& shard = n.find("layers.1.") == std::string::npos ? a : b;
          shard.push_back(
              {n, DType::F32, {t.shape().begin(), t.shape().end()}, {t.begin(), t.end()}});
          index["weight_map"][n] = &shard == &a ? "a.safetensors" : "b.safetensors";
        });
    write_safetensors((sharded / "a.safetensors").string(), a);
    write_safetensors((sharded / "b.safetensors").string(), b);
    std::ofstream((sharded / "model.safetensors.index.json").string()) << index.dump();
    const Model s = load_model(sharded.string());
    CHECK(values(s.weights.lm_head) == values(m->weights.lm_head));
    CHECK(values(s.weights.layers[1].down_proj) == values(m->weights.layers[1].down_proj));
  }
}

TEST_CASE("ch08: a model folder with a missing or mis-shaped tensor is refused by name", "[ch08]") {
  const Model m = random_model(small_mla(), 5);
  const fs::path dir = temp_dir("broken");
  save_model(m, dir.string());
  std::vector<TensorData> tensors;
  for_each_weight(
      m.weights, m.config, [&](const std::string& n, const auto& t, const WeightShape&) {
        if (n == "model.layers.1.mlp.up_proj.weight") return;  // dropped
        tensors.push_back(
            {n, DType::F32, {t.shape().begin(), t.shape().end()}, {t.begin(), t.end()}});
      });
  write_safetensors((dir / "model.safetensors").string(), tensors);
  CHECK_THROWS_WITH(load_model(dir.string()), Catch::Contains("model.layers.1.mlp.up_proj.weight"));

  // A config whose intermediate_size disagrees with the file: the first MLP tensor is named.
  save_model(m, dir.string());
  ModelConfig wrong = m.config;
  wrong.intermediate_size = 64;
  std::ofstream((dir / "config.json").string()) << wrong.to_json().dump();
  CHECK_THROWS_WITH(load_model(dir.string()), Catch::Contains("model.layers.0.mlp.gate_proj"));
  // ... and weights in memory that disagree with the config, too.
  CHECK_THROWS_WITH(check_model_weights(m.weights, wrong),
                    Catch::Contains("model.layers.0.mlp.gate_proj.weight: expected shape"));
}

TEST_CASE(
    "ch08: configs with experts in loaded layers, or a vocabulary that is not bytes, are "
    "refused by name",
    "[ch08]") {
  nlohmann::json j = small_mla().to_json();
  j["n_routed_experts"] = 64;
  j["first_k_dense_replace"] = 1;
  j["moe_layer_freq"] = 1;
  CHECK_THROWS_WITH(ModelConfig::from_json(j, "cfg"),
                    Catch::Contains("'n_routed_experts' = 64") && Catch::Contains("layer 1"));
  j["first_k_dense_replace"] = 2;  // both layers dense: DeepSeek would build no MoE
  CHECK_NOTHROW(ModelConfig::from_json(j, "cfg"));
  j["first_k_dense_replace"] = 0;
  j["moe_layer_freq"] = 3;  // layer 0 is MoE (0 % 3 == 0)
  CHECK_THROWS_WITH(ModelConfig::from_json(j, "cfg"), Catch::Contains("layer 0"));

  nlohmann::json g = small_gqa(2).to_json();
  g["num_local_experts"] = 8;
  CHECK_THROWS_WITH(ModelConfig::from_json(g, "cfg"), Catch::Contains("num_local_experts"));
  g.erase("num_local_experts");
  g["num_key_value_heads"] = 3;
  CHECK_THROWS_WITH(ModelConfig::from_json(g, "cfg"), Catch::Contains("num_key_value_heads"));

  ModelConfig v = small_mla();
  v.vocab_size = 300;
  CHECK_THROWS_AS(check_byte_vocabulary(v, "cfg"), InputError);
  CHECK_THROWS_WITH(check_byte_vocabulary(v, "cfg"), Catch::Contains("vocab_size"));
  CHECK_NOTHROW(check_byte_vocabulary(small_mla(), "cfg"));
}

TEST_CASE("ch08: sampling is repeatable with a seed, and greedy at its limits", "[ch08]") {
  Rng rng(1);
  const Vec logits = rng.normal_vec(256, 2.0f);
  const int best = argmax(logits.data(), 256);
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 99;
  std::vector<int> a, b;
  Sampler s1(p), s2(p);
  for (int i = 0; i < 50; ++i) {
    a.push_back(s1.sample(logits.data(), 256));
    b.push_back(s2.sample(logits.data(), 256));
  }
  CHECK(a == b);                                     // same seed, same tokens
  CHECK(std::count(a.begin(), a.end(), a[0]) < 50);  // and it does sample
  SamplingParams k1 = p;
  k1.top_k = 1;
  SamplingParams p0 = p;
  p0.top_p = 1e-6f;
  Sampler sk(k1), sp(p0), greedy(SamplingParams{});
  for (int i = 0; i < 10; ++i) {
    CHECK(sk.sample(logits.data(), 256) == best);
    CHECK(sp.sample(logits.data(), 256) == best);
    CHECK(greedy.sample(logits.data(), 256) == best);
  }
  // top-k = 5 draws only from the 5 largest logits.
  SamplingParams k5 = p;
  k5.top_k = 5;
  Sampler s5(k5);
  std::vector<float> sorted(logits.begin(), logits.end());
  std::sort(sorted.rbegin(), sorted.rend());
  for (int i = 0; i < 50; ++i)
    CHECK(logits(std::size_t(s5.sample(logits.data(), 256))) >= sorted[4]);
  SamplingParams bad;
  bad.top_p = 0;
  CHECK_THROWS(Sampler(bad));
}
