// Tests of the checkpoint readers: safetensors (single and sharded), dtype conversion, the
// Hugging Face config.json reader, and every way a file can be malformed.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include "06_decoupled_rope/mla_layer.hpp"
#include "06_decoupled_rope/mla_weights.hpp"
#include "mla/bf16.hpp"
#include "mla/checkpoint.hpp"
#include "mla/config.hpp"
#include "mla/json.hpp"
#include "mla/safetensors.hpp"
#include "mla/safetensors_writer.hpp"

#include "support.hpp"

using Catch::Contains;
namespace fs = std::filesystem;

namespace {

const std::string kGolden = std::string(MLA_TEST_DATA_DIR) + "/golden/";
const std::string kV2 = kGolden + "mla_v2lite_tiny";
const std::string kV3 = kGolden + "mla_v3_yarn_tiny";

using mla::test::TempDir;

std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

/// Bytes with an explicit (possibly lying) header length.
std::vector<std::uint8_t> with_length(std::uint64_t n, const std::string& header,
                                      std::size_t data_bytes = 0) {
  std::vector<std::uint8_t> b(8 + header.size() + data_bytes, 0);
  for (int i = 0; i < 8; ++i) b[i] = std::uint8_t(n >> (8 * i));
  std::copy(header.begin(), header.end(), b.begin() + 8);
  return b;
}

/// A header of one tensor "w" with the given entry body, and `data_bytes` zero bytes of data.
std::vector<std::uint8_t> one_tensor(const std::string& entry, std::size_t data_bytes) {
  return mla::raw_safetensors_bytes("{\"w\":" + entry + "}",
                                    std::vector<std::uint8_t>(data_bytes, 0));
}

/// from_bytes plus loading every tensor: what a program does with a file.
void open_and_load_all(const std::vector<std::uint8_t>& bytes) {
  auto st = mla::SafeTensors::from_bytes(bytes, "bad.safetensors");
  for (const auto& n : st.names()) (void)st.load(n);
}

/// Max |a - b| over two equally long float vectors.
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

std::uint32_t bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
float from_bits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

}  // namespace

// =============================================================================================
// The golden files
// =============================================================================================

TEST_CASE("golden v2-lite file: names, dtypes, shapes agree with its config", "[loaders]") {
  const auto cfg = mla::MlaConfig::load(kV2 + ".config.json");
  const auto st = mla::SafeTensors::open(kV2 + ".safetensors");
  const std::size_t H = cfg.num_attention_heads, d = cfg.hidden_size;
  const std::string layer = "model.layers.0.", p = layer + "self_attn.";
  REQUIRE(st.names().size() == 11);
  CHECK_FALSE(st.contains(p + "q_a_proj.weight"));  // q_lora_rank is null: the layer has q_proj
  // The layer's list of weights (the one the loader uses) names 5 tensors here, each the shape
  // its config gives it.
  std::size_t listed = 0;
  mla::ch06::for_each_weight(
      mla::ch06::MlaWeights{}, cfg,
      [&](const std::string& name, const auto&, const mla::ch06::WeightShape& shape) {
        INFO(name);
        ++listed;
        REQUIRE(st.contains(layer + name));
        CHECK(st.info(layer + name).dtype == mla::DType::F32);
        CHECK(st.info(layer + name).dtype_name == "F32");
        CHECK(st.info(layer + name).shape == shape);
      });
  CHECK(listed == 5);
  CHECK(st.info("test.prefill.input").shape == std::vector<std::size_t>{1, 12, d});
  CHECK(st.info("test.decode.input").shape == std::vector<std::size_t>{1, 4, d});
  CHECK(st.metadata().at("batch") == "1");
  CHECK(st.metadata().at("prefill_tokens") == "12");

  // names() is in data order: the first tensor starts at offset 0 and each starts where the
  // previous ended.
  std::size_t at = 0;
  for (const auto& n : st.names()) {
    CHECK(st.info(n).begin == at);
    at = st.info(n).end;
  }

  const mla::Mat W = st.load_matrix(p + "q_proj.weight", H * cfg.qk_head_dim(), d);
  CHECK(W.shape(0) == H * cfg.qk_head_dim());
  const mla::Vec g = st.load_vector(p + "kv_a_layernorm.weight", cfg.kv_lora_rank);
  for (float x : g) CHECK((x > 0.5f && x < 1.5f));  // norm weights near 1, says the README
  const mla::Tensor3 x = st.load_tensor3("test.prefill.input");
  CHECK(x.shape(2) == d);
}

TEST_CASE("golden files: float32 data read byte-exactly (naive vs absorbed diff = metadata)",
          "[loaders]") {
  // The metadata records max |naive - absorbed| of the decode outputs to 4 digits; reproducing
  // it from the loaded tensors shows that no byte was misread.
  for (const std::string& base : {kV2, kV3}) {
    INFO(base);
    const auto st = mla::SafeTensors::open(base + ".safetensors");
    const double diff =
        max_abs_diff(st.load("test.decode.output"), st.load("test.decode.output_absorb"));
    const double meta =
        std::stod(st.metadata().at("naive_vs_absorb_max_abs_diff").get<std::string>());
    CHECK(diff == Approx(meta).epsilon(1e-3).margin(0));
  }
}

