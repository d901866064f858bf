// mla_verify: run test cases (a Hugging Face config.json + a safetensors file with the layer's
// weights and test inputs/outputs) through every path of the MLA layer and compare.
// Exit code 0: every path matches within the tolerance; 1: some path does not; 2: unusable input.
//
// It lives in chapters/tools/ because it checks every chapter's paths at once: chapter 6's naive
// and absorbed layers, chapter 7's optimized cores, and chapter 9's sparse (DSA) layers. A DSA
// case (a config with index_topk, data/golden/dsa/) runs every MLA path against its dense output
// and every DSA path, with the exact and the FP8 indexer, against its sparse outputs, selected
// index sets and index scores. A chapter never includes a later one, so a
// program that needs them all sits above them (chapters/tools/CMakeLists.txt).
#include <cmath>
#include <filesystem>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "06_decoupled_rope/verify.hpp"
#include "07_optimized_mla/fast_latent_attention.hpp"
#include "07_optimized_mla/prefill_layer.hpp"
#include "09_sparse_attention/dsa_verify.hpp"
#include "mla/json.hpp"
#include "mla/program.hpp"
#include "mla/table.hpp"

namespace {

using namespace mla::ch06;

// Every path mla_verify knows, in chapter order: chapter 6's naive and absorbed layers
// (builtin_paths), then chapter 7's optimized cores (optimized_paths: "fast", "fast_bf16"). The
// list is data: a later chapter that brings a new path appends its own list here the same way.
std::vector<MlaPath> available_paths() {
  std::vector<MlaPath> paths = builtin_paths();
  for (MlaPath& p : mla::ch07::optimized_paths()) paths.push_back(std::move(p));
  // Chapter 7's prefill modes (prefill_mha, prefill_mqa) and the switch (prefill_auto), which
  // prints the mode it chooses for each chunk.
  for (MlaPath& p : mla::ch07::prefill_paths(0, &std::cout)) paths.push_back(std::move(p));
  return paths;
}

// Chapter 9's paths: the DSA layer on its sparse attention cores.
std::vector<mla::ch09::DsaPath> available_dsa_paths() {
  return mla::ch09::dsa_paths();
}

bool is_dsa_case(const CaseFiles& files) {
  return mla::ch09::is_dsa_config(mla::load_json_file(files.config));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Check the MLA layer against test cases computed by DeepSeek's reference implementation: "
      "each case's test.prefill.input (one call, causal) then test.decode.input (token by "
      "token) through every path, compared with test.prefill.output and test.decode.output. "
      "Without --config/--weights/--golden-dir it runs every case in the project's data/golden/. "
      "Exit code 0 if all match, 1 if any does not, 2 for unusable input."};
  std::string config, weights, golden_dir;
  long long layer_arg = -1;
  double tolerance = 1e-4;
  std::vector<std::string> only;
  bool list = false;
  app.add_option("--config", config, "Hugging Face config.json of the layer (NAME.config.json)");
  app.add_option("--weights", weights,
                 "safetensors with model.layers.N.self_attn.* and test.* tensors "
                 "(default: NAME.safetensors beside NAME.config.json)");
  app.add_option("--golden-dir", golden_dir,
                 "Run every NAME.config.json + NAME.safetensors case in this folder");
  app.add_option("--layer", layer_arg,
                 "Attention layer N to test (default: the only one in the file)")
      ->check(CLI::Range(0LL, 1000000LL));
  app.add_option("--tolerance", tolerance, "Largest absolute error that passes")
      ->capture_default_str()
      ->check(
          [](const std::string& v) -> std::string {
            try {
              const double x = std::stod(v);
              return x > 0 && std::isfinite(x) ? "" : "must be a positive number, got " + v;
            } catch (const std::exception&) {
              return "must be a positive number, got " + v;
            }
          },
          "POSITIVE");
  app.add_option("--path", only, "Run only this path (repeatable); see --list-paths");
  app.add_flag("--list-paths", list, "List the paths and exit");
  if (int rc = mla::parse_options(app, argc, argv); rc >= 0) return rc;

