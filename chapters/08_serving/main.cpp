// Chapter 8 — Serving: a whole model, many sequences at once.
//
//   ch08_serving --model DIR --prompt "..." --max-new N     generate, printing as it goes
//   ch08_serving --save-random DIR [--variant mla|mha|gqa]  write a small random model folder
//   ch08_serving --quick                                    the tour: a random model, every path,
//                                                           chapter 2's loops on data/models/mha
//   ch08_serving --model DIR --prompt "..." --compare-loops  chapter 2's loops on a real model
//   ch08_serving --model DIR --prompt "..." --attention-map  every head's weights, as CSV
#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include <unistd.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "07_optimized_mla/kernels/roofline.hpp"
#include "08_serving/bench.hpp"
#include "08_serving/decoder.hpp"
#include "08_serving/engine.hpp"
#include "08_serving/model.hpp"
#include "08_serving/scheduler.hpp"
#include "mla/cli.hpp"
#include "mla/program.hpp"
#include "mla/table.hpp"

using namespace mla;
using namespace mla::ch08;

namespace {

std::string fmt_ms(double s) {
  return std::to_string(static_cast<long long>(s * 1e3)) + " ms";
}

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

/// Generate from `prompt`, printing the prompt, then each byte as it is made (main checks that
/// prompt + max_new fit in the context).
void run_prompt(const std::shared_ptr<const Model>& m, const std::string& path,
                const std::string& prompt, std::size_t max_new, const SamplingParams& sp) {
  Decoder d(m, path);
  std::cout << prompt << std::flush;
  generate(d, encode_bytes(prompt), max_new, sp,
           [](int t) { std::cout << decode_byte(t) << std::flush; });
  std::cout << "\n";
}

/// --compare-loops: chapter 2's two greedy loops, without and with a cache, on the model.
bool run_compare_loops(const std::shared_ptr<const Model>& m, const std::string& path,
                       const std::string& prompt, std::size_t max_new) {
  const std::vector<int> p = encode_bytes(prompt);
  DecoderNextToken slow(m, path), fast(m, path);
  const std::vector<int> a = ch02::loop_recompute(slow, p, max_new);
  const std::vector<int> b = ch02::loop_cached(fast, p, max_new);
  auto text = [](const std::vector<int>& t) {
    std::string s;
    for (int x : t) s += decode_byte(x);
    return s;
  };
  std::cout << "Chapter 2's loops on " << m->config.variant() << " (path " << path << "), greedy, "
            << max_new << " tokens after \"" << prompt << "\":\n"
            << "  no cache (every step recomputes every key and value): " << prompt << text(a)
            << "\n  KV cache (prefill once, then one token per step):     " << prompt << text(b)
            << "\n  " << (a == b ? "identical tokens" : "TOKENS DIFFER") << "\n";
  return a == b;
}

/// Where one head's weight goes, averaged over the queries from the 6th byte on (the first few
/// have too few keys to choose from): the byte before, the latest space, the first byte of the
/// current word, every space; and how spread the weights are.
struct HeadSummary {
  double previous = 0, last_space = 0, word_start = 0, spaces = 0;
  double entropy = 0;  ///< of a row, over log(its keys): 0 = one key, 1 = uniform
};

HeadSummary summarize_head(const Mat& P, const std::vector<int>& t) {
  HeadSummary s;
  const std::size_t first = std::min<std::size_t>(5, t.size() - 1), n = t.size() - first;
  if (n == 0 || t.size() < 2) return s;
  std::size_t with_space = 0, in_word = 0;
  for (std::size_t i = first; i < t.size(); ++i) {
    s.previous += P(i, i - 1);
    std::size_t start = i;  // the current word's first byte
    while (start > 0 && t[start - 1] != ' ') --start;
    if (t[i] != ' ') s.word_start += P(i, start), ++in_word;
    for (std::size_t j = i + 1; j-- > 0;) {  // the latest space at or before i
      if (t[j] == ' ') {
        s.last_space += P(i, j), ++with_space;
        break;
      }
    }
    double h = 0;
    for (std::size_t j = 0; j <= i; ++j) {
      if (t[j] == ' ') s.spaces += P(i, j);
      if (P(i, j) > 0) h -= P(i, j) * std::log(double(P(i, j)));
    }
    s.entropy += h / std::log(double(i + 1));
  }
  s.previous /= n, s.spaces /= n, s.entropy /= n;
  s.last_space /= std::max<std::size_t>(with_space, 1);
  s.word_start /= std::max<std::size_t>(in_word, 1);
  return s;
}

/// --attention-map: every head's attention weights over the prompt, one CSV per layer and head,
/// and a table of where each head looks.
void run_attention_map(const Model& m, const std::string& prompt) {
  const std::vector<int> tokens = encode_bytes(prompt);
  // Row and column labels: the byte itself; a space shown as ␣, a comma (CSV cannot hold one)
  // named.
  std::vector<std::string> labels;
  for (int t : tokens) {
    labels.push_back(t == ' '   ? std::string("␣")
                     : t == ',' ? std::string("comma")
                                : decode_byte(t));
  }
  const std::string dir = results_dir();
  Table table(
      {"layer", "head", "byte before", "latest space", "word start", "all spaces", "entropy"});
  for (std::size_t l = 0; l < m.config.num_hidden_layers; ++l) {
    const std::vector<Mat> maps = attention_weights(m, tokens, l);
    for (std::size_t h = 0; h < maps.size(); ++h) {
      write_matrix_csv(
          dir + "/ch08_attention_L" + std::to_string(l) + "_h" + std::to_string(h) + ".csv", labels,
          maps[h].data());
      const HeadSummary s = summarize_head(maps[h], tokens);
      table.add({std::to_string(l), std::to_string(h), fixed(s.previous), fixed(s.last_space),
                 fixed(s.word_start), fixed(s.spaces), fixed(s.entropy)});
    }
  }
  std::cout << "Where each head of " << m.config.variant() << " looks over \"" << prompt << "\" ("
            << tokens.size()
            << " tokens): its mean weight on the byte before, the latest space, "
               "the current word's first byte, all spaces so far (queries from the 6th byte on); "
               "entropy 0 = one key, 1 = uniform\n";
  table.print(std::cout);
  std::cout << "Attention weights of every head written to " << dir
            << "/ch08_attention_L<layer>_h<head>.csv\n";
}

/// --requests: one prompt per line through the continuous batcher.
void run_requests(const std::shared_ptr<const Model>& m, const std::string& file,
                  std::size_t max_new, const SamplingParams& sp, double budget_gib, int threads) {
  std::ifstream in(file);
  if (!in) throw InputError("--requests: cannot read " + file);
  std::vector<Request> reqs;
  std::vector<std::string> prompts;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    Request r;
    r.prompt = encode_bytes(line);
    r.max_new = max_new;
    r.sampling = sp;
    r.sampling.seed = sp.seed + reqs.size();
    reqs.push_back(r);
    prompts.push_back(line);
  }
  if (reqs.empty()) throw InputError("--requests: " + file + " holds no prompt");
  const PageLayout layout = page_layout(m->config);
  BlockPool pool(layout.block_bytes(), static_cast<std::size_t>(budget_gib * double(1ull << 30)));
  Engine engine(m, layout, threads);
  Scheduler sched(engine, pool);
  const auto done = sched.run(reqs);
  for (std::size_t i = 0; i < done.size(); ++i) {
    std::string text;
    for (int t : done[i].tokens) text += decode_byte(t);
    std::cout << "[" << i + 1 << "] " << prompts[i] << text << "\n    (" << done[i].tokens.size()
              << " tokens, " << fmt_ms(done[i].seconds) << ", preempted " << done[i].preemptions
              << "x)\n";
  }
  const auto& st = sched.stats();
  std::cout << st.tokens_generated << " tokens in " << st.steps << " steps, " << fmt_ms(st.seconds)
            << "; at most " << st.max_running << " sequences at once, " << st.max_used_blocks
            << " of " << pool.capacity() << " blocks\n";
}