TEST_CASE("golden v3 file: BF16 weights decode to the top half of float32", "[loaders]") {
  const auto st = mla::SafeTensors::open(kV3 + ".safetensors");
  const std::string name = "model.layers.0.self_attn.q_a_proj.weight";
  const auto& info = st.info(name);
  CHECK(info.dtype == mla::DType::BF16);
  CHECK(info.shape == std::vector<std::size_t>{96, 384});
  CHECK(info.end - info.begin == 96 * 384 * 2);
  CHECK(st.info("test.prefill.input").dtype == mla::DType::F32);
  CHECK(st.info("test.prefill.input").shape == std::vector<std::size_t>{2, 20, 384});

  // Read the same bytes independently of the loader: little-endian u16 placed in a float's top
  // half is what bfloat16 means.
  const auto raw = read_file(kV3 + ".safetensors");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | raw[i];
  const auto header = nlohmann::json::parse(raw.begin() + 8, raw.begin() + 8 + n);
  const std::size_t begin = header.at(name).at("data_offsets").at(0).get<std::size_t>();
  const std::uint8_t* data = raw.data() + 8 + n + begin;
  const auto loaded = st.load(name);
  REQUIRE(loaded.size() == 96 * 384);
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < loaded.size(); ++i) {
    const std::uint32_t b = std::uint32_t(data[2 * i]) | (std::uint32_t(data[2 * i + 1]) << 8);
    if (bits(loaded[i]) != (b << 16)) ++mismatches;
  }
  CHECK(mismatches == 0);
  // Weights with std 1/sqrt(fan_in): all finite and of the right size.
  double sq = 0;
  for (float x : loaded) sq += double(x) * x;
  CHECK(std::sqrt(sq / loaded.size()) == Approx(1.0 / std::sqrt(384.0)).epsilon(0.1));
}

// =============================================================================================
// Element types
// =============================================================================================

TEST_CASE("bf16: known values and round to nearest even", "[loaders]") {
  CHECK(mla::bf16_to_float(0x3F80) == 1.0f);
  CHECK(mla::bf16_to_float(0xC000) == -2.0f);
  CHECK(mla::bf16_to_float(0x4049) == 3.140625f);
  CHECK(mla::bf16_to_float(0x7F80) == std::numeric_limits<float>::infinity());
  CHECK(mla::bf16_to_float(0xFF80) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(mla::bf16_to_float(0x7FC0)));
  CHECK(std::signbit(mla::bf16_to_float(0x8000)));

  CHECK(mla::float_to_bf16(1.0f) == 0x3F80);
  CHECK(mla::float_to_bf16(-2.0f) == 0xC000);
  // bf16 keeps 7 mantissa bits: near 1 its step is 2^-7.
  CHECK(mla::float_to_bf16(1.0f + 0x1p-8f) == 0x3F80);             // tie -> even (down)
  CHECK(mla::float_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3F82);         // tie -> even (up)
  CHECK(mla::float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3F81);  // just above the tie
  CHECK(mla::float_to_bf16(1.0f + 0x1p-8f - 0x1p-20f) == 0x3F80);  // just below
  CHECK(mla::float_to_bf16(-(1.0f + 0x1p-8f)) == 0xBF80);
  CHECK(mla::float_to_bf16(std::numeric_limits<float>::max()) == 0x7F80);  // rounds up to inf
  CHECK(mla::float_to_bf16(std::numeric_limits<float>::infinity()) == 0x7F80);
  CHECK(std::isnan(mla::bf16_to_float(mla::float_to_bf16(std::nanf("")))));
  // A NaN whose payload sits only in the low 16 bits must not truncate to inf.
  CHECK(std::isnan(mla::bf16_to_float(mla::float_to_bf16(from_bits(0x7F800001u)))));
  CHECK(std::isnan(mla::bf16_to_float(mla::float_to_bf16(from_bits(0xFF800001u)))));

  // Every non-NaN bf16 survives the trip through float.
  std::size_t bad = 0;
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const float f = mla::bf16_to_float(std::uint16_t(b));
    if (!std::isnan(f) && mla::float_to_bf16(f) != b) ++bad;
  }
  CHECK(bad == 0);
}

TEST_CASE("f16: normals, subnormals, zeros, infinities, NaN", "[loaders]") {
  CHECK(mla::f16_to_float(0x3C00) == 1.0f);
  CHECK(mla::f16_to_float(0xC000) == -2.0f);
  CHECK(mla::f16_to_float(0x3555) == 0.333251953125f);
  CHECK(mla::f16_to_float(0x7BFF) == 65504.0f);         // largest half
  CHECK(mla::f16_to_float(0x0400) == 0x1p-14f);         // smallest normal
  CHECK(mla::f16_to_float(0x0001) == 0x1p-24f);         // smallest subnormal
  CHECK(mla::f16_to_float(0x03FF) == 1023 * 0x1p-24f);  // largest subnormal
  CHECK(mla::f16_to_float(0x8001) == -0x1p-24f);
  CHECK(mla::f16_to_float(0x0000) == 0.0f);
  CHECK(std::signbit(mla::f16_to_float(0x8000)));
  CHECK(mla::f16_to_float(0x7C00) == std::numeric_limits<float>::infinity());
  CHECK(mla::f16_to_float(0xFC00) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(mla::f16_to_float(0x7E00)));
  CHECK(std::isnan(mla::f16_to_float(0x7C01)));
  CHECK(std::isnan(mla::f16_to_float(0xFE00)));

  // float -> half, round to nearest even (step near 1 is 2^-10).
  CHECK(mla::float_to_f16(1.0f + 0x1p-11f) == 0x3C00);      // tie -> even
  CHECK(mla::float_to_f16(1.0f + 3 * 0x1p-11f) == 0x3C02);  // tie -> even
  CHECK(mla::float_to_f16(65519.0f) == 0x7BFF);
  CHECK(mla::float_to_f16(65520.0f) == 0x7C00);  // tie between 65504 and 2^16 -> inf
  CHECK(mla::float_to_f16(0x1p-25f) == 0x0000);  // tie between 0 and 2^-24 -> 0
  CHECK(mla::float_to_f16(0x1p-25f * 1.001f) == 0x0001);
  CHECK(mla::float_to_f16(3 * 0x1p-25f) == 0x0002);  // tie between 1 and 2 units -> 2
  CHECK(mla::float_to_f16(-0x1p-24f) == 0x8001);
  CHECK(mla::float_to_f16(1e-10f) == 0x0000);
  CHECK(mla::float_to_f16(-1e10f) == 0xFC00);
  CHECK(std::isnan(mla::f16_to_float(mla::float_to_f16(std::nanf("")))));

  std::size_t bad = 0;
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const float f = mla::f16_to_float(std::uint16_t(b));
    if (std::isnan(f) ? !std::isnan(mla::f16_to_float(mla::float_to_f16(f)))
                      : mla::float_to_f16(f) != b)
      ++bad;
  }
  CHECK(bad == 0);
}