  return mla::run_program("mla_verify", [&] {
    std::optional<std::size_t> layer;
    if (layer_arg >= 0) layer = static_cast<std::size_t>(layer_arg);
    std::vector<MlaPath> paths = available_paths();
    std::vector<mla::ch09::DsaPath> dsa_paths = available_dsa_paths();
    if (list) {
      for (const MlaPath& p : paths) std::cout << p.name << "  " << p.description << "\n";
      for (const auto& p : dsa_paths) {
        std::cout << p.name << "  " << p.description << " (DSA cases)\n";
      }
      return 0;
    }
    if (!only.empty()) {
      const std::set<std::string> wanted(only.begin(), only.end());
      std::vector<MlaPath> chosen;
      for (const MlaPath& p : paths) {
        if (wanted.count(p.name)) chosen.push_back(p);
      }
      std::vector<mla::ch09::DsaPath> chosen_dsa;
      for (const auto& p : dsa_paths) {
        if (wanted.count(p.name)) chosen_dsa.push_back(p);
      }
      for (const std::string& w : wanted) {
        bool known = false;
        for (const MlaPath& p : paths) known = known || p.name == w;
        for (const auto& p : dsa_paths) known = known || p.name == w;
        if (!known) throw mla::InputError("--path: no path named '" + w + "' (see --list-paths)");
      }
      paths = chosen;
      dsa_paths = chosen_dsa;
    }

    std::vector<CaseFiles> cases;
    if (!golden_dir.empty()) {
      if (!config.empty() || !weights.empty()) {
        throw mla::InputError("--golden-dir: give either a folder or --config/--weights, not both");
      }
      cases = find_golden_cases(golden_dir);
    } else if (!config.empty() || !weights.empty()) {
      CaseFiles c;
      c.config = config.empty() ? config_path_for_weights(weights) : config;
      c.weights = weights.empty() ? weights_path_for_config(config) : weights;
      cases.push_back(c);
    } else {
      cases = find_golden_cases(mla::data_dir() + "/golden");
      // Chapter 9's DSA cases live in their own folder (they hold more than an MLA case).
      const std::string dsa_dir = mla::data_dir() + "/golden/dsa";
      if (std::filesystem::is_directory(dsa_dir)) {
        for (const CaseFiles& c : find_golden_cases(dsa_dir)) cases.push_back(c);
      }
    }

    mla::Table table({"case", "path", "phase", "tokens", "max abs err", "max rel err", "tolerance",
                      "ms", "result"});
    mla::Table dsa_table({"case", "path", "indexer", "phase", "tokens", "max abs err", "index sets",
                          "score err", "tolerance", "ms", "result"});
    std::size_t failed = 0, rows = 0, dsa_rows = 0;
    for (const CaseFiles& files : cases) {
      std::optional<mla::ch09::DsaCase> dsa;
      if (is_dsa_case(files)) dsa = mla::ch09::load_dsa_case(files.config, files.weights, layer);
      // A DSA case checks the MLA paths on its dense output (index_topk = infinity).
      const GoldenCase c =
          dsa ? mla::ch09::dense_case(*dsa) : load_golden_case(files.config, files.weights, layer);
      // The layer is defined up to the config's context (RoPE/YaRN): refuse test inputs beyond it.
      const std::size_t tokens = c.prefill_input.shape(1) + c.decode_input.shape(1);
      if (c.config.max_position_embeddings > 0 && tokens > c.config.max_position_embeddings) {
        throw mla::InputError(files.weights + ": test.prefill.input + test.decode.input hold " +
                              std::to_string(tokens) + " tokens, more than the config's " +
                              "max_position_embeddings " +
                              std::to_string(c.config.max_position_embeddings));
      }
      const float scale = mla_softmax_scale(c.config);
      std::cout << c.name << ": layer " << c.layer << ", batch " << c.prefill_input.shape(0)
                << ", prefill " << c.prefill_input.shape(1) << " + decode "
                << c.decode_input.shape(1) << " tokens,\n  " << c.config.num_attention_heads
                << " heads, d_c " << c.config.kv_lora_rank << " + d_rope "
                << c.config.qk_rope_head_dim << ", "
                << (c.config.q_lora_rank ? "q_lora_rank " + std::to_string(*c.config.q_lora_rank)
                                         : std::string("no query compression"))
                << (yarn_active(c.config) ? ", YaRN" : "") << ", softmax scale "
                << mla::num(scale, 8);
      if (c.reference_softmax_scale) {
        std::cout << " (file says " << mla::num(*c.reference_softmax_scale, 8) << ")";
      }
      std::cout << "\n";
      for (const VerifyRow& r : verify_case(c, paths, tolerance)) {
        ++rows;
        failed += r.pass ? 0 : 1;
        table.add({r.case_name, r.path, r.phase, std::to_string(r.tokens),
                   mla::num(r.cmp.max_abs, 3), mla::num(r.cmp.max_rel, 3), mla::num(r.tolerance, 2),
                   mla::fixed(1e3 * r.seconds, 2),
                   r.pass ? "ok" : (r.cmp.finite ? "FAIL" : "FAIL (non-finite)")});
      }
      if (!dsa) continue;
      std::cout << "  DSA: index_n_heads " << dsa->config.index_n_heads << ", index_head_dim "
                << dsa->config.index_head_dim << ", index_topk " << dsa->config.index_topk << "\n";
      for (const auto& r : mla::ch09::verify_dsa_case(*dsa, dsa_paths, tolerance)) {
        ++rows;
        ++dsa_rows;
        failed += r.pass ? 0 : 1;
        dsa_table.add({r.case_name, r.path, r.variant, r.phase, std::to_string(r.tokens),
                       mla::num(r.cmp.max_abs, 3),
                       std::to_string(r.index_rows_ok) + "/" + std::to_string(r.index_rows),
                       mla::num(r.score_err, 2) + " <= " + mla::num(r.score_tolerance, 1),
                       mla::num(r.tolerance, 2), mla::fixed(1e3 * r.seconds, 2),
                       r.pass ? "ok" : (r.cmp.finite ? "FAIL" : "FAIL (non-finite)")});
      }
    }
    std::cout << "\n";
    table.print(std::cout);
    if (dsa_rows > 0) {
      std::cout << "\nDeepSeek Sparse Attention (chapter 9): outputs, selected index sets (as sets "
                   "per query) and index scores (error relative to each query's largest):\n\n";
      dsa_table.print(std::cout);
    }
    if (failed == 0) {
      std::cout << "\nAll " << rows << " results within their tolerance of the reference ("
                << mla::num(tolerance, 3) << ", or what a lossy path states).\n";
      return 0;
    }
    std::cout << "\n"
              << failed << " of " << rows
              << " results differ from the reference by more than their tolerance.\n";
    return 1;
  });
}
