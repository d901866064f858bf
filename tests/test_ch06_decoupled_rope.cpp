// Tests of chapter 6: RoPE and YaRN as DeepSeek checkpoints expect them, the broken and the
// decoupled absorption, the full MLA layer (naive = absorbed = DeepSeek's reference), mla_verify's
// loader.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <xtensor/xbuilder.hpp>
#include <xtensor/xview.hpp>

#include "06_decoupled_rope/absorption_demo.hpp"
#include "06_decoupled_rope/mla_layer.hpp"
#include "06_decoupled_rope/rope.hpp"
#include "06_decoupled_rope/verify.hpp"
#include "mla/bf16.hpp"
#include "mla/compare.hpp"
#include "mla/safetensors_writer.hpp"

using namespace mla;
using namespace mla::ch06;
namespace fs = std::filesystem;

namespace {

const std::string kGolden = std::string(MLA_TEST_DATA_DIR) + "/golden";

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}

std::vector<float> random_vector(Rng& rng, std::size_t n) {
  std::vector<float> v(n);
  for (float& x : v) x = rng.normal();
  return v;
}

Tensor3 random_input(Rng& rng, std::size_t B, std::size_t S, std::size_t D) {
  Tensor3 x = xt::empty<float>({B, S, D});
  for (float& v : x) v = rng.normal();
  return x;
}