TEST_CASE("writer round trip: F32 exact, BF16 and F16 rounded, metadata kept", "[loaders]") {
  const std::vector<float> v = {0.0f, -1.5f, 3.14159265f, 1e-3f, 65000.0f, -7.25e-6f};
  const auto bytes = mla::safetensors_bytes({{"a", mla::DType::F32, {2, 3}, v},
                                             {"b", mla::DType::BF16, {6}, v},
                                             {"c", mla::DType::F16, {3, 2}, v},
                                             {"s", mla::DType::F32, {}, {42.0f}},
                                             {"e", mla::DType::BF16, {0, 5}, {}}},
                                            {{"format", "pt"}});
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  CHECK(n % 8 == 0);  // the data section starts aligned
  const auto st = mla::SafeTensors::from_bytes(bytes, "mem");
  CHECK(st.names() == std::vector<std::string>{"a", "b", "c", "s", "e"});
  CHECK(st.metadata().at("format") == "pt");
  CHECK(st.load("a") == v);
  const auto b = st.load("b"), c = st.load("c");
  for (std::size_t i = 0; i < v.size(); ++i) {
    CHECK(b[i] == mla::bf16_to_float(mla::float_to_bf16(v[i])));
    CHECK(c[i] == mla::f16_to_float(mla::float_to_f16(v[i])));
    // and the rounding is as close as the format allows: 2^-8 and 2^-11 relative
    CHECK(std::fabs(b[i] - v[i]) <= std::fabs(v[i]) * 0x1p-8f);
    CHECK(std::fabs(c[i] - v[i]) <= std::fabs(v[i]) * 0x1p-11f + 0x1p-25f);
  }
  CHECK(st.load("s") == std::vector<float>{42.0f});
  // Names are free-form: any layer index works.
  const std::string deep = "model.layers.59.self_attn.kv_b_proj.weight";
  const auto layered = mla::SafeTensors::from_bytes(
      mla::safetensors_bytes({{deep, mla::DType::BF16, {2, 3}, v}}), "mem");
  CHECK(layered.load_matrix(deep, 2, 3)(1, 2) == mla::bf16_to_float(mla::float_to_bf16(v[5])));
  CHECK(st.info("s").shape.empty());
  CHECK(st.load("e").empty());
  CHECK(st.load_matrix("e", 0, 5).size() == 0);

  CHECK_THROWS_WITH(mla::safetensors_bytes({{"a", mla::DType::F32, {2, 2}, {1, 2, 3}}}),
                    Contains("needs 4 values"));
  CHECK_THROWS_WITH(
      mla::safetensors_bytes({{"a", mla::DType::F32, {1}, {1}}, {"a", mla::DType::F32, {1}, {1}}}),
      Contains("'a'"));
}

TEST_CASE("F16 tensors in a file load exactly", "[loaders]") {
  // Little-endian halves: 1, -2, 65504, smallest subnormal, -inf.
  const std::vector<std::uint8_t> data = {0x00, 0x3C, 0x00, 0xC0, 0xFF,
                                          0x7B, 0x01, 0x00, 0x00, 0xFC};
  const auto st = mla::SafeTensors::from_bytes(
      mla::raw_safetensors_bytes(R"({"h":{"dtype":"F16","shape":[5],"data_offsets":[0,10]}})",
                                 data),
      "f16.safetensors");
  const auto v = st.load("h");
  REQUIRE(v.size() == 5);
  CHECK(v[0] == 1.0f);
  CHECK(v[1] == -2.0f);
  CHECK(v[2] == 65504.0f);
  CHECK(v[3] == 0x1p-24f);
  CHECK(v[4] == -std::numeric_limits<float>::infinity());
}

// =============================================================================================
// Sharded checkpoints
// =============================================================================================