/// --bench: measure, model, write the CSV and the figure's script, explain the paper's number.
void run_bench_cli(const BenchOptions& o, bool json) {
  const ch07::MachinePeak peak = ch07::measure_peak(o.threads);
  if (!json) {
    std::cout << "Throughput under one KV budget (" << o.budget_gib << " GiB), context "
              << o.context << ", " << o.layers << " layers of d_model " << o.d_model
              << ", attention shaped like DeepSeek-V2-Lite (16 heads of 128; MLA d_c 512 + 64)\n"
              << "The caches are filled with random rows at the context, not prefilled from "
                 "prompts: a decode step costs the same whatever the cache holds.\n"
              << "This machine, " << o.threads << " threads: " << peak.gflops
              << " GFLOP/s FMA peak, " << peak.gbps
              << " GB/s read bandwidth (chapter 7's probes); OpenMP wait policy "
              << (std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "default")
              << "\n\n";
  }
  const auto rows = run_bench(o, peak, !json);
  const std::string dir = results_dir();
  std::ofstream csv(dir + "/ch08_throughput.csv");
  csv << "variant,dtype,batch,max_sequences,tokens_per_s,ms_per_step,predicted_ms_per_step,"
         "roofline_ms_per_step,gemm_gflops,attention_gbps\n";
  for (const auto& r : rows) {
    csv << r.variant << "," << r.dtype << "," << r.batch << "," << r.max_sequences << ","
        << r.tokens_per_s << "," << r.ms_per_step << "," << r.predicted_ms_per_step << ","
        << r.roofline_ms_per_step << "," << r.gemm_gflops << "," << r.attention_gbps << "\n";
  }
  if (!json) {
    // Every batch: the calibrated model beside the measurement (and the roofline's bound).
    std::cout << "variant   dtype  batch   ms/step  model ms  model err  roofline ms  "
                 "GEMM GFLOP/s  attn GB/s  tokens/s\n";
    for (const auto& r : rows) {
      if (r.batch == 0) continue;
      std::printf("%-8s  %-5s  %5zu  %8.2f  %8.2f  %+8.0f%%  %11.2f  %12.1f  %9.1f  %8.1f\n",
                  r.variant.c_str(), r.dtype.c_str(), r.batch, r.ms_per_step,
                  r.predicted_ms_per_step, 100 * (r.predicted_ms_per_step / r.ms_per_step - 1),
                  r.roofline_ms_per_step, r.gemm_gflops, r.attention_gbps, r.tokens_per_s);
    }
    std::cout << "\n";
  }
  // The largest batch of each variant: the JSON contract and the table.
  std::vector<BenchRow> best;
  for (const auto& r : rows) {
    if (r.batch == r.max_sequences) best.push_back(r);
  }
  for (const auto& r : best) {
    if (json) {
      nlohmann::json j = {{"variant", r.variant},
                          {"dtype", r.dtype},
                          {"cache_bytes_per_token", r.cache_bytes_per_token},
                          {"budget_bytes", r.budget_bytes},
                          {"context", r.context},
                          {"max_sequences", r.max_sequences},
                          {"tokens_per_s", r.tokens_per_s},
                          {"ms_per_step", r.ms_per_step},
                          {"predicted_ms_per_step", r.predicted_ms_per_step},
                          {"roofline_ms_per_step", r.roofline_ms_per_step},
                          {"gemm_gflops", r.gemm_gflops},
                          {"attention_gbps", r.attention_gbps},
                          {"cache", "random rows at the context (not prefilled)"}};
      std::cout << j.dump() << "\n";
    } else {
      std::cout << r.variant << " (" << r.dtype << "): " << r.cache_bytes_per_token
                << " B/token, fits " << r.max_sequences << " sequences; at that batch "
                << r.ms_per_step << " ms/step (model " << r.predicted_ms_per_step << ", "
                << std::showpos << 100 * (r.predicted_ms_per_step / r.ms_per_step - 1)
                << std::noshowpos << "%), " << r.tokens_per_s << " tokens/s\n";
    }
  }
  if (json) return;
  // The same model of the step with a datacenter GPU's published ceilings.
  // NVIDIA's H100 SXM datasheet: 989 TFLOP/s dense BF16, 3.35 TB/s HBM3. The H800 DeepSeek
  // used is, as reported, the same chip with a narrower NVLink, which one GPU's step does not use.
  const double gpu_tflops = 989, gpu_tbps = 3.35;
  std::cout << "\nThe roofline of the step with an H100/H800 SXM's published ceilings ("
            << gpu_tflops << " TFLOP/s dense BF16, " << gpu_tbps
            << " TB/s HBM3; every kernel at its ceiling), same model and budget:\n";
  double mha_gpu = 0;
  for (const auto& r : best) {
    for (const auto& cfg : bench_configs(o)) {
      const std::string v =
          cfg.variant() == "gqa" ? "gqa" + std::to_string(cfg.gqa.kv_heads) : cfg.variant();
      if (v != r.variant || r.max_sequences == 0) continue;
      const double t = predict_step_seconds_roofline(cfg, r.cache_bytes_per_token, r.max_sequences,
                                                     o.context, gpu_tflops * 1e3, gpu_tbps * 1e3);
      const double tps = double(r.max_sequences) / t;
      if (v == "mha") mha_gpu = tps;
      std::cout << "  " << v << " (" << r.dtype << "): " << tps << " tokens/s predicted"
                << (mha_gpu > 0 ? " = " + std::to_string(tps / mha_gpu) + "x MHA" : "") << "\n";
    }
  }
  std::cout << "\nDeepSeek-V2's 5.76x (arXiv 2405.04434, section 3.2.3: >50K tokens/s on 8xH800 "
               "against DeepSeek 67B's maximum) splits into:\n"
               "  MLA's cache: 60 layers x 576 numbers = 34,560 per token against 67B's 95 "
               "layers x 2 x 8 KV heads x 128 = 194,560 (GQA): 5.6x fewer numbers;\n"
               "  ~6-bit cache quantization against 16-bit (same section): 2.7x fewer bytes on "
               "top, 15x in all = the paper's 93.3% reduction (our reconstruction: the paper "
               "gives no derivation);\n"
               "  MoE: 21B activated parameters per token against 67B (the paper's abstract): "
               "3.2x fewer weight FLOPs per token;\n"
               "  FP8 weights (same section): half the weight bytes per step — but 236B total "
               "parameters still take memory the cache cannot use.\n"
               "The product of these is far above 5.76x: throughput at the largest batch is "
               "then held back by compute and by the other parts of the step.\n";
  std::cout << "\nwrote " << dir << "/ch08_throughput.csv\n";
}

}  // namespace

