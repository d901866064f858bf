// Chapter 9 — DeepSeek Sparse Attention: a lightning indexer picks the tokens, MLA attends to
// index_topk of them.
//
// Part 1 runs DeepSeek-V3.2-Exp's golden layer (data/golden/dsa/) and shows, for one query,
// the index score of every cached token and which ones the indexer keeps. Part 2
// is the cost of one decoded token against the context, dense and sparse, at V3.2's sizes:
// FLOPs, bytes and measured time, and where sparse starts to pay.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "07_optimized_mla/optimized_mla.hpp"
#include "09_sparse_attention/dsa_verify.hpp"
#include "09_sparse_attention/sparse_decode.hpp"
#include "mla/bench.hpp"
#include "mla/program.hpp"
#include "mla/random.hpp"
#include "mla/table.hpp"

using namespace mla;
using namespace mla::ch09;

namespace {

// Part 1: the golden layer, its last decode query: what the indexer scores and keeps.
void show_selection(const DsaCase& c) {
  const std::size_t B = c.prefill_input.shape(0);
  DsaLayer layer(c.config, c.weights, B);
  const auto [pre, dec] = run_prefill_decode(layer, c.prefill_input, c.decode_input);
  const std::size_t T = layer.position(), K = c.config.index_topk;
  std::cout << "Part 1: DeepSeek-V3.2-Exp's golden layer " << c.name << " (" << T
            << " tokens cached, index_topk " << K << ")\n"
            << "  exact indexer vs the reference: output max abs err "
            << num(compare(dec, c.exact.decode_output).max_abs, 3) << ", dense MLA would differ by "
            << num(compare(dec, c.decode_dense).max_abs, 3) << "\n\n";

  const std::vector<float>& sc = layer.scores()[0];  // (1, T) index scores of the last query
  const std::int32_t* picked = layer.selection().row(0, 0);
  std::vector<bool> kept(T, false);
  for (std::size_t j = 0; j < K; ++j) {
    if (picked[j] >= 0) kept[picked[j]] = true;
  }
  // A picture, one column per cached token: the index score as a bar height in 8 levels, and
  // whether the token is kept.
  const char* ramp = " .:-=+*#";
  float lo = *std::min_element(sc.begin(), sc.end()), hi = *std::max_element(sc.begin(), sc.end());
  std::string bars, marks, axis;
  for (std::size_t t = 0; t < T; ++t) {
    const int level = hi > lo ? static_cast<int>(7.999f * (sc[t] - lo) / (hi - lo)) : 0;
    bars += ramp[level];
    marks += kept[t] ? '^' : ' ';
    axis += t % 5 == 0 ? '|' : '.';
  }
  std::cout << "  sequence 0, query at position " << T - 1 << ": index score per cached token\n"
            << "    score  [" << bars << "]\n"
            << "    kept   [" << marks << "]  (" << K << " of " << T << ")\n"
            << "    token  [" << axis << "]  (| every 5th token, from 0)\n\n";
}

// Part 2: cost of one decoded token against the context, V3.2's sizes.
void cost_table(std::size_t H, std::size_t K, std::size_t T_max, int threads, bool measure,
                std::uint64_t seed) {
  const std::size_t d_c = 512, d_r = 64, HI = 64, DI = 128;
  const double f_dense_tok = H * (2.0 * (d_c + d_r) + 2.0 * d_c);      // per cached token
  const double f_idx_tok = 2.0 * HI * DI + 2.0 * HI;                   // per cached token
  const double b_dense_tok = 4.0 * (d_c + d_r), b_idx_tok = 4.0 * DI;  // fp32 caches
  const double breakeven = K * f_dense_tok / (f_dense_tok - f_idx_tok);
  std::cout << "Part 2: one decoded token, one layer, H " << H << ", d_c 512 + 64, indexer 64 x "
            << "128, index_topk " << K << " (fp32 caches" << (measure ? ", measured on " : "")
            << (measure ? std::to_string(threads) + " thread(s)" : std::string()) << ")\n"
            << "  per cached token: dense MLA " << grouped(static_cast<long long>(f_dense_tok))
            << " FLOPs, the indexer " << grouped(static_cast<long long>(f_idx_tok)) << " ("
            << fixed(100.0 * f_idx_tok / f_dense_tok, 1) << "%); sparse pays in FLOPs beyond T = "
            << grouped(static_cast<long long>(std::ceil(breakeven))) << "\n\n";
  Table t({"context", "dense MFLOP", "sparse MFLOP", "dense MB", "sparse MB", "dense ms",
           "sparse ms", "sparse/dense"});
  Rng rng(seed);
  ch07::LatentCache cache(d_c, d_r), scratch(d_c, d_r);
  std::vector<float> c(d_c), r(d_r), q_lat(H * d_c), q_rope(H * d_r), out(H * d_c);
  for (float& v : q_lat) v = rng.normal();
  for (float& v : q_rope) v = rng.normal();
  std::vector<float> coef(HI, 1.0f / std::sqrt(float(HI * DI)));
  const Mat q_index = rng.normal(HI, DI);
  for (std::size_t T = 512; T <= T_max; T *= 2) {
    while (cache.size() < T) {
      for (float& v : c) v = rng.normal();
      for (float& v : r) v = rng.normal();
      cache.append(c.data(), r.data(), 1);
    }
    const std::size_t k = std::min(K, T);
    const double fd = f_dense_tok * T, fs = f_idx_tok * T + f_dense_tok * k;
    const double bd = b_dense_tok * T, bs = b_idx_tok * T + 3.0 * b_dense_tok * k;
    std::string dms = "-", sms = "-", ratio = fixed(fs / fd, 3);
    if (measure) {
      const Mat keys = rng.normal(T, DI);
      Mat work;
      std::vector<float> scores(T);
      std::vector<std::int32_t> idx(K);
      ch07::DecodeArgs a;
      a.heads = H;
      a.d_c = d_c;
      a.d_r = d_r;
      a.q_lat = q_lat.data();
      a.q_rope = q_rope.data();
      a.scale = 1.0f / std::sqrt(192.0f);
      a.out = out.data();
      a.threads = threads;
      const ch07::SeqRef seq{&cache, T};
      const double td = time_it([&] { ch07::mla_decode_best(&seq, a); }, 3, 1, 0.01).median;
      const double ts = time_it(
                            [&] {
                              indexer_scores_gemm(keys, q_index, coef.data(), work, scores.data());
                              select_topk_fast(scores.data(), T, K, idx.data());
                              sparse_decode_gathered(cache, idx.data(), K, T, a, scratch);
                            },
                            3, 1, 0.01)
                            .median;
      dms = num(1e3 * td, 3);
      sms = num(1e3 * ts, 3);
      ratio = fixed(ts / td, 3);
    }
    t.add({grouped(static_cast<long long>(T)), num(fd / 1e6, 4), num(fs / 1e6, 4), num(bd / 1e6, 3),
           num(bs / 1e6, 3), dms, sms, ratio});
  }
  t.print(std::cout);
  std::cout << "\n(sparse = indexer over all T keys + top-k + attention over min(index_topk, T) "
               "gathered rows; sparse/dense is the time ratio when measured, else the FLOP "
               "ratio)\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Chapter 9: DeepSeek Sparse Attention. The lightning indexer picks index_topk cached "
      "tokens per query; MLA attends to those only"};
  std::string golden = data_dir() + "/golden/dsa/dsa_tiny";
  std::size_t heads = 128, topk = 2048, context_max = 32768;
  int threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  bool quick = false, no_timing = false;
  std::uint64_t seed = kDefaultSeed;
  app.add_option("--case", golden, "DSA case NAME (NAME.config.json + NAME.safetensors)")
      ->capture_default_str();
  app.add_option("--heads", heads, "MLA heads in the cost table")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--topk", topk, "index_topk in the cost table")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--context-max", context_max, "Largest context in the cost table (from 512, x2)")
      ->check(CLI::Range(std::size_t{512}, std::size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--threads", threads, "Threads for the timed kernels")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_flag("--no-timing", no_timing, "Only FLOPs and bytes in the cost table");
  app.add_flag("--quick", quick, "Small sizes for the tour (16 heads, top-k 512, up to 4096)");
  add_seed_option(app, seed);
  if (int rc = parse_options(app, argc, argv); rc >= 0) return rc;
  return run_program("ch09_sparse_attention", [&] {
    if (quick) {
      heads = 16;
      topk = 512;
      context_max = 4096;
    }
    const DsaCase c = load_dsa_case(golden + ".config.json", golden + ".safetensors");
    show_selection(c);
    check_memory(4.0 * context_max * (576 + 16 + 128 + 64) * 2, "--context-max");
    cost_table(heads, topk, context_max, threads, !no_timing, seed);
    return 0;
  });
}