TEST_CASE("sharded checkpoint (two shards + index) loads the same tensors as the single file",
          "[loaders]") {
  const auto single = mla::SafeTensors::open(kV3 + ".safetensors");
  const auto names = single.names();
  TempDir dir;
  // Shard 1 gets the weights, shard 2 the test tensors, each in its own dtype (BF16 values are
  // exactly representable, so rewriting them is lossless).
  std::vector<mla::TensorData> part[2];
  nlohmann::json weight_map = nlohmann::json::object();
  const std::string shard_name[2] = {"model-00001-of-00002.safetensors",
                                     "model-00002-of-00002.safetensors"};
  for (const auto& n : names) {
    const int k = n.rfind("model.", 0) == 0 ? 0 : 1;
    part[k].push_back({n, single.info(n).dtype, single.info(n).shape, single.load(n)});
    weight_map[n] = shard_name[k];
  }
  REQUIRE(!part[0].empty());
  REQUIRE(!part[1].empty());
  for (int k = 0; k < 2; ++k) mla::write_safetensors(dir / shard_name[k], part[k]);
  write_text(
      dir / "model.safetensors.index.json",
      nlohmann::json{{"metadata", {{"total_size", 12345}}}, {"weight_map", weight_map}}.dump(2));

  for (const std::string& path : {dir.path.string(), dir / "model.safetensors.index.json"}) {
    INFO(path);
    const auto ck = mla::Checkpoint::open(path);
    CHECK(ck.num_files() == 2);
    CHECK(ck.metadata().at("total_size") == 12345);
    auto sorted = names;
    std::sort(sorted.begin(), sorted.end());
    CHECK(ck.names() == sorted);
    for (const auto& n : names) {
      INFO(n);
      CHECK(ck.info(n).dtype == single.info(n).dtype);
      CHECK(ck.info(n).shape == single.info(n).shape);
      CHECK(ck.load(n) == single.load(n));
    }
    CHECK(ck.file_of("test.decode.input").origin() == dir / shard_name[1]);
    const std::string q = "model.layers.0.self_attn.q_b_proj.weight";
    const bool same_matrix = ck.load_matrix(q, 288, 96) == single.load_matrix(q, 288, 96);
    CHECK(same_matrix);
    const bool same_t3 =
        ck.load_tensor3("test.decode.output") == single.load_tensor3("test.decode.output");
    CHECK(same_t3);
    CHECK_THROWS_WITH(ck.load("nope"), Contains("no tensor 'nope'"));
  }

  // A folder with a single model.safetensors, and a file path, open as one-file checkpoints.
  TempDir one;
  fs::copy_file(kV2 + ".safetensors", one / "model.safetensors");
  const auto c1 = mla::Checkpoint::open(one.path.string());
  const auto c2 = mla::Checkpoint::open(kV2 + ".safetensors");
  CHECK(c1.num_files() == 1);
  CHECK(c1.names() == c2.names());
  CHECK(c1.metadata() == c2.metadata());
  CHECK(c1.load("test.prefill.input") == c2.load("test.prefill.input"));
  TempDir empty;
  CHECK_THROWS_WITH(mla::Checkpoint::open(empty.path.string()), Contains("neither"));
}

TEST_CASE("sharded checkpoint: malformed indexes are rejected by name", "[loaders]") {
  TempDir dir;
  mla::write_safetensors(dir / "a.safetensors", {{"x", mla::DType::F32, {2}, {1, 2}}});
  const std::string index = dir / "model.safetensors.index.json";
  auto rejected = [&](const std::string& text, const std::string& what) {
    write_text(index, text);
    CHECK_THROWS_AS(mla::Checkpoint::open(index), mla::InputError);
    CHECK_THROWS_WITH(mla::Checkpoint::open(index), Contains(index) && Contains(what));
  };
  rejected(R"({"metadata": {}})", "'weight_map' is missing");
  rejected(R"({"weight_map": []})", "'weight_map' is an array, not an object");
  rejected(R"({"weight_map": {}})", "'weight_map' is empty");
  rejected(R"({"weight_map": {"x": 3}})", "not a shard file name");
  rejected(R"({"weight_map": {"x": "b.safetensors"}})", "shard 'b.safetensors' does not exist");
  rejected(R"({"weight_map": {"y": "a.safetensors"}})",
           "tensor 'y' is mapped to shard 'a.safetensors', but that file has no such tensor");
  rejected(R"({"weight_map": {"x": "/etc/a.safetensors"}})", "relative");
  rejected(R"({"weight_map": {"x": "../a.safetensors"}})", "'..'");
  rejected(R"({"weight_map": {"x": "a.safetensors", "x": "a.safetensors"}})", "names 'x' twice");
  rejected(R"({"weight_map": {"x": "a.safetensors"}, "metadata": 5})", "'metadata' is 5");
  rejected("[1, 2]", "not a JSON object");
  rejected("{\"weight_map\": ", "not well-formed JSON");
  rejected(R"({"weight_map": {"x": "a.safetensors"}, "metadata": {"total_size": 1e999}})",
           "not well-formed JSON");
  // A shard that exists but is itself malformed names the shard file.
  mla::write_bytes(dir / "c.safetensors", {1, 2, 3});
  write_text(index, R"({"weight_map": {"x": "c.safetensors"}})");
  CHECK_THROWS_WITH(mla::Checkpoint::open(index), Contains("c.safetensors") && Contains("3 bytes"));
  // And the good one opens.
  write_text(index, R"({"weight_map": {"x": "a.safetensors"}})");
  CHECK(mla::Checkpoint::open(index).load("x") == std::vector<float>{1, 2});
}

// =============================================================================================
// Malformed single files: every one is an InputError naming the file and the problem
// =============================================================================================

