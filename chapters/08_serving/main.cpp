// Chapter 8 — Serving: a whole model, many sequences at once.
//
//   ch08_serving --model DIR --prompt "..." --max-new N     generate, printing as it goes
//   ch08_serving --save-random DIR [--variant mla|mha|gqa]  write a small random model folder
//   ch08_serving --quick                                    the tour: a random model, every path
#include <iostream>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "08_serving/decoder.hpp"
#include "08_serving/model.hpp"
#include "mla/cli.hpp"
#include "mla/program.hpp"

using namespace mla;
using namespace mla::ch08;

namespace {

/// The small model --save-random and --quick make: byte vocabulary, 2 layers, d_model 64.
ModelConfig small_config(const std::string& variant) {
  if (variant == "mla") {
    return make_mla_model_config(2, 128, ch06::make_mla_config(64, 4, 32, 32, 16, 8, 16));
  }
  GqaConfig g;
  g.heads = 4;
  g.kv_heads = variant == "mha" ? 4 : 2;
  g.head_dim = 16;
  return make_gqa_model_config(64, 2, 128, g);
}

/// Generate from `prompt`, printing the prompt, then each byte as it is made.
void run_prompt(const std::shared_ptr<const Model>& m, const std::string& path,
                const std::string& prompt, std::size_t max_new, const SamplingParams& sp) {
  if (prompt.size() + max_new > m->config.max_position_embeddings) {
    throw InputError("--prompt: " + std::to_string(prompt.size()) + " bytes + --max-new " +
                     std::to_string(max_new) + " exceed the model's context of " +
                     std::to_string(m->config.max_position_embeddings) + " tokens");
  }
  Decoder d(m, path);
  std::cout << prompt << std::flush;
  generate(d, encode_bytes(prompt), max_new, sp,
           [](int t) { std::cout << decode_byte(t) << std::flush; });
  std::cout << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Chapter 8: a whole model served — generation, a paged cache, batching"};
  std::string model_dir, prompt, save_dir, variant = "mla", path;
  std::size_t max_new = 32;
  SamplingParams sp;
  std::uint64_t seed = kDefaultSeed;
  bool quick = false;
  app.add_option("--model", model_dir, "Model folder: config.json + safetensors")
      ->check(CLI::ExistingDirectory);
  app.add_option("--prompt", prompt, "Text to continue (bytes are tokens)");
  app.add_option("--max-new", max_new, "Tokens to generate")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--temperature", sp.temperature, "0 = greedy")
      ->check(CLI::Range(0.0f, 100.0f))
      ->capture_default_str();
  app.add_option("--top-k", sp.top_k, "Keep the k most likely tokens (0 = all)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{1} << 20));
  app.add_option("--top-p", sp.top_p, "Nucleus: keep the most likely tokens up to probability p")
      ->check(CLI::Range(1e-6f, 1.0f));
  app.add_option("--path", path, "MLA path: naive, absorbed, fast, fast_bf16 (default fast)");
  app.add_option("--save-random", save_dir, "Write a small random model folder and stop");
  app.add_option("--variant", variant, "Attention of --save-random: mla, mha, gqa")
      ->check(CLI::IsMember({"mla", "mha", "gqa"}))
      ->capture_default_str();
  app.add_flag("--quick", quick, "The tour: a small random model, greedy tokens on every path");
  add_seed_option(app, seed);
  if (int rc = parse_options(app, argc, argv); rc >= 0) return rc;
  return run_program("ch08_serving", [&] {
    sp.seed = seed;
    if (!save_dir.empty()) {
      save_model(random_model(small_config(variant), seed), save_dir);
      std::cout << "wrote a random " << variant << " model to " << save_dir << "\n";
      return 0;
    }
    if (!model_dir.empty()) {
      // The vocabulary first: a model of another tokenizer is refused before its weights load.
      check_byte_vocabulary(ModelConfig::load(model_dir + "/config.json"),
                            model_dir + "/config.json");
      auto m = std::make_shared<const Model>(load_model(model_dir));
      if (prompt.empty()) throw InputError("--prompt: give the text to continue");
      const std::string p =
          m->config.attention == AttentionKind::MLA ? (path.empty() ? "fast" : path) : "gqa";
      run_prompt(m, p, prompt, max_new, sp);
      return 0;
    }
    {
      // Without --model: a random model. It knows no language; the point is that every path
      // makes the same tokens. (--quick: the tour's run; the sizes are small either way.)
      (void)quick;
      const auto m = std::make_shared<const Model>(random_model(small_config("mla"), seed));
      std::cout << "A random 2-layer MLA model (byte vocabulary), greedy, 16 tokens:\n";
      for (const char* p : {"naive", "absorbed", "fast"}) {
        Decoder d(m, p);
        std::cout << "  " << p << ": ";
        const auto toks = generate(d, encode_bytes("MLA, step by step"), 16, {});
        for (int t : toks) std::cout << t << " ";
        std::cout << "\n";
      }
    }
    return 0;
  });
}