/// --bench on a machine with few cores: a decode step alternates between OpenBLAS's threads
/// (the products) and OpenMP's (the attention), and OpenMP's idle threads spin by default,
/// taking the cores OpenBLAS's threads need. On the 2-core machine of the README that made a step
/// 2-3x slower at small batches. The policy is read when the OpenMP runtime starts, before main,
/// so the bench runs itself again with OMP_WAIT_POLICY=passive unless the caller chose a policy.
static void rerun_with_passive_openmp(int argc, char** argv) {
  bool bench = false;
  for (int i = 1; i < argc; ++i) {
    bench = bench || std::string(argv[i]) == "--bench" || std::string(argv[i]) == "--quick";
  }
  if (!bench || std::getenv("OMP_WAIT_POLICY")) return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv);  // returns only if it failed: then run as we are
}

int main(int argc, char** argv) {
  rerun_with_passive_openmp(argc, argv);
  CLI::App app{"Chapter 8: a whole model served — generation, a paged cache, batching"};
  std::string model_dir, prompt, save_dir, variant = "mla", path;
  std::size_t max_new = 32;
  SamplingParams sp;
  std::uint64_t seed = kDefaultSeed;
  bool quick = false, compare_loops = false, attention_map = false;
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
  std::string requests;
  double budget_gib = 1.0;
  BenchOptions bo;
  bool bench = false, json = false;
  int threads = 2;
  app.add_option("--requests", requests, "A file of prompts, one a line, run through the batcher");
  app.add_option("--budget-gib", budget_gib, "KV cache budget, GiB")
      ->check(CLI::Range(1e-6, 64.0))
      ->capture_default_str();
  app.add_flag("--bench", bench, "The throughput experiment: MHA, GQA, MLA under one budget");
  app.add_flag("--json", json, "--bench: one JSON object per line per variant");
  app.add_option("--context", bo.context, "--bench: tokens cached per sequence")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--layers", bo.layers, "--bench: depth")
      ->check(CLI::Range(std::size_t{1}, std::size_t{64}))
      ->capture_default_str();
  app.add_option("--d-model", bo.d_model, "--bench: hidden size")
      ->check(CLI::Range(std::size_t{16}, std::size_t{16384}))
      ->capture_default_str();
  app.add_option("--intermediate", bo.intermediate, "--bench: MLP width")
      ->check(CLI::Range(std::size_t{1}, std::size_t{65536}))
      ->capture_default_str();
  app.add_option("--steps", bo.steps, "--bench: timed steps per batch")
      ->check(CLI::Range(std::size_t{1}, std::size_t{100}))
      ->capture_default_str();
  app.add_flag("--no-sweep", "--bench: only each variant's largest batch");
  app.add_option("--threads", threads, "Threads")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_flag("--compare-loops", compare_loops,
               "With --model and --prompt: chapter 2's greedy loops without and with a cache");
  app.add_flag("--attention-map", attention_map,
               "With --model (MHA/GQA) and --prompt: every head's attention weights as CSV");
  app.add_flag("--quick", quick, "The tour: a small random model, greedy tokens on every path");
  add_seed_option(app, seed);
  if (int rc = parse_options(app, argc, argv); rc >= 0) return rc;
  return run_program("ch08_serving", [&] {
    sp.seed = seed;
    if (bench) {
      bo.budget_gib = budget_gib;
      bo.threads = threads;
      bo.sweep = app.count("--no-sweep") == 0;
      run_bench_cli(bo, json);
      return 0;
    }
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
      const std::string p =
          m->config.attention == AttentionKind::MLA ? (path.empty() ? "fast" : path) : "gqa";
      if (!requests.empty()) {
        run_requests(m, requests, max_new, sp, budget_gib, threads);
        return 0;
      }
      if (prompt.empty()) throw InputError("--prompt: give the text to continue");
      if (attention_map) {
        run_attention_map(*m, prompt);
        return 0;
      }
      if (prompt.size() + max_new > m->config.max_position_embeddings) {
        throw InputError("--prompt: " + std::to_string(prompt.size()) + " bytes + --max-new " +
                         std::to_string(max_new) + " exceed the model's context of " +
                         std::to_string(m->config.max_position_embeddings) + " tokens");
      }
      if (compare_loops) {
        return static_cast<int>(run_compare_loops(m, p, prompt, max_new) ? kExitOk : kExitFailed);
      }
      run_prompt(m, p, prompt, max_new, sp);
      return 0;
    }
    {
      // Without --model: a random model. It knows no language; the point is that every path
      // makes the same tokens. (--quick, the tour: then a toy-sized throughput experiment.)
      const auto m = std::make_shared<const Model>(random_model(small_config("mla"), seed));
      std::cout << "A random 2-layer MLA model (byte vocabulary), greedy, 16 tokens:\n";
      for (const char* p : {"naive", "absorbed", "fast"}) {
        Decoder d(m, p);
        std::cout << "  " << p << ": ";
        const auto toks = generate(d, encode_bytes("MLA, step by step"), 16, {});
        for (int t : toks) std::cout << t << " ";
        std::cout << "\n";
      }
      if (quick && std::filesystem::exists(data_dir() + "/models/mha/model.safetensors")) {
        // The tour: chapter 2's two loops on the trained MHA model (data/models), real text.
        std::cout << "\n";
        const auto trained = std::make_shared<const Model>(load_model(data_dir() + "/models/mha"));
        if (!run_compare_loops(trained, "gqa", "In the beginning", 48)) return int(kExitFailed);
      }
      if (quick) {
        // The tour: the throughput experiment at a toy size (seconds): 1 layer of d_model 512,
        // 32 MiB of cache at context 256, each variant at its largest batch only.
        BenchOptions tiny;
        tiny.budget_gib = 1.0 / 32;
        tiny.context = 256;
        tiny.layers = 1;
        tiny.d_model = 512;
        tiny.intermediate = 512;
        tiny.steps = 2;
        tiny.threads = threads;
        tiny.sweep = false;
        std::cout << "\n";
        run_bench_cli(tiny, false);
      }
    }
    return 0;
  });
}