TEST_CASE("malformed safetensors files are rejected with a message naming the problem",
          "[loaders]") {
  auto rejected = [](const std::vector<std::uint8_t>& bytes, const std::string& what) {
    INFO("expected error containing: " << what);
    CHECK_THROWS_AS(open_and_load_all(bytes), mla::InputError);
    CHECK_THROWS_WITH(open_and_load_all(bytes), Contains("bad.safetensors") && Contains(what));
  };
  const std::string ok = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  REQUIRE_NOTHROW(open_and_load_all(one_tensor(ok, 8)));

  SECTION("too short or lying about the header length") {
    rejected({}, "0 bytes, too short");
    rejected({1, 0, 0, 0, 0, 0, 0}, "7 bytes, too short");
    rejected(with_length(1000, "{}", 10), "header length 1000 bytes but only 12 bytes follow");
    rejected(with_length(std::uint64_t(1) << 62, "{}"), "100 MB limit");
    rejected(with_length(~std::uint64_t(0), "{}"), "100 MB limit");
    rejected(with_length(0, ""), "not well-formed JSON");
  }
  SECTION("header is not a JSON object") {
    rejected(mla::raw_safetensors_bytes("{not json", {}), "header is not well-formed JSON");
    rejected(mla::raw_safetensors_bytes("[1, 2]", {}), "header is an array, not a JSON object");
    rejected(mla::raw_safetensors_bytes("42", {}), "not a JSON object");
    rejected(mla::raw_safetensors_bytes("{\"w\": 3}", {}), "tensor 'w': header entry is 3");
    rejected(mla::raw_safetensors_bytes("{\"a\": \"\xff\xfe\"}", {}), "not well-formed JSON");
    // A number beyond double's range is an out_of_range error in nlohmann, not a parse_error.
    rejected(mla::raw_safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [1e999]}})", {}),
             "not well-formed JSON");
  }
  SECTION("missing or mistyped fields") {
    rejected(one_tensor(R"({"shape":[2],"data_offsets":[0,8]})", 8),
             "tensor 'w': 'dtype' is missing");
    rejected(one_tensor(R"({"dtype":"F32","data_offsets":[0,8]})", 8),
             "tensor 'w': 'shape' is missing");
    rejected(one_tensor(R"({"dtype":"F32","shape":[2]})", 8),
             "tensor 'w': 'data_offsets' is missing");
    rejected(one_tensor(R"({"dtype":7,"shape":[2],"data_offsets":[0,8]})", 8),
             "'dtype' is 7, not a string");
    rejected(one_tensor(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})", 8),
             "'shape' is 2, not an array");
    rejected(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})", 8),
             "not two non-negative integers");
    rejected(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,9]})", 8),
             "not two non-negative integers");
    rejected(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[-1,8]})", 8),
             "not two non-negative integers");
    rejected(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8.0]})", 8),
             "not two non-negative integers");
    rejected(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":"0-8"})", 8),
             "not two non-negative integers");
  }
  SECTION("unknown dtype") {
    rejected(one_tensor(R"({"dtype":"Q7","shape":[2],"data_offsets":[0,8]})", 8),
             "tensor 'w': unknown dtype 'Q7'");
    rejected(one_tensor(R"({"dtype":"f32","shape":[2],"data_offsets":[0,8]})", 8),
             "unknown dtype 'f32'");
  }
  SECTION("bad shapes") {
    rejected(one_tensor(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", 8),
             "shape entry -2 is not a non-negative integer");
    rejected(one_tensor(R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,8]})", 8),
             "shape entry 1.5 is not a non-negative integer");
    rejected(one_tensor(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})", 8),
             "not a non-negative integer");
    rejected(one_tensor(R"({"dtype":"F32","shape":[[2]],"data_offsets":[0,8]})", 8),
             "not a non-negative integer");
    // 2^32 · 2^32 wraps to 0 in 64 bits; 2^62 · 4 bytes wraps to 0 as well.
    rejected(
        one_tensor(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]})", 0),
        "has too many elements");
    rejected(one_tensor(R"({"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]})", 0),
             "has too many elements");
    rejected(
        one_tensor(R"({"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,0]})", 0),
        "not a non-negative integer");
  }
  SECTION("offsets") {
    rejected(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})", 8),
             "data_offsets [8, 0] are reversed");
    rejected(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[4,12]})", 8),
             "run past the end of the data section (8 bytes)");
    rejected(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,4]})", 8),
             "span 4 bytes but dtype F32 x shape [2] needs 8");
    rejected(one_tensor(R"({"dtype":"BF16","shape":[2],"data_offsets":[0,8]})", 8), "needs 4");
  }
  SECTION("tensors must tile the data section: no overlap, no hole, nothing left over") {
    const std::string a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    rejected(mla::raw_safetensors_bytes(
                 "{" + a + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 std::vector<std::uint8_t>(12)),
             "tensor 'b' at data_offsets [4, 12] overlaps tensor 'a' (which ends at 8)");
    rejected(mla::raw_safetensors_bytes(
                 "{" + a + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                 std::vector<std::uint8_t>(8)),
             "overlaps tensor");
    rejected(mla::raw_safetensors_bytes(
                 "{" + a + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                 std::vector<std::uint8_t>(16)),
             "4 bytes before tensor 'b' at data_offsets [12, 16] belong to no tensor");
    rejected(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 12),
             "the last 4 bytes of the 12-byte data section belong to no tensor");
    rejected(mla::raw_safetensors_bytes("{}", std::vector<std::uint8_t>(3)), "the last 3 bytes");
    // In order of their offsets, not of the header: b before a is fine.
    REQUIRE_NOTHROW(open_and_load_all(
        mla::raw_safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
                                   R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                   std::vector<std::uint8_t>(12))));
    // An empty tensor takes no bytes and may sit where the next one begins.
    REQUIRE_NOTHROW(open_and_load_all(mla::raw_safetensors_bytes(
        "{" + a + R"(,"e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
        std::vector<std::uint8_t>(8))));
  }
  SECTION("duplicates and metadata") {
    rejected(mla::raw_safetensors_bytes("{\"w\":" + ok + ",\"w\":" + ok + "}",
                                        std::vector<std::uint8_t>(8)),
             "header names 'w' twice");
    rejected(mla::raw_safetensors_bytes(R"({"__metadata__": [1]})", {}),
             "__metadata__ is an array");
    rejected(mla::raw_safetensors_bytes(R"({"__metadata__": {"a": 1}})", {}),
             "__metadata__ field 'a' is 1, not a string");
  }
  SECTION("pathological JSON: deep nesting, an unterminated huge string") {
    const std::size_t depth = 200000;  // deeper than any recursive parser's stack would allow
    rejected(mla::raw_safetensors_bytes(
                 "{\"w\":" + std::string(depth, '[') + std::string(depth, ']') + "}", {}),
             "tensor 'w': header entry is an array, not an object");
    const auto long_string =
        mla::raw_safetensors_bytes("{\"w\":\"" + std::string(1 << 20, 'a'), {});
    rejected(long_string, "not well-formed JSON");
    try {
      open_and_load_all(long_string);
    } catch (const mla::InputError& e) {
      CHECK(std::string(e.what()).size() < 1000);  // the message quotes at most a bit of it
    }
    const std::string long_name(5000, 'n');
    rejected(mla::raw_safetensors_bytes("{\"" + long_name + "\": 1}", {}), "(5000 characters)");
  }
  SECTION("a listed dtype that is not a float is refused only when loaded") {
    const auto st = mla::SafeTensors::from_bytes(
        one_tensor(R"({"dtype":"I64","shape":[2],"data_offsets":[0,16]})", 16), "bad.safetensors");
    CHECK(st.contains("w"));
    CHECK(st.info("w").dtype == mla::DType::Other);
    CHECK(st.info("w").dtype_name == "I64");
    CHECK_THROWS_WITH(st.load("w"), Contains("bad.safetensors") && Contains("'w' has dtype I64"));
    CHECK_THROWS_WITH(st.load_vector("w", 2), Contains("dtype I64"));
    rejected(one_tensor(R"({"dtype":"I64","shape":[2],"data_offsets":[0,8]})", 8), "needs 16");
  }
}

