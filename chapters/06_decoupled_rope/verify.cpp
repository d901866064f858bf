#include "06_decoupled_rope/verify.hpp"

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join

#include "mla/bench.hpp"
#include "mla/checkpoint.hpp"
#include "mla/rows.hpp"  // shape_str

namespace mla::ch06 {

namespace fs = std::filesystem;

namespace {

constexpr const char* kConfigSuffix = ".config.json";

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

Tensor3 load_test_tensor(const Checkpoint& ckpt, const std::string& name) {
  if (!ckpt.contains(name)) {
    throw InputError(
        fmt::format("{}: no tensor '{}' (a test case needs test.prefill.input, test.decode.input, "
                    "test.prefill.output, test.decode.output)",
                    ckpt.origin(), name));
  }
  return ckpt.load_tensor3(name);
}

void expect_same_shape(const Tensor3& got, const Tensor3& want, const std::string& origin,
                       const std::string& name, const std::string& like) {
  if (got.shape() != want.shape()) {
    throw InputError(fmt::format("{}: '{}' has shape {}, expected {} (the shape of '{}')", origin,
                                 name, shape_str(got), shape_str(want), like));
  }
}

}  // namespace

std::string weights_path_for_config(const std::string& config_path) {
  if (ends_with(config_path, kConfigSuffix)) {
    return config_path.substr(0, config_path.size() - std::string(kConfigSuffix).size()) +
           ".safetensors";
  }
  return fs::path(config_path).replace_extension(".safetensors").string();
}

std::string config_path_for_weights(const std::string& weights_path) {
  return fs::path(weights_path).replace_extension(kConfigSuffix).string();
}

std::vector<CaseFiles> find_golden_cases(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw InputError(fmt::format("{}: no such folder", dir));
  std::vector<CaseFiles> cases;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (!entry.is_regular_file() || !ends_with(file, kConfigSuffix)) continue;
    CaseFiles c;
    c.name = file.substr(0, file.size() - std::string(kConfigSuffix).size());
    c.config = entry.path().string();
    c.weights = weights_path_for_config(c.config);
    if (fs::exists(c.weights)) cases.push_back(c);
  }
  if (ec) throw InputError(fmt::format("{}: cannot list the folder ({})", dir, ec.message()));
  if (cases.empty()) {
    throw InputError(
        fmt::format("{}: no test case (NAME.config.json with NAME.safetensors beside it)", dir));
  }
  std::sort(cases.begin(), cases.end(),
            [](const CaseFiles& a, const CaseFiles& b) { return a.name < b.name; });
  return cases;
}

std::vector<std::size_t> attention_layers(const Checkpoint& ckpt) {
  const std::string head = "model.layers.", tail = ".self_attn.kv_a_proj_with_mqa.weight";
  std::set<std::size_t> layers;
  for (const std::string& n : ckpt.names()) {
    if (n.size() <= head.size() + tail.size() || n.compare(0, head.size(), head) != 0 ||
        !ends_with(n, tail)) {
      continue;
    }
    const std::string digits = n.substr(head.size(), n.size() - head.size() - tail.size());
    if (digits.empty() || digits.size() > 9 ||
        !std::all_of(digits.begin(), digits.end(),
                     [](char ch) { return ch >= '0' && ch <= '9'; })) {
      continue;
    }
    layers.insert(static_cast<std::size_t>(std::stoul(digits)));
  }
  return {layers.begin(), layers.end()};
}

GoldenCase load_golden_case(const std::string& config_path, const std::string& weights_path,
                            std::optional<std::size_t> layer) {
  GoldenCase c;
  c.name = fs::path(weights_path).stem().string();
  c.config = MlaConfig::load(config_path);  // validated: mla::check_mla_config
  const Checkpoint ckpt = Checkpoint::open(weights_path);
  const std::string& origin = ckpt.origin();

  if (layer) {
    c.layer = *layer;
  } else {
    const std::vector<std::size_t> layers = attention_layers(ckpt);
    if (layers.empty()) {
      throw InputError(
          fmt::format("{}: no MLA attention layer (no tensor "
                      "'model.layers.N.self_attn.kv_a_proj_with_mqa.weight')",
                      origin));
    }
    if (layers.size() > 1) {
      throw InputError(fmt::format("{}: holds attention layers {}; choose one with --layer", origin,
                                   fmt::join(layers, ", ")));
    }
    c.layer = layers.front();
  }
  c.weights = std::make_shared<const MlaWeights>(load_mla_weights(ckpt, c.config, c.layer));

  c.prefill_input = load_test_tensor(ckpt, "test.prefill.input");
  c.decode_input = load_test_tensor(ckpt, "test.decode.input");
  c.prefill_output = load_test_tensor(ckpt, "test.prefill.output");
  c.decode_output = load_test_tensor(ckpt, "test.decode.output");
  const Tensor3& pin = c.prefill_input;
  if (pin.shape(0) == 0 || pin.shape(2) != c.config.hidden_size) {
    throw InputError(fmt::format(
        "{}: 'test.prefill.input' has shape {}, expected [batch >= 1, S, hidden_size = {}]", origin,
        shape_str(pin), c.config.hidden_size));
  }
  const Tensor3& din = c.decode_input;
  if (din.shape(0) != pin.shape(0) || din.shape(2) != pin.shape(2)) {
    throw InputError(fmt::format("{}: 'test.decode.input' has shape {}, expected [{}, N, {}]",
                                 origin, shape_str(din), pin.shape(0), pin.shape(2)));
  }
  expect_same_shape(c.prefill_output, pin, origin, "test.prefill.output", "test.prefill.input");
  expect_same_shape(c.decode_output, din, origin, "test.decode.output", "test.decode.input");

  const nlohmann::json& meta = ckpt.metadata();
  if (meta.is_object() && meta.contains("softmax_scale") && meta["softmax_scale"].is_string()) {
    try {
      c.reference_softmax_scale = std::stod(meta["softmax_scale"].get<std::string>());
    } catch (const std::exception&) {
      // Metadata is informative only; a malformed entry is ignored.
    }
  }
  return c;
}

std::vector<VerifyRow> verify_case(const GoldenCase& c, const std::vector<MlaPath>& paths,
                                   double tolerance) {
  std::vector<VerifyRow> rows;
  const std::size_t B = c.prefill_input.shape(0);
  for (const MlaPath& path : paths) {
    std::unique_ptr<MlaLayer> layer = path.make(c.config, c.weights, B);
    // Prefill: all S tokens in one call at positions 0..S-1, causal.
    double t0 = now_seconds();
    const Tensor3 pre = layer->forward(c.prefill_input);
    const double t_pre = now_seconds() - t0;
    // Decode: one token per call, each attending to everything cached so far.
    t0 = now_seconds();
    const Tensor3 dec = decode_token_by_token(*layer, c.decode_input);
    const double t_dec = now_seconds() - t0;

    const auto row = [&](const char* phase, std::size_t tokens, const Tensor3& got,
                         const Tensor3& want, double seconds) {
      VerifyRow r;
      r.case_name = c.name;
      r.path = path.name;
      r.phase = phase;
      r.tokens = tokens;
      r.cmp = compare(got, want);
      r.seconds = seconds;
      r.tolerance = std::max(tolerance, path.min_tolerance);
      r.pass = r.cmp.finite && r.cmp.max_abs <= r.tolerance;
      rows.push_back(r);
    };
    row("prefill", c.prefill_input.shape(1), pre, c.prefill_output, t_pre);
    row("decode", c.decode_input.shape(1), dec, c.decode_output, t_dec);
  }
  return rows;
}

}  // namespace mla::ch06
