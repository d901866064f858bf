// ch02_kv_cache: decoding with and without a KV cache — the same tokens, and how the time per
// step grows with the context in each case.
#include <algorithm>
#include <cstdint>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "mla/cli.hpp"

#include "02_kv_cache/kv_cache.hpp"
#include "mla/bench.hpp"
#include "mla/compare.hpp"
#include "mla/program.hpp"
#include "mla/table.hpp"

namespace {

using namespace mla::ch02;

struct Options {
  std::size_t layers = 4, d_model = 128, vocab = 512, steps = 32, prompt_len = 8;
  std::size_t min_context = 64, max_context = 2048, runs = 5;
  std::uint64_t seed = mla::kDefaultSeed;
};

// Refuse options that cannot work, or whose memory no machine has, before allocating anything.
void check_options(const Options& o) {
  if (o.min_context > o.max_context) {
    throw mla::InputError("--min-context (" + std::to_string(o.min_context) +
                          ") is larger than --max-context (" + std::to_string(o.max_context) + ")");
  }
  if (o.vocab > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    throw mla::InputError("--vocab: at most " + std::to_string(std::numeric_limits<int>::max()) +
                          " (token ids are int), got " + std::to_string(o.vocab));
  }
  // Sums in double: size_t products can wrap.
  // Weights: embed + unembed (vocab, d_model), 4 (d_model, d_model) per layer. The recompute
  // path on T tokens holds a (T, T) score matrix and a few (T, d_model) ones per layer; the
  // cached path 2 · layers · T · d_model numbers.
  const double L = static_cast<double>(o.layers), D = static_cast<double>(o.d_model);
  const double weights = 2.0 * static_cast<double>(o.vocab) * D + 4.0 * L * D * D;
  const auto run_floats = [&](double T) { return T * T + 8.0 * T * D + 2.0 * L * T * D; };
  const double T_gen = static_cast<double>(o.prompt_len) + static_cast<double>(o.steps);
  const double T_time = static_cast<double>(o.max_context) + 1.0;
  mla::check_memory(4.0 * (weights + run_floats(std::max(T_gen, T_time))),
                    "--layers " + std::to_string(o.layers) + " --d-model " +
                        std::to_string(o.d_model) + " --vocab " + std::to_string(o.vocab) +
                        " --max-context " + std::to_string(o.max_context) + " --prompt " +
                        std::to_string(o.prompt_len) + " --steps " + std::to_string(o.steps));
}

std::vector<int> random_tokens(mla::Rng& rng, std::size_t n, std::size_t vocab) {
  std::vector<int> t(n);
  for (auto& x : t) x = static_cast<int>(rng.engine()() % vocab);
  return t;
}

// Part 1: the same model and prompt, decoded both ways, must give the same tokens and hidden
// states. Returns whether they do.
bool part_same_outputs(const Options& o, const ToyDecoder& model, mla::Rng& rng) {
  std::cout << "Toy decoder: " << o.layers << " layers of single-head attention, d_model "
            << o.d_model << ", vocab " << o.vocab << " (random weights, seed " << o.seed << ")\n\n";
  const std::vector<int> prompt = random_tokens(rng, o.prompt_len, o.vocab);
  const Generation slow = generate_recompute(model, prompt, o.steps);
  const Generation fast = generate_cached(model, prompt, o.steps);
  const mla::Comparison cmp = mla::compare(fast.hidden, slow.hidden);
  const bool same_tokens = slow.tokens == fast.tokens;
  std::cout << "Generated " << o.steps << " tokens after a " << o.prompt_len
            << "-token prompt, both ways:\n  recompute:";
  for (std::size_t i = 0; i < std::min<std::size_t>(o.steps, 12); ++i)
    std::cout << " " << slow.tokens[i];
  std::cout << (o.steps > 12 ? " ..." : "") << "\n  cached:   ";
  for (std::size_t i = 0; i < std::min<std::size_t>(o.steps, 12); ++i)
    std::cout << " " << fast.tokens[i];
  std::cout << (o.steps > 12 ? " ..." : "") << "\n  tokens "
            << (same_tokens ? "identical" : "DIFFER") << "; hidden states: " << cmp.describe()
            << (cmp.max_abs <= 1e-5 ? "  (<= 1e-5: ok)" : "  (> 1e-5: FAILED)") << "\n\n";
  return same_tokens && cmp.max_abs <= 1e-5;
}

// Part 2: one decode step at growing context lengths, recomputing versus cached; the table goes
// to the terminal and to results/ch02_decode_times.csv.
void part_step_times(const Options& o, const ToyDecoder& model, mla::Rng& rng) {
  std::cout << "Time of one decode step (the step that adds token T+1), median of " << o.runs
            << " runs:\n";
  mla::Table table({"context T", "recompute ms/step", "cached ms/step", "speedup", "cache (fp32)",
                    "cache bytes"});
  // The CSV holds the same rows as plain numbers, units in the column names, for plotting.
  mla::Table csv({"context_tokens", "recompute_ms", "cached_ms", "speedup", "cache_bytes"});
  std::vector<std::size_t> contexts;
  for (std::size_t T = o.min_context; T < o.max_context; T *= 2) contexts.push_back(T);
  contexts.push_back(o.max_context);
  const bool progress = mla::stdout_is_terminal();
  for (std::size_t T : contexts) {
    if (progress) std::cerr << "  timing T = " << T << " ...\r" << std::flush;
    std::vector<int> seq = random_tokens(rng, T, o.vocab);
    const int next = static_cast<int>(rng.engine()() % o.vocab);
    // (a) recompute: the whole sequence of T+1 tokens through the stack, keep the last row.
    std::vector<int> seq1 = seq;
    seq1.push_back(next);
    const mla::Timing t_full = mla::time_it(
        [&] {
          const mla::Mat H = forward_full(model, seq1);
          mla::do_not_optimize(next_token(model, &H(T, 0)));
        },
        o.runs);
    // (b) cached: the cache already holds T tokens; run only the new one, then undo it.
    CachedDecoder dec(model);
    dec.step(seq);
    const mla::Timing t_cached = mla::time_it(
        [&] {
          const mla::Mat H = dec.step({next});
          mla::do_not_optimize(next_token(model, &H(0, 0)));
          dec.truncate(T);
        },
        o.runs);
    const std::size_t bytes = kv_cache_bytes(o.layers, T, o.d_model, sizeof(float));
    table.add({std::to_string(T), mla::fixed(t_full.median * 1e3, 3),
               mla::fixed(t_cached.median * 1e3, 4),
               mla::fixed(t_full.median / t_cached.median, 1) + "x", mla::human_bytes(bytes),
               std::to_string(bytes)});
    csv.add({std::to_string(T), mla::num(t_full.median * 1e3, 6),
             mla::num(t_cached.median * 1e3, 6), mla::num(t_full.median / t_cached.median, 6),
             std::to_string(bytes)});
  }
  if (progress) std::cerr << "                              \r" << std::flush;
  table.print(std::cout);
  std::cout << "\nRecompute does O(T·d² + T²·d) work per step, the cached step O(d² + T·d): the "
               "ratio grows with T.\nThe price is memory: 2 · layers · T · d_model numbers ("
            << o.layers << " layers x " << o.d_model << " x 2 = " << 2 * o.layers * o.d_model
            << " floats per token here).\n";
  const std::string path = mla::results_dir() + "/ch02_decode_times.csv";
  csv.write_csv(path);
  std::cout << "Timings written to " << path << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Chapter 2: autoregressive decoding with a toy decoder stack, recomputing every key and "
      "value at each step versus caching them. Checks both give the same tokens, then times one "
      "step of each at growing context lengths."};
  Options o;
  app.add_option("--layers", o.layers, "Decoder layers")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--d-model", o.d_model, "Width of the model (one head of this size)")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--vocab", o.vocab, "Vocabulary size")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--steps", o.steps, "Tokens to generate for the equality check")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--prompt", o.prompt_len, "Prompt length for the equality check")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--min-context", o.min_context, "Shortest context timed")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--max-context,--context", o.max_context,
                 "Longest context timed (contexts double from --min-context up to this)")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--runs", o.runs, "Timed runs per measurement (the median is reported)")
      ->check(mla::kPositive)
      ->capture_default_str();
  mla::add_seed_option(app, o.seed);
  if (int rc = mla::parse_options(app, argc, argv); rc >= 0) return rc;

  return mla::run_program("ch02_kv_cache", [&] {
    check_options(o);
    mla::Rng rng(o.seed);
    const ToyDecoder model = random_decoder(o.layers, o.d_model, o.vocab, rng);
    const bool same = part_same_outputs(o, model, rng);  // 1. two ways, the same outputs
    part_step_times(o, model, rng);                      // 2. and what each step costs
    return same ? mla::kExitOk : mla::kExitFailed;
  });
}