TEST_CASE("files on disk: missing, empty, 7 bytes, a folder", "[loaders]") {
  TempDir dir;
  CHECK_THROWS_WITH(mla::SafeTensors::open(dir / "none.safetensors"),
                    Contains("none.safetensors: cannot open file"));
  mla::write_bytes(dir / "empty.safetensors", {});
  CHECK_THROWS_WITH(mla::SafeTensors::open(dir / "empty.safetensors"),
                    Contains("empty.safetensors: file has 0 bytes"));
  mla::write_bytes(dir / "seven.safetensors", {1, 2, 3, 4, 5, 6, 7});
  CHECK_THROWS_WITH(mla::SafeTensors::open(dir / "seven.safetensors"),
                    Contains("seven.safetensors: file has 7 bytes"));
  CHECK_THROWS_WITH(mla::SafeTensors::open(dir.path.string()), Contains("not a regular file"));
  // A named pipe must be refused at once, not block waiting for a writer.
  REQUIRE(::mkfifo((dir / "pipe").c_str(), 0600) == 0);
  CHECK_THROWS_WITH(mla::SafeTensors::open(dir / "pipe"), Contains("not a regular file"));
  // Moving keeps the mapping alive and valid.
  auto a = mla::SafeTensors::open(kV2 + ".safetensors");
  const auto before = a.load("test.decode.input");
  mla::SafeTensors b = std::move(a);
  CHECK(b.load("test.decode.input") == before);
}

TEST_CASE("load_matrix / load_vector / load_tensor3 check the shape and name the tensor",
          "[loaders]") {
  const auto st = mla::SafeTensors::open(kV2 + ".safetensors");
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  CHECK_THROWS_WITH(st.load_matrix(q, 256, 192),
                    Contains(kV2 + ".safetensors") && Contains("'" + q + "'") &&
                        Contains("has shape [192, 256], expected [256, 192]"));
  CHECK_THROWS_WITH(st.load_vector(q, 192), Contains("expected [192]"));
  CHECK_THROWS_WITH(st.load_tensor3(q), Contains("expected 3 dimensions"));
  CHECK_THROWS_WITH(st.load_matrix("test.prefill.input", 12, 256),
                    Contains("has shape [1, 12, 256], expected [12, 256]"));
  CHECK_THROWS_WITH(st.load("model.layers.1.self_attn.q_proj.weight"),
                    Contains("no tensor 'model.layers.1.self_attn.q_proj.weight'"));
  CHECK_THROWS_AS(st.info("x"), mla::InputError);
}

// =============================================================================================
// config.json
// =============================================================================================

TEST_CASE("golden configs load with their fields", "[loaders]") {
  const auto a = mla::MlaConfig::load(kV2 + ".config.json");
  CHECK(a.hidden_size == 256);
  CHECK(a.num_attention_heads == 4);
  CHECK(a.num_hidden_layers == 1);
  CHECK_FALSE(a.q_lora_rank.has_value());
  CHECK(a.kv_lora_rank == 64);
  CHECK(a.qk_head_dim() == 48);
  CHECK(a.v_head_dim == 32);
  CHECK(a.rope_theta == 10000.0);
  CHECK(a.rms_norm_eps == 1e-6);
  CHECK(a.max_position_embeddings == 128);
  CHECK_FALSE(a.yarn.has_value());

  const auto b = mla::MlaConfig::load(kV3 + ".config.json");
  CHECK(b.q_lora_rank == std::optional<std::size_t>(96));
  REQUIRE(b.yarn.has_value());
  CHECK(b.yarn->factor == 40.0);
  CHECK(b.yarn->original_max_position_embeddings == 32);
  CHECK(b.yarn->beta_fast == 32.0);
  CHECK(b.yarn->beta_slow == 1.0);
  CHECK(b.yarn->mscale == 0.707);
  CHECK(b.yarn->mscale_all_dim == 0.707);
}

TEST_CASE("real model configs in data/configs: DeepSeek ones load, others are refused",
          "[loaders]") {
  const std::string dir = std::string(MLA_TEST_DATA_DIR) + "/configs/";
  if (!fs::exists(dir + "DeepSeek-V3.config.json")) return;  // data/configs is optional
  const auto v2lite = mla::MlaConfig::load(dir + "DeepSeek-V2-Lite.config.json");
  CHECK(v2lite.hidden_size == 2048);
  CHECK_FALSE(v2lite.q_lora_rank.has_value());
  CHECK(v2lite.num_hidden_layers == 27);
  const auto v3 = mla::MlaConfig::load(dir + "DeepSeek-V3.config.json");
  CHECK(v3.hidden_size == 7168);
  CHECK(v3.num_attention_heads == 128);
  CHECK(v3.q_lora_rank == std::optional<std::size_t>(1536));
  CHECK(v3.kv_lora_rank == 512);
  CHECK(v3.qk_rope_head_dim == 64);
  REQUIRE(v3.yarn.has_value());
  CHECK(v3.yarn->factor == 40.0);
  CHECK(v3.yarn->original_max_position_embeddings == 4096);
  CHECK(v3.yarn->mscale_all_dim == 1.0);
  CHECK_NOTHROW(mla::MlaConfig::load(dir + "DeepSeek-V2.config.json"));
  // A model without MLA has no kv_lora_rank: refused with the field named.
  if (fs::exists(dir + "Llama-2-7b-hf.config.json"))
    CHECK_THROWS_WITH(mla::MlaConfig::load(dir + "Llama-2-7b-hf.config.json"),
                      Contains("Llama-2-7b-hf.config.json: field 'kv_lora_rank' is missing"));
}

