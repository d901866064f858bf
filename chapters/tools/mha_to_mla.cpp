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
  std::vector<std::size_t> ranks = {16, 32, 48, 64, 96, 128};
  std::vector<std::size_t> rope_pairs = {0, 2, 4, 8};
  std::size_t components = 1, windows = 64, window = 0;
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
  app.add_option("--rope-pairs", rope_pairs,
                 "RoPE kept on the n fastest frequency pairs of a head (0 = no RoPE at all)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{1} << 20))
      ->delimiter(',');
  app.add_option("--rope-components", components,
                 "Directions across heads that keep RoPE per kept pair (1 = one shared key's "
                 "worth, as DeepSeek's k_pe; the number of heads = exact)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--windows", windows, "Windows of the text scored, at most")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--window", window, "Bytes per window (default: the model's context)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20));
  app.add_option("--csv", csv, "Where to write the table")->capture_default_str();
  app.add_option("--save", save_dir,
                 "Write the converted model here (one rank, one --rope-pairs) for train.py "
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
    if (!save_dir.empty()) {
      if (ranks.size() != 1 || rope_pairs.size() != 1) {
        throw InputError("--save writes one model: give one --ranks and one --rope-pairs");
      }
      auto m = std::make_shared<const MlaFromMhaModel>(
          convert_mha_model(base, {ranks[0], rope_pairs[0], components}));
      save_mla_from_mha(*m, save_dir);
      std::cout << fmt::format("wrote {} (r = {}, d_rope = {}: {} floats/token/layer)\n", save_dir,
                               ranks[0], m->layers[0].rope_dim(), m->cache_floats_per_token());
      return kExitOk;
    }
    // Check every option before the long runs: the first bad one is refused at once.
    std::vector<std::shared_ptr<const MlaFromMhaModel>> models;
    for (std::size_t n : rope_pairs) {
      for (std::size_t r : ranks) {
        models.push_back(
            std::make_shared<const MlaFromMhaModel>(convert_mha_model(base, {r, n, components})));
      }
    }
    if (window == 0) window = c.max_position_embeddings;
    if (window > c.max_position_embeddings) {
      throw InputError(fmt::format("--window {} is beyond the model's context of {}", window,
                                   c.max_position_embeddings));
    }
    const std::vector<int> text = read_bytes(text_path);
    const std::size_t scored = std::min(windows, text.empty() ? 0 : (text.size() - 1) / window);
    std::cout << fmt::format("{}: {} windows of {} bytes of {} ({} predictions)\n\n", model_dir,
                             scored, window, text_path, scored * window);

    // Cache bytes: F32 over all layers, as data/models/models_quality.csv counts them.
    Table t({"attention", "r", "rope pairs", "rope dirs", "d_rope", "cache floats/token/layer",
             "cache bytes/token", "energy kept", "val bits/byte", "vs MHA", "fine-tune steps"});
    const double mha = bits_per_byte([&] { return Decoder(base, "gqa"); }, text, window, windows);
    const std::size_t mha_floats = c.cache_floats_per_token();
    auto row = [&](const std::string& kind, const std::string& r, std::size_t n, std::size_t m,
                   std::size_t dr, std::size_t floats, const std::string& energy, double bpb,
                   int steps) {
      t.add({kind, r, std::to_string(n), std::to_string(m), std::to_string(dr),
             std::to_string(floats), std::to_string(floats * 4 * L), energy, fixed(bpb, 4),
             fmt::format("{:+.4f}", bpb - mha), std::to_string(steps)});
    };
    row("mha", "-", c.gqa.head_dim / 2, c.gqa.heads, 0, mha_floats, "1", mha, 0);
    for (const auto& m : models) {
      double energy = 0;
      for (const auto& l : m->layers) energy += l.energy_kept() / static_cast<double>(L);
      const double bpb = bits_per_byte([&] { return converted_decoder(m); }, text, window, windows);
      const auto& l0 = m->layers[0];
      row("converted", std::to_string(l0.rank), m->options.rope_pairs,
          m->options.rope_pairs ? m->options.rope_components : 0, l0.rope_dim(),
          m->cache_floats_per_token(), fixed(energy, 4), bpb, 0);
      std::cerr << "." << std::flush;  // progress: a conversion and its scoring take seconds
    }
    std::cerr << "\n";
    for (const std::string& f : finetuned) {
      const nlohmann::json j = load_json_file(f);
      try {
        row("fine-tuned", std::to_string(j.at("kv_lora_rank").get<std::size_t>()),
            j.at("rope_pairs").get<std::size_t>(), j.at("rope_components").get<std::size_t>(),
            j.at("rope_dim").get<std::size_t>(),
            j.at("kv_cache_floats_per_token_per_layer").get<std::size_t>(), "-",
            j.at("val_bits_per_byte").get<double>(), j.at("steps").get<int>());
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
