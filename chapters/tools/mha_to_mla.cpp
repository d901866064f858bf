// mha_to_mla: convert the trained MHA model (data/models/mha) to MLA at several latent ranks and
// RoPE selections (chapter 4's mha_to_mla, layer by layer), run each converted model over the
// validation bytes (chapter 8's decoder) and print validation bits per byte against the cache
// per token, with no training; add the rows of fine-tunes that data/models/train.py ran
// (--finetuned). Writes the table as CSV (the figure in data/models/README.md draws it).
//
// It lives in chapters/tools/ because it joins chapter 4's algebra and chapter 8's whole model.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "08_serving/mla_from_mha.hpp"
#include "mla/json.hpp"
#include "mla/program.hpp"
#include "mla/table.hpp"

namespace {

using namespace mla;
using namespace mla::ch08;

std::vector<int> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot read the text to score");
  const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return encode_bytes(s);
}

/// "PAIRS:DIRECTIONS" -> (pairs, directions); 0:0 = no RoPE. InputError naming the option.
std::pair<std::size_t, std::size_t> parse_rope(const std::string& spec) {
  const auto colon = spec.find(':');
  std::size_t n = 0, m = 0;
  try {
    if (colon == std::string::npos) throw std::invalid_argument(spec);
    std::size_t used = 0;
    const std::string a = spec.substr(0, colon), b = spec.substr(colon + 1);
    n = std::stoul(a, &used);
    if (used != a.size() || a[0] == '-') throw std::invalid_argument(spec);
    m = std::stoul(b, &used);
    if (used != b.size() || b[0] == '-') throw std::invalid_argument(spec);
  } catch (const std::exception&) {
    throw InputError("--rope '" + spec + "': expected PAIRS:DIRECTIONS, e.g. 5:8");
  }
  if ((n == 0) != (m == 0)) {
    throw InputError("--rope '" + spec + "': 0 pairs go with 0 directions (0:0, no RoPE)");
  }
  return {n, n == 0 ? 1 : m};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Convert the trained MHA model to MLA without training: per layer, RoPE kept on the "
      "leading directions across heads of the fastest frequency pairs (one rope key shared by "
      "all heads), the rest of the keys and the values compressed jointly by a truncated SVD to "
      "a latent of rank r. Prints validation bits per byte against the cache per token for "
      "every rank and RoPE choice, and the MHA model's own, and writes them as CSV."};
  namespace fs = std::filesystem;
  std::string model_dir = (fs::path(data_dir()) / "models" / "mha").string();
  std::string text_path = (fs::path(data_dir()) / "models" / "val_excerpt.txt").string();
  std::string csv = (fs::path(results_dir()) / "mha_to_mla.csv").string();
  std::string save_dir;
  std::string calibration = (fs::path(data_dir()) / "models" / "calib_excerpt.txt").string();
  bool no_calibration = false;
  std::vector<std::size_t> ranks = {8, 16, 32, 64, 128};
  std::vector<std::string> rope_specs = {"8:8", "5:8", "4:8", "5:4", "8:1"};
  std::size_t windows = 64, window = 0;
  std::vector<std::string> finetuned;
  app.add_option("--model", model_dir, "The MHA model folder")
      ->check(CLI::ExistingDirectory)
      ->capture_default_str();
  app.add_option("--text", text_path,
                 "Bytes to score (default: the 16,385 validation bytes train.py scores)")
      ->check(CLI::ExistingFile);
  app.add_option("--ranks", ranks, "Latent ranks r")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
      ->delimiter(',');
  app.add_option("--rope", rope_specs,
                 "RoPE choices PAIRS:DIRECTIONS: RoPE kept on the PAIRS fastest frequency pairs "
                 "of a head (0..d_h/2), on the DIRECTIONS leading directions across heads of each "
                 "(1..heads; 1 = one shared key's worth as DeepSeek's k_pe, all heads = every "
                 "rotation). 0:0 = no RoPE at all")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--windows", windows, "Windows of the text scored, at most")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--window", window, "Bytes per window (default: the model's context)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  app.add_option("--calibration", calibration,
                 "Weight the SVDs by the attention inputs measured on this text (default: 16,385 "
                 "training bytes)")
      ->check(CLI::ExistingFile)
      ->capture_default_str();
  app.add_flag("--no-calibration", no_calibration,
               "Weight the SVDs by each layer's input_layernorm instead (no data)");
  app.add_option("--csv", csv, "Where to write the table")->capture_default_str();
  app.add_option("--save", save_dir,
                 "Write the converted model here (one --ranks, one --rope) for train.py "
                 "--finetune-from, and score nothing");
  app.add_option("--finetuned", finetuned,
                 "finetune.json records of train.py --finetune-from runs: rows of the table")
      ->check(CLI::ExistingFile);
  if (int rc = parse_options(app, argc, argv); rc >= 0) return rc;

  return run_program("mha_to_mla", [&] {
    auto base = std::make_shared<const Model>(load_model(model_dir));
    const ModelConfig& c = base->config;
    check_byte_vocabulary(c, model_dir);
    const std::size_t L = c.num_hidden_layers;
    std::vector<std::pair<std::size_t, std::size_t>> ropes;
    for (const std::string& spec : rope_specs) ropes.push_back(parse_rope(spec));
    // The options that need no model run are checked first.
    if (!save_dir.empty() && (ranks.size() != 1 || ropes.size() != 1)) {
      throw InputError("--save writes one model: give one --ranks and one --rope");
    }
    if (window == 0) window = c.max_position_embeddings;
    if (window > c.max_position_embeddings) {
      throw InputError(fmt::format("--window {} is beyond the model's context of {}", window,
                                   c.max_position_embeddings));
    }
    std::vector<Mat> moments;  // empty: the SVDs weight inputs by input_layernorm
    if (!no_calibration) {
      moments = attention_input_moments(*base, read_bytes(calibration), c.max_position_embeddings);
    }
    if (!save_dir.empty()) {
      auto m = std::make_shared<const MlaFromMhaModel>(
          convert_mha_model(base, {ranks[0], ropes[0].first, ropes[0].second}, moments));
      save_mla_from_mha(*m, save_dir);
      std::cout << fmt::format("wrote {} (r = {}, d_rope = {}: {} floats/token/layer)\n", save_dir,
                               ranks[0], m->layers[0].rope_dim(), m->cache_floats_per_token());
      return kExitOk;
    }
    // Check every option before the long runs: the first bad one is refused at once.
    std::vector<std::shared_ptr<const MlaFromMhaModel>> models;
    for (const auto& [n, dirs] : ropes) {
      for (std::size_t r : ranks) {
        models.push_back(std::make_shared<const MlaFromMhaModel>(
            convert_mha_model(base, {r, n, dirs}, moments)));
      }
    }
    const std::vector<int> text = read_bytes(text_path);
    const std::size_t scored = std::min(windows, text.empty() ? 0 : (text.size() - 1) / window);
    std::cout << fmt::format("{}: {} windows of {} bytes of {} ({} predictions)\n\n", model_dir,
                             scored, window, text_path, scored * window);

    // Cache bytes: F32 over all layers, as data/models/models_quality.csv counts them.
    Table t({"attention", "r", "rope pairs", "rope dirs", "d_rope", "cache floats/token/layer",
             "cache bytes/token", "SVD basis", "energy kept", "val bits/byte", "vs MHA",
             "fine-tune steps"});
    const double mha = bits_per_byte([&] { return Decoder(base, "gqa"); }, text, window, windows);
    const std::size_t mha_floats = c.cache_floats_per_token();
    auto row = [&](const std::string& kind, const std::string& r, std::size_t n, std::size_t m,
                   std::size_t dr, std::size_t floats, const std::string& basis,
                   const std::string& energy, double bpb, int steps) {
      t.add({kind, r, std::to_string(n), std::to_string(m), std::to_string(dr),
             std::to_string(floats), std::to_string(floats * 4 * L), basis, energy, fixed(bpb, 4),
             fmt::format("{:+.4f}", bpb - mha), std::to_string(steps)});
    };
    row("mha", "-", c.gqa.head_dim / 2, c.gqa.heads, 0, mha_floats, "-", "1", mha, 0);
    for (const auto& m : models) {
      double energy = 0;
      for (const auto& l : m->layers) energy += l.energy_kept() / static_cast<double>(L);
      const double bpb = bits_per_byte([&] { return converted_decoder(m); }, text, window, windows);
      const auto& l0 = m->layers[0];
      row("converted", std::to_string(l0.rank), m->options.rope_pairs,
          m->options.rope_pairs ? m->options.rope_components : 0, l0.rope_dim(),
          m->cache_floats_per_token(), m->calibrated ? "calibration" : "input_layernorm",
          fixed(energy, 4), bpb, 0);
      std::cerr << "." << std::flush;  // progress: a conversion and its scoring take seconds
    }
    std::cerr << "\n";
    for (const std::string& f : finetuned) {
      const nlohmann::json j = load_json_file(f);
      try {
        const auto& r = j.at("kv_lora_rank");  // null: the MHA model fine-tuned as it is
        row(r.is_null() ? "fine-tuned mha" : "fine-tuned",
            r.is_null() ? "-" : std::to_string(r.get<std::size_t>()),
            j.at("rope_pairs").get<std::size_t>(), j.at("rope_components").get<std::size_t>(),
            j.at("rope_dim").get<std::size_t>(),
            j.at("kv_cache_floats_per_token_per_layer").get<std::size_t>(),
            j.at("svd_basis").get<std::string>(), "-", j.at("val_bits_per_byte").get<double>(),
            j.at("steps").get<int>());
      } catch (const nlohmann::json::exception& e) {
        throw InputError(f + ": not a train.py --finetune-from record: " + e.what());
      }
    }
    t.print(std::cout);
    t.write_csv(csv);
    std::cout << "\nwrote " << csv << "\n";
    return kExitOk;
  });
}