TEST_CASE("config errors name the file and the field", "[loaders]") {
  const nlohmann::json good = mla::load_json_file(kV3 + ".config.json");
  auto rejected = [](const nlohmann::json& j, const std::string& what) {
    INFO(j.dump());
    CHECK_THROWS_AS(mla::MlaConfig::from_json(j, "cfg.json"), mla::InputError);
    CHECK_THROWS_WITH(mla::MlaConfig::from_json(j, "cfg.json"),
                      Contains("cfg.json") && Contains(what));
  };
  REQUIRE_NOTHROW(mla::MlaConfig::from_json(good, "cfg.json"));
  for (const char* f : {"hidden_size", "num_attention_heads", "num_hidden_layers", "kv_lora_rank",
                        "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                        "max_position_embeddings", "rope_theta", "rms_norm_eps", "q_lora_rank"}) {
    auto j = good;
    j.erase(f);
    rejected(j, std::string("field '") + f + "' is missing");
  }
  auto with = [&](const std::string& key, const nlohmann::json& v) {
    auto j = good;
    j[key] = v;
    return j;
  };
  rejected(with("num_attention_heads", 0), "'num_attention_heads' must be positive");
  rejected(with("hidden_size", -256), "'hidden_size' is not a non-negative integer");
  rejected(with("hidden_size", 256.5), "'hidden_size' is not an integer");
  rejected(with("hidden_size", "256"), "'hidden_size' is not");
  rejected(with("hidden_size", nlohmann::json::array({256})), "'hidden_size' is an array");
  rejected(with("kv_lora_rank", 1ull << 40), "'kv_lora_rank' = 1099511627776 is implausibly large");
  rejected(with("kv_lora_rank", 3.8e47), "'kv_lora_rank' = 3.8e+47 is implausibly large");
  rejected(with("kv_lora_rank", -1e30), "'kv_lora_rank' is not a non-negative integer");
  CHECK(mla::MlaConfig::from_json(with("kv_lora_rank", 512.0), "c").kv_lora_rank == 512);
  rejected(with("qk_rope_head_dim", 15), "'qk_rope_head_dim' must be even");
  rejected(with("q_lora_rank", 0), "'q_lora_rank' must be positive");
  rejected(with("rope_theta", 1.0), "'rope_theta' must be larger than 1");
  rejected(with("rms_norm_eps", 0), "'rms_norm_eps' must be positive");
  rejected(with("rope_scaling", 3), "'rope_scaling' is not an object");
  rejected(nlohmann::json::array(), "not a JSON object");

  auto scaling = [&](const nlohmann::json& rs) { return with("rope_scaling", rs); };
  rejected(scaling({{"type", "linear"}, {"factor", 2}}), "type 'linear' is not supported");
  rejected(scaling({{"factor", 2}}), "rope_scaling: field 'type' is missing");
  rejected(scaling({{"type", "yarn"}, {"original_max_position_embeddings", 32}}),
           "rope_scaling: field 'factor' is missing");
  rejected(scaling({{"type", "yarn"}, {"factor", 4}}),
           "field 'original_max_position_embeddings' is missing");
  rejected(scaling({{"type", "yarn"}, {"factor", 0}, {"original_max_position_embeddings", 32}}),
           "'factor' must be positive");
  rejected(scaling({{"type", "yarn"},
                    {"rope_type", "linear"},
                    {"factor", 4},
                    {"original_max_position_embeddings", 32}}),
           "'type' (yarn) and 'rope_type' (linear) disagree");
  rejected(scaling({{"type", "yarn"},
                    {"factor", 4},
                    {"original_max_position_embeddings", 32},
                    {"beta_fast", 1},
                    {"beta_slow", 1}}),
           "'beta_fast' (1.000000) must be larger than 'beta_slow'");
  rejected(scaling({{"type", "yarn"},
                    {"factor", 4},
                    {"original_max_position_embeddings", 32},
                    {"mscale", -1}}),
           "'mscale' must not be negative");

  // "rope_type" alone works, absent optional fields take YaRN's defaults, "default" means none.
  const auto y = mla::MlaConfig::from_json(
      scaling({{"rope_type", "yarn"}, {"factor", 4}, {"original_max_position_embeddings", 32}}),
      "cfg.json");
  REQUIRE(y.yarn.has_value());
  CHECK(y.yarn->factor == 4.0);
  CHECK(y.yarn->beta_fast == 32.0);
  CHECK(y.yarn->beta_slow == 1.0);
  CHECK(y.yarn->mscale == 1.0);
  CHECK(y.yarn->mscale_all_dim == 0.0);
  CHECK_FALSE(mla::MlaConfig::from_json(scaling(nullptr), "c").yarn.has_value());
  CHECK_FALSE(mla::MlaConfig::from_json(scaling({{"type", "default"}}), "c").yarn.has_value());

  // From text: JSON errors, including a number too large for a double, are InputErrors.
  CHECK(mla::MlaConfig::parse(good.dump(), "t.json").hidden_size == 384);
  CHECK_THROWS_WITH(mla::MlaConfig::parse("{\"hidden_size\": 1e999}", "t.json"),
                    Contains("t.json: not well-formed JSON"));
  CHECK_THROWS_WITH(mla::MlaConfig::parse("{", "t.json"), Contains("t.json"));

  CHECK_THROWS_WITH(mla::MlaConfig::load("/nonexistent/config.json"),
                    Contains("/nonexistent/config.json"));
}

TEST_CASE("one validator: a config made in code is held to the rules of a config.json",
          "[loaders]") {
  // The layer used to check its config with rules of its own, which let beta_fast <= beta_slow
  // through; now both go through mla::check_mla_config.
  mla::MlaConfig c = mla::ch06::make_mla_config(32, 2, std::nullopt, 16, 8, 4, 8,
                                                mla::YarnScaling{4, 16, 1, 1, 1.0, 1.0});
  CHECK_THROWS_WITH(mla::check_mla_config(c),
                    Contains("MLA config: rope_scaling: field 'beta_fast' (1.000000) must be "
                             "larger than 'beta_slow' (1.000000)"));
  CHECK_THROWS_AS(mla::ch06::NaiveMla(c, std::make_shared<const mla::ch06::MlaWeights>(), 1),
                  mla::InputError);
  c.yarn->beta_fast = 32;
  CHECK_NOTHROW(mla::check_mla_config(c));
  c.rms_norm_eps = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(mla::check_mla_config(c, "c.json"),
                    Contains("c.json: field 'rms_norm_eps' is not finite"));
}

// =============================================================================================
// One list of a layer's weights drives checking, loading, random init and saving
// =============================================================================================

TEST_CASE("for_each_weight lists each tensor of the layer once, with its checkpoint name",
          "[loaders]") {
  using mla::ch06::WeightShape;
  mla::Rng rng(71);
  for (bool q_lora : {true, false}) {
    INFO((q_lora ? "q_lora" : "q_proj"));
    const mla::MlaConfig cfg = mla::ch06::make_mla_config(
        24, 2, q_lora ? std::optional<std::size_t>(12) : std::nullopt, 16, 8, 4, 6);
    const mla::ch06::MlaWeights w = mla::ch06::random_mla_weights(cfg, rng);
    // Every listed tensor was made with the shape the list gives it; every other one is empty.
    std::vector<std::string> names;
    std::size_t floats = 0;
    mla::ch06::for_each_weight(w, cfg,
                               [&](const std::string& n, const auto& t, const WeightShape& shape) {
                                 names.push_back(n);
                                 CHECK(mla::shape_str(t) == mla::shape_str(shape));
                                 floats += t.size();
                               });
    const std::size_t all = w.q_proj.size() + w.q_a_proj.size() + w.q_a_layernorm.size() +
                            w.q_b_proj.size() + w.kv_a_proj_with_mqa.size() +
                            w.kv_a_layernorm.size() + w.kv_b_proj.size() + w.o_proj.size();
    CHECK(floats == all);
    CHECK(names.size() == (q_lora ? 7u : 5u));
    CHECK(names.back() == "self_attn.o_proj.weight");

    // with_prefix: the names a model-level list would see for layer 4.
    std::vector<std::string> prefixed;
    mla::ch06::for_each_weight(
        w, cfg,
        mla::ch06::with_prefix(
            mla::ch06::layer_prefix(4),
            [&](const std::string& n, const auto&, const WeightShape&) { prefixed.push_back(n); }));
    REQUIRE(prefixed.size() == names.size());
    for (std::size_t i = 0; i < names.size(); ++i)
      CHECK(prefixed[i] == "model.layers.4." + names[i]);

    // Saved through the list and loaded through it: the same weights, bit for bit.
    const auto ckpt = mla::Checkpoint::from_file(mla::SafeTensors::from_bytes(
        mla::safetensors_bytes(mla::ch06::mla_weight_tensors(w, cfg, 4, mla::DType::F32)),
        "w.safetensors"));
    CHECK(ckpt.names().size() == names.size());
    const mla::ch06::MlaWeights back = mla::ch06::load_mla_weights(ckpt, cfg, 4);
    mla::ch06::for_each_weight(
        back, cfg, [&](const std::string& n, const auto& t, const WeightShape&) {
          INFO(n);
          CHECK(ckpt.load("model.layers.4." + n) == std::vector<float>(t.begin(), t.end()));
        });
    CHECK(back.o_proj == w.o_proj);
    CHECK(back.kv_a_layernorm == w.kv_a_layernorm);

    // A wrong shape in memory is named by the weight's own name.
    mla::ch06::MlaWeights bad = w;
    bad.kv_b_proj = rng.normal(2 * 14, 15);
    CHECK_THROWS_WITH(mla::ch06::check_mla_weights(bad, cfg),
                      "kv_b_proj: expected shape [28, 16], found [28, 15]");
  }
}

// =============================================================================================
// Inputs the fuzzers once crashed on (tests/fuzz/regressions): now each is an InputError
// =============================================================================================

TEST_CASE("fuzzer regressions are rejected cleanly", "[loaders]") {
  const fs::path dir = fs::path(MLA_TEST_DATA_DIR) / ".." / "tests" / "fuzz" / "regressions";
  REQUIRE(fs::is_directory(dir));
  std::size_t count = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".bin") continue;
    INFO(name);
    const auto bytes = read_file(entry.path().string());
    const std::string text(bytes.begin(), bytes.end());
    ++count;
    if (name.rfind("safetensors-", 0) == 0) {
      CHECK_THROWS_AS(open_and_load_all(bytes), mla::InputError);
    } else if (name.rfind("index-", 0) == 0) {
      CHECK_THROWS_AS(mla::parse_safetensors_index(text, name), mla::InputError);
    } else if (name.rfind("config-", 0) == 0) {
      CHECK_THROWS_AS(mla::MlaConfig::parse(text, name), mla::InputError);
    } else {
      FAIL("regression file " << name << " should start with safetensors-, index- or config-");
    }
  }
  INFO(count << " regression inputs");
  CHECK(count > 0);
}