// A fresh empty folder under the system's temporary directory.
fs::path temp_folder(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("mla_ch06_test_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::vector<float> values(const Tensor3& t) {
  return {t.begin(), t.end()};
}

TensorData tensor3(const std::string& name, const Tensor3& x) {
  return {name, DType::F32, {x.shape(0), x.shape(1), x.shape(2)}, values(x)};
}

// A Hugging Face style config.json with the fields MlaConfig reads.
void write_config(const fs::path& path, const MlaConfig& c) {
  nlohmann::json j;
  j["hidden_size"] = c.hidden_size;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["q_lora_rank"] = c.q_lora_rank ? nlohmann::json(*c.q_lora_rank) : nlohmann::json(nullptr);
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["max_position_embeddings"] = c.max_position_embeddings;
  if (c.yarn) {
    j["rope_scaling"] = {
        {"type", "yarn"},
        {"factor", c.yarn->factor},
        {"original_max_position_embeddings", c.yarn->original_max_position_embeddings},
        {"beta_fast", c.yarn->beta_fast},
        {"beta_slow", c.yarn->beta_slow},
        {"mscale", c.yarn->mscale},
        {"mscale_all_dim", c.yarn->mscale_all_dim}};
  }
  std::ofstream(path) << j.dump(2);
}

// Round every weight to bf16 and back, so a BF16 file holds exactly these weights.
MlaWeights bf16_rounded(MlaWeights w, const MlaConfig& cfg) {
  for_each_weight(w, cfg, [](const std::string&, auto& t, const WeightShape&) {
    for (float& v : t) v = bf16_to_float(float_to_bf16(v));
  });
  return w;
}

YarnScaling small_yarn() {
  return YarnScaling{8, 32, 32, 1, 0.707, 0.707};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RoPE
// ---------------------------------------------------------------------------------------------

TEST_CASE("RoPE rotates interleaved pairs (x[2i], x[2i+1]) by pos·theta^(-2i/d)", "[ch06]") {
  const std::size_t d = 8;
  const Rope rope(rope_frequencies(d, 10000.0));
  for (std::size_t i = 0; i < d / 2; ++i) {
    const double f = std::pow(10000.0, -2.0 * double(i) / double(d));
    CHECK(rope.frequencies()[i] == Approx(f).epsilon(1e-6));
    // The unit vector on feature 2i, rotated to position 3, lands in the plane (2i, 2i+1) only.
    std::vector<float> x(d, 0.0f);
    x[2 * i] = 1.0f;
    rope.rotate(x.data(), 3);
    for (std::size_t j = 0; j < d; ++j) {
      const double want = j == 2 * i ? std::cos(3 * f) : j == 2 * i + 1 ? std::sin(3 * f) : 0.0;
      CHECK(x[j] == Approx(want).margin(1e-6));
    }
  }
}

TEST_CASE("RoPE preserves norms and its matrix is what rotate() does", "[ch06]") {
  Rng rng(61);
  const Rope rope(rope_frequencies(16, 10000.0));
  for (std::size_t pos : {0, 1, 7, 100, 4095}) {
    std::vector<float> x = random_vector(rng, 16);
    const std::vector<float> x0 = x;
    rope.rotate(x.data(), pos);
    CHECK(std::sqrt(dot(x, x)) == Approx(std::sqrt(dot(x0, x0))).epsilon(1e-5));
    const Mat R = rope.matrix(pos);
    for (std::size_t i = 0; i < 16; ++i) {
      double r = 0;
      for (std::size_t j = 0; j < 16; ++j) r += double(R(i, j)) * x0[j];
      CHECK(x[i] == Approx(r).margin(1e-5));
    }
  }
}

TEST_CASE("RoPE: <R_m q, R_n k> depends only on m - n", "[ch06]") {
  Rng rng(62);
  const Rope rope(rope_frequencies(32, 10000.0));
  const std::vector<float> q = random_vector(rng, 32), k = random_vector(rng, 32);
  const auto score = [&](std::size_t m, std::size_t n) {
    std::vector<float> a = q, b = k;
    rope.rotate(a.data(), m);
    rope.rotate(b.data(), n);
    return dot(a, b);
  };
  for (std::size_t delta : {0, 1, 5, 17}) {
    const double base = score(delta, 0);
    for (std::size_t shift : {1, 10, 300}) {
      CHECK(score(delta + shift, shift) == Approx(base).margin(2e-4));
    }
  }
  // ...and it does depend on the distance (otherwise RoPE would encode nothing).
  CHECK(std::abs(score(5, 0) - score(0, 0)) > 1e-2);
}

TEST_CASE("RoPE rotates many vectors with a stride (all heads of a token) alike", "[ch06]") {
  Rng rng(63);
  const Rope rope(rope_frequencies(8, 10000.0));
  // 3 heads of 12 numbers laid out as a query row: per head [4 not rotated | 8 rope].
  std::vector<float> heads = random_vector(rng, 36);
  const std::vector<float> before = heads;
  rope.rotate(heads.data() + 4, 3, 12, 9);
  for (std::size_t h = 0; h < 3; ++h) {
    std::vector<float> one(before.begin() + h * 12 + 4, before.begin() + h * 12 + 12);
    rope.rotate(one.data(), 9);
    for (std::size_t i = 0; i < 4; ++i) CHECK(heads[h * 12 + i] == before[h * 12 + i]);
    for (std::size_t i = 0; i < 8; ++i) CHECK(heads[h * 12 + 4 + i] == one[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// YaRN
// ---------------------------------------------------------------------------------------------

TEST_CASE("YaRN: plain frequencies where the ramp is 0, freq/factor where it is 1", "[ch06]") {
  // DeepSeek-V3's rope_scaling (its config.json).
  const YarnScaling y{40, 4096, 32, 1, 1.0, 1.0};
  const std::size_t d = 64;
  const YarnRamp r = yarn_ramp(d, 10000.0, y);
  // By hand: low = floor(64·ln(4096/(32·2π))/(2·ln 10000)) = floor(10.47) = 10,
  //          high = ceil(64·ln(4096/(1·2π))/(2·ln 10000)) = ceil(22.51) = 23.
  CHECK(r.low == 10);
  CHECK(r.high == 23);
  const std::vector<float> plain = rope_frequencies(d, 10000.0);
  const std::vector<float> yarn = yarn_frequencies(d, 10000.0, y);
  std::size_t kept = 0, divided = 0, blended = 0;
  for (std::size_t i = 0; i < d / 2; ++i) {
    const double want_ramp = std::clamp((double(i) - 10.0) / 13.0, 0.0, 1.0);
    CHECK(r.ramp[i] == Approx(want_ramp).margin(1e-6));
    if (r.ramp[i] == 0.0f) {
      CHECK(yarn[i] == plain[i]);
      ++kept;
    } else if (r.ramp[i] == 1.0f) {
      CHECK(yarn[i] == Approx(plain[i] / 40.0).epsilon(1e-6));
      ++divided;
    } else {
      CHECK(yarn[i] < plain[i]);
      CHECK(yarn[i] > plain[i] / 40.0f);
      ++blended;
    }
  }
  CHECK(kept == 11);     // pairs 0..10
  CHECK(divided == 9);   // pairs 23..31
  CHECK(blended == 12);  // pairs 11..22
}

TEST_CASE("YaRN: mscale and the softmax scale, as the golden files state", "[ch06]") {
  CHECK(yarn_mscale(40, 0.707) == Approx(0.1 * 0.707 * std::log(40.0) + 1.0).epsilon(1e-12));
  CHECK(yarn_mscale(1, 0.707) == Approx(1.0));
  // The yarn golden case's metadata records the reference's softmax_scale.
  const MlaConfig v3 = MlaConfig::load(kGolden + "/mla_v3_yarn_tiny.config.json");
  REQUIRE(yarn_active(v3));
  CHECK(mla_softmax_scale(v3) == Approx(0.2294427735858522).epsilon(1e-6));
  const MlaConfig v2 = MlaConfig::load(kGolden + "/mla_v2lite_tiny.config.json");
  CHECK_FALSE(yarn_active(v2));
  CHECK(mla_softmax_scale(v2) == Approx(0.14433756729740643).epsilon(1e-6));
  // YaRN only acts when the context is longer than the original one.
  MlaConfig c = make_mla_config(64, 2, std::nullopt, 32, 16, 8, 16, small_yarn());
  c.max_position_embeddings = 32;
  CHECK_FALSE(yarn_active(c));
  CHECK(mla_softmax_scale(c) == Approx(1.0 / std::sqrt(24.0)).epsilon(1e-6));
  CHECK(Rope::from_config(c).frequencies() == rope_frequencies(8, 10000.0));
  c.max_position_embeddings = 256;
  CHECK(yarn_active(c));
  const double m = 0.1 * 0.707 * std::log(8.0) + 1.0;
  CHECK(mla_softmax_scale(c) == Approx(m * m / std::sqrt(24.0)).epsilon(1e-6));
  CHECK(Rope::from_config(c).frequencies() == yarn_frequencies(8, 10000.0, small_yarn()));
}

// ---------------------------------------------------------------------------------------------
// Absorption, broken and restored
// ---------------------------------------------------------------------------------------------

TEST_CASE("rotating k^C breaks absorption, and the decoupled rope key restores it", "[ch06]") {
  Rng rng(64);
  const RopeAbsorptionDemo demo = demonstrate_rope_breaks_absorption(64, 32, 16, 12, 10000.0, rng);
  const double scale = demo.rope_on_latent_key.max_score;
  REQUIRE(scale > 1.0);
  // Distance 0: R_t^T R_t = I, so even the broken design agrees there.
  CHECK(demo.rope_on_latent_key.max_error_by_distance[0] < 1e-4 * scale);
  // Any other distance: a real mismatch, a sizeable fraction of the scores themselves.
  for (std::size_t d = 1; d < 12; ++d) {
    CHECK(demo.rope_on_latent_key.max_error_by_distance[d] > 0.05 * scale);
  }
  CHECK(demo.rope_on_latent_key.max_error > 0.2 * scale);
  // Decoupled: the absorbed scores equal the true ones up to float rounding.
  CHECK(demo.decoupled.max_error < 1e-5 * std::max(1.0, demo.decoupled.max_score));
}

// ---------------------------------------------------------------------------------------------
// The layer
// ---------------------------------------------------------------------------------------------

TEST_CASE("golden cases: both paths reproduce DeepSeek's reference within 1e-4", "[ch06]") {
  const std::vector<CaseFiles> cases = find_golden_cases(kGolden);
  REQUIRE(cases.size() >= 2);
  const std::vector<MlaPath> paths = builtin_paths();
  REQUIRE(paths.size() == 2);
  CHECK(paths[0].name == "naive");
  CHECK(paths[1].name == "absorbed");
  for (const CaseFiles& f : cases) {
    INFO(f.name);
    const GoldenCase c = load_golden_case(f.config, f.weights);
    const std::vector<VerifyRow> rows = verify_case(c, paths, 1e-4);
    REQUIRE(rows.size() == 4);
    for (const VerifyRow& r : rows) {
      INFO(r.path << " " << r.phase << ": " << r.cmp.describe());
      CHECK(r.pass);
      CHECK(r.cmp.max_abs <= 1e-4);
      CHECK(r.cmp.count ==
            (r.phase == "prefill" ? c.prefill_output.size() : c.decode_output.size()));
    }
  }
}

TEST_CASE("naive = absorbed on random layers of several shapes", "[ch06]") {
  struct Shape {
    std::size_t D, H;
    std::optional<std::size_t> q_lora;
    std::size_t d_c, d_nope, d_rope, d_v;
    bool yarn;
    std::size_t batch;
  };
  const std::vector<Shape> shapes = {
      {64, 2, std::nullopt, 32, 16, 8, 16, false, 1},  // V2-Lite-like: q_proj, plain RoPE
      {96, 3, 24, 40, 8, 4, 12, true, 2},              // query latent, YaRN, batch 2
      {80, 4, std::nullopt, 24, 12, 16, 8, true, 2},   // q_proj with YaRN, rope wider than nope
      {128, 5, 32, 64, 32, 16, 24, false, 1},          // query latent, plain RoPE, d_v != d_nope
      {48, 1, 16, 16, 8, 2, 8, true, 3},               // one head, tiny rope part
  };
  Rng rng(65);
  for (const Shape& s : shapes) {
    MlaConfig cfg =
        make_mla_config(s.D, s.H, s.q_lora, s.d_c, s.d_nope, s.d_rope, s.d_v,
                        s.yarn ? std::optional<YarnScaling>(small_yarn()) : std::nullopt);
    if (s.yarn) cfg.max_position_embeddings = 256;
    INFO("D " << s.D << " H " << s.H << " q_lora " << (s.q_lora ? *s.q_lora : 0) << " yarn "
              << s.yarn << " batch " << s.batch);
    REQUIRE(yarn_active(cfg) == s.yarn);
    const auto w = std::make_shared<const MlaWeights>(random_mla_weights(cfg, rng));
    const Tensor3 pre = random_input(rng, s.batch, 7, s.D);
    const Tensor3 dec = random_input(rng, s.batch, 4, s.D);
    NaiveMla naive(cfg, w, s.batch);
    AbsorbedMla absorbed(cfg, w, s.batch);
    const auto [n_pre, n_dec] = run_prefill_decode(naive, pre, dec);
    const auto [a_pre, a_dec] = run_prefill_decode(absorbed, pre, dec);
    INFO("prefill " << compare(a_pre, n_pre).describe() << "; decode "
                    << compare(a_dec, n_dec).describe());
    CHECK(allclose(a_pre, n_pre, 1e-5, 1e-4));
    CHECK(allclose(a_dec, n_dec, 1e-5, 1e-4));
    // What each caches per token: every head's key and value, or one latent + one rope key.
    CHECK(naive.cache_floats_per_token() == s.H * (s.d_nope + s.d_rope + s.d_v));
    CHECK(absorbed.cache_floats_per_token() == s.d_c + s.d_rope);
    CHECK(absorbed.cache_floats() == s.batch * 11 * (s.d_c + s.d_rope));
    CHECK(naive.position() == 11);
  }
}

TEST_CASE("prefill in chunks equals prefill in one call, and sequences in a batch are independent",
          "[ch06]") {
  Rng rng(66);
  MlaConfig cfg = make_mla_config(64, 4, 24, 32, 16, 8, 16, small_yarn());
  cfg.max_position_embeddings = 256;
  const auto w = std::make_shared<const MlaWeights>(random_mla_weights(cfg, rng));
  const Tensor3 x = random_input(rng, 2, 9, 64);
  for (const MlaPath& path : builtin_paths()) {
    INFO(path.name);
    const Tensor3 whole = path.make(cfg, w, 2)->forward(x);
    auto layer = path.make(cfg, w, 2);
    const Tensor3 a = layer->forward(xt::eval(xt::view(x, xt::all(), xt::range(0, 4), xt::all())));
    const Tensor3 b = layer->forward(xt::eval(xt::view(x, xt::all(), xt::range(4, 9), xt::all())));
    const Tensor3 chunks = xt::concatenate(xt::xtuple(a, b), 1);
    CHECK(allclose(chunks, whole, 1e-5, 1e-4));
    // Sequence 1 alone gives what it gave in the batch.
    const Tensor3 second = xt::eval(xt::view(x, xt::range(1, 2), xt::all(), xt::all()));
    const Tensor3 alone = path.make(cfg, w, 1)->forward(second);
    const Tensor3 in_batch = xt::eval(xt::view(whole, xt::range(1, 2), xt::all(), xt::all()));
    CHECK(allclose(alone, in_batch, 1e-5, 1e-4));
    // The first token only sees itself, so it does not depend on what follows.
    const Tensor3 first = xt::eval(xt::view(x, xt::all(), xt::range(0, 1), xt::all()));
    const Tensor3 y1 = path.make(cfg, w, 2)->forward(first);
    const Tensor3 w1 = xt::eval(xt::view(whole, xt::all(), xt::range(0, 1), xt::all()));
    CHECK(allclose(y1, w1, 1e-5, 1e-4));
  }
}

TEST_CASE("an absorbed path with another attention core (chapter 7's hook)", "[ch06]") {
  // A core that delegates to the reference one and counts the calls.
  struct Counting : LatentAttention {
    std::unique_ptr<LatentAttention> inner;
    int* calls;
    Counting(std::unique_ptr<LatentAttention> i, int* c) : inner(std::move(i)), calls(c) {}
    void append(const float* c, const float* k, std::size_t n) override { inner->append(c, k, n); }
    void attend(const float* q, const float* r, std::size_t S, std::size_t start, float scale,
                float* out) override {
      ++*calls;
      inner->attend(q, r, S, start, scale, out);
    }
    std::size_t size() const override { return inner->size(); }
  };
  int calls = 0;
  const MlaPath p = absorbed_path(
      "counting", "reference core, counted", [&](std::size_t H, std::size_t d_c, std::size_t d_r) {
        return std::make_unique<Counting>(make_reference_latent_attention(H, d_c, d_r), &calls);
      });
  const GoldenCase c = load_golden_case(kGolden + "/mla_v3_yarn_tiny.config.json",
                                        kGolden + "/mla_v3_yarn_tiny.safetensors");
  const std::vector<VerifyRow> rows = verify_case(c, {p}, 1e-4);
  for (const VerifyRow& r : rows) CHECK(r.pass);
  // One attend per sequence per call: prefill (1 call) + decode (6 calls), batch 2.
  CHECK(calls == 2 * (1 + 6));
}

TEST_CASE("the reference latent core refuses queries beyond its cache", "[ch06]") {
  auto core = make_reference_latent_attention(2, 4, 2);
  std::vector<float> c(3 * 4, 0.5f), k(3 * 2, 0.25f), q(2 * 2 * 4, 1.0f), r(2 * 2 * 2, 1.0f),
      out(2 * 2 * 4);
  core->append(c.data(), k.data(), 3);
  CHECK(core->size() == 3);
  core->attend(q.data(), r.data(), 2, 1, 0.5f, out.data());  // positions 1, 2: fine
  // All cached latents are equal, so any softmax weights average them to themselves.
  for (float v : out) CHECK(v == Approx(0.5f));
  CHECK_THROWS_AS(core->attend(q.data(), r.data(), 2, 2, 0.5f, out.data()), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// Loading: checkpoints, test cases, errors (mla_verify exits 2 on these)
// ---------------------------------------------------------------------------------------------

TEST_CASE("a case mla_verify has never seen: BF16 weights of layer 3, batch 2, made here",
          "[ch06]") {
  Rng rng(67);
  MlaConfig cfg = make_mla_config(72, 3, std::nullopt, 24, 16, 8, 12, small_yarn());
  cfg.max_position_embeddings = 128;
  cfg.num_hidden_layers = 4;
  const auto w =
      std::make_shared<const MlaWeights>(bf16_rounded(random_mla_weights(cfg, rng), cfg));
  const Tensor3 pre = random_input(rng, 2, 6, 72), dec = random_input(rng, 2, 3, 72);
  NaiveMla naive(cfg, w, 2);
  const auto [y_pre, y_dec] = run_prefill_decode(naive, pre, dec);

  const fs::path dir = temp_folder("unseen");
  write_config(dir / "case.config.json", cfg);
  std::vector<TensorData> t = mla_weight_tensors(*w, cfg, 3, DType::BF16);
  t.push_back(tensor3("test.prefill.input", pre));
  t.push_back(tensor3("test.decode.input", dec));
  t.push_back(tensor3("test.prefill.output", y_pre));
  t.push_back(tensor3("test.decode.output", y_dec));
  write_safetensors((dir / "case.safetensors").string(), t);

  const std::vector<CaseFiles> found = find_golden_cases(dir.string());
  REQUIRE(found.size() == 1);
  const GoldenCase c = load_golden_case(found[0].config, found[0].weights);
  CHECK(c.layer == 3);  // found by itself
  CHECK(c.weights->kv_b_proj == w->kv_b_proj);
  for (const VerifyRow& r : verify_case(c, builtin_paths(), 1e-4)) {
    INFO(r.path << " " << r.phase << " " << r.cmp.describe());
    CHECK(r.pass);
  }
  // A wrong expected output fails (mla_verify exits 1), naming the path and phase.
  Tensor3 wrong = y_dec;
  wrong(1, 2, 5) += 0.01f;
  t[t.size() - 1] = tensor3("test.decode.output", wrong);
  write_safetensors((dir / "case.safetensors").string(), t);
  const GoldenCase bad = load_golden_case(found[0].config, found[0].weights);
  for (const VerifyRow& r : verify_case(bad, builtin_paths(), 1e-4)) {
    CHECK(r.pass == (r.phase == "prefill"));
  }
  fs::remove_all(dir);
}

TEST_CASE("unusable input is an InputError (mla_verify exits 2)", "[ch06]") {
  Rng rng(68);
  const MlaConfig cfg = make_mla_config(32, 2, 8, 16, 8, 4, 8);
  const MlaWeights w = random_mla_weights(cfg, rng);
  const Tensor3 pre = random_input(rng, 1, 3, 32), dec = random_input(rng, 1, 2, 32);
  const fs::path dir = temp_folder("bad");
  const std::string config = (dir / "c.config.json").string();
  const std::string weights = (dir / "c.safetensors").string();
  write_config(config, cfg);
  const auto tests = [&](std::vector<TensorData> t) {
    t.push_back(tensor3("test.prefill.input", pre));
    t.push_back(tensor3("test.decode.input", dec));
    t.push_back(tensor3("test.prefill.output", pre));
    t.push_back(tensor3("test.decode.output", dec));
    return t;
  };

  SECTION("missing files") {
    CHECK_THROWS_AS(load_golden_case((dir / "none.config.json").string(), weights), InputError);
    CHECK_THROWS_AS(load_golden_case(config, (dir / "none.safetensors").string()), InputError);
    CHECK_THROWS_AS(find_golden_cases((dir / "nowhere").string()), InputError);
    CHECK_THROWS_AS(find_golden_cases(dir.string()), InputError);  // a config but no weights
  }
  SECTION("malformed weights file") {
    write_bytes(weights, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
    CHECK_THROWS_AS(load_golden_case(config, weights), InputError);
  }
  SECTION("malformed config") {
    std::ofstream(config) << "{\"hidden_size\": 32,";
    write_safetensors(weights, tests(mla_weight_tensors(w, cfg, 0, DType::F32)));
    CHECK_THROWS_AS(load_golden_case(config, weights), InputError);
  }
  SECTION("missing test tensors") {
    write_safetensors(weights, mla_weight_tensors(w, cfg, 0, DType::F32));
    CHECK_THROWS_WITH(load_golden_case(config, weights), Catch::Contains("test.prefill.input"));
  }
  SECTION("a weight whose shape does not match the config names tensor, expected and found") {
    MlaWeights bad = w;
    bad.kv_b_proj = rng.normal(2 * 16, 15);  // d_c should be 16
    write_safetensors(weights, tests(mla_weight_tensors(bad, cfg, 0, DType::F32)));
    CHECK_THROWS_AS(load_golden_case(config, weights), InputError);
    CHECK_THROWS_WITH(load_golden_case(config, weights), Catch::Contains("kv_b_proj") &&
                                                             Catch::Contains("16") &&
                                                             Catch::Contains("15"));
  }
  SECTION("q_proj where the config says q_lora_rank") {
    MlaConfig plain = cfg;
    plain.q_lora_rank = std::nullopt;
    write_safetensors(
        weights, tests(mla_weight_tensors(random_mla_weights(plain, rng), plain, 0, DType::F32)));
    CHECK_THROWS_WITH(load_golden_case(config, weights), Catch::Contains("q_a_proj"));
  }
  SECTION("test inputs whose width is not hidden_size") {
    std::vector<TensorData> t = mla_weight_tensors(w, cfg, 0, DType::F32);
    const Tensor3 narrow = random_input(rng, 1, 3, 31);
    t.push_back(tensor3("test.prefill.input", narrow));
    t.push_back(tensor3("test.decode.input", dec));
    t.push_back(tensor3("test.prefill.output", narrow));
    t.push_back(tensor3("test.decode.output", dec));
    write_safetensors(weights, t);
    CHECK_THROWS_WITH(load_golden_case(config, weights), Catch::Contains("test.prefill.input"));
  }
  SECTION("expected outputs of another shape than the inputs") {
    std::vector<TensorData> t = mla_weight_tensors(w, cfg, 0, DType::F32);
    t.push_back(tensor3("test.prefill.input", pre));
    t.push_back(tensor3("test.decode.input", dec));
    t.push_back(tensor3("test.prefill.output", pre));
    t.push_back(tensor3("test.decode.output", pre));
    write_safetensors(weights, t);
    CHECK_THROWS_WITH(load_golden_case(config, weights), Catch::Contains("test.decode.output"));
  }
  SECTION("no attention layer, or a layer that is not there") {
    write_safetensors(weights, tests({}));
    CHECK_THROWS_AS(load_golden_case(config, weights), InputError);
    write_safetensors(weights, tests(mla_weight_tensors(w, cfg, 0, DType::F32)));
    CHECK_THROWS_WITH(load_golden_case(config, weights, 5), Catch::Contains("layer 5"));
    CHECK_NOTHROW(load_golden_case(config, weights, 0));
  }
  SECTION("two layers and no --layer") {
    std::vector<TensorData> t = tests(mla_weight_tensors(w, cfg, 0, DType::F32));
    for (TensorData& d : mla_weight_tensors(w, cfg, 2, DType::F32)) t.push_back(d);
    write_safetensors(weights, t);
    CHECK_THROWS_WITH(load_golden_case(config, weights), Catch::Contains("--layer"));
    CHECK(load_golden_case(config, weights, 2).layer == 2);
  }
  fs::remove_all(dir);
}

TEST_CASE("configs the layer cannot run are refused by field", "[ch06]") {
  MlaConfig c = make_mla_config(32, 2, std::nullopt, 16, 8, 4, 8);
  CHECK_NOTHROW(check_mla_config(c));
  c.qk_rope_head_dim = 5;
  CHECK_THROWS_WITH(check_mla_config(c), Catch::Contains("qk_rope_head_dim"));
  c.qk_rope_head_dim = 4;
  c.kv_lora_rank = 0;
  CHECK_THROWS_WITH(check_mla_config(c), Catch::Contains("kv_lora_rank"));
  c.kv_lora_rank = 16;
  c.yarn = YarnScaling{40, 0, 32, 1, 1, 1};
  CHECK_THROWS_WITH(check_mla_config(c), Catch::Contains("original_max_position_embeddings"));
}

TEST_CASE("a DeepSeek-V2-Lite-sized layer caches 576 numbers per token on the absorbed path",
          "[ch06]") {
  const std::string path = std::string(MLA_TEST_DATA_DIR) + "/configs/DeepSeek-V2-Lite.config.json";
  // The real config if it is there, else its published sizes.
  const MlaConfig c = fs::exists(path) ? MlaConfig::load(path)
                                       : make_mla_config(2048, 16, std::nullopt, 512, 128, 64, 128);
  Rng rng(69);
  const auto w = std::make_shared<const MlaWeights>(random_mla_weights(c, rng));
  NaiveMla naive(c, w, 1);
  AbsorbedMla absorbed(c, w, 1);
  const Tensor3 pre = random_input(rng, 1, 3, c.hidden_size),
                dec = random_input(rng, 1, 1, c.hidden_size);
  const auto [n_pre, n_dec] = run_prefill_decode(naive, pre, dec);
  const auto [a_pre, a_dec] = run_prefill_decode(absorbed, pre, dec);
  CHECK(allclose(a_pre, n_pre, 1e-5, 1e-4));
  CHECK(allclose(a_dec, n_dec, 1e-5, 1e-4));
  CHECK(absorbed.cache_floats_per_token() == 512 + 64);
  CHECK(naive.cache_floats_per_token() == 16 * (192 + 128));
  CHECK(absorbed.cache_floats() == 4 * 576);
}
