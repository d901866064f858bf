// Chapter 9 — DeepSeek Sparse Attention: a lightning indexer picks the tokens, MLA attends to
// index_topk of them.
//
// Part 1 runs DeepSeek-V3.2-Exp's golden layer (data/golden/dsa/) and shows, for one query,
// the index score of every cached token, which ones the indexer keeps, and the dense MLA
// attention weights beside them (how much of dense attention's mass the kept tokens hold). Part 2
// is the cost of one decoded token against the context, dense and sparse, at V3.2's sizes:
// FLOPs, bytes and measured time, and where sparse starts to pay.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "07_optimized_mla/optimized_mla.hpp"
#include "09_sparse_attention/dsa_verify.hpp"
#include "09_sparse_attention/sparse_decode.hpp"
#include "mla/bench.hpp"
#include "mla/environment.hpp"
#include "mla/parallel.hpp"
#include "mla/program.hpp"
#include "mla/random.hpp"
#include "mla/table.hpp"

using namespace mla;
using namespace mla::ch09;

namespace {

// Part 1 records what dense MLA would do beside what the sparse layer does: a core that wraps
// the reference sparse core of sequence 0, keeps its own copy of the latent cache, and for the
// last query of every call computes the dense softmax weights over all visible tokens (mean over
// the H heads), as chapter 6's dense absorbed attention would.
class DenseWeightsCore final : public ch06::LatentAttention {
 public:
  DenseWeightsCore(std::unique_ptr<ch06::LatentAttention> inner, std::size_t heads, std::size_t d_c,
                   std::size_t d_r, std::shared_ptr<std::vector<float>> weights)
      : inner_(std::move(inner)), H_(heads), d_c_(d_c), d_r_(d_r), weights_(std::move(weights)) {}

  void append(const float* c_kv, const float* k_rope, std::size_t n) override {
    c_.insert(c_.end(), c_kv, c_kv + n * d_c_);
    kr_.insert(kr_.end(), k_rope, k_rope + n * d_r_);
    inner_->append(c_kv, k_rope, n);
  }

  void attend(const float* q_lat, const float* q_rope, std::size_t S, std::size_t start,
              float scale, float* out) override {
    inner_->attend(q_lat, q_rope, S, start, scale, out);
    // The last query of the call: position start + S - 1 sees T = start + S tokens.
    const std::size_t T = start + S;
    const float* ql = q_lat + (S - 1) * H_ * d_c_;
    const float* qr = q_rope + (S - 1) * H_ * d_r_;
    weights_->assign(T, 0.0f);
    std::vector<float> p(T);
    for (std::size_t h = 0; h < H_; ++h) {
      for (std::size_t t = 0; t < T; ++t) {
        p[t] = scale * (dot(ql + h * d_c_, c_.data() + t * d_c_, d_c_) +
                        dot(qr + h * d_r_, kr_.data() + t * d_r_, d_r_));
      }
      softmax_inplace(p.data(), T);
      for (std::size_t t = 0; t < T; ++t) (*weights_)[t] += p[t] / static_cast<float>(H_);
    }
  }

  std::size_t size() const override { return inner_->size(); }

 private:
  static float dot(const float* a, const float* b, std::size_t n) {
    float s = 0.0f;
    for (std::size_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
  }
  static void softmax_inplace(float* x, std::size_t n) {
    const float m = *std::max_element(x, x + n);
    float z = 0.0f;
    for (std::size_t i = 0; i < n; ++i) z += (x[i] = std::exp(x[i] - m));
    for (std::size_t i = 0; i < n; ++i) x[i] /= z;
  }

  std::unique_ptr<ch06::LatentAttention> inner_;
  std::size_t H_, d_c_, d_r_;
  std::shared_ptr<std::vector<float>> weights_;
  std::vector<float> c_, kr_;  // (T, d_c), (T, d_r): sequence 0's cache, for the dense weights
};

// Part 1: the golden layer, its last decode query: what the indexer scores and keeps, beside the
// dense attention weights. Writes ch09_selection.csv (token, index score, kept, dense weight).
void show_selection(const DsaCase& c) {
  const std::size_t B = c.prefill_input.shape(0);
  auto dense_w = std::make_shared<std::vector<float>>();
  DsaOptions opt;
  const SparseCoreFactory reference = reference_sparse_cores(SparseForm::Gathered);
  opt.cores = [&reference, dense_w](std::size_t heads, std::size_t d_c, std::size_t d_r,
                                    std::shared_ptr<const Selection> sel,
                                    std::size_t seq) -> std::unique_ptr<ch06::LatentAttention> {
    auto inner = reference(heads, d_c, d_r, std::move(sel), seq);
    if (seq != 0) return inner;
    return std::make_unique<DenseWeightsCore>(std::move(inner), heads, d_c, d_r, dense_w);
  };
  DsaLayer layer(c.config, c.weights, B, opt);
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
  // A picture, one column per cached token: the index score and the dense attention weight as
  // bar heights in 8 levels, and whether the token is kept.
  const char* ramp = " .:-=+*#";
  const auto bars_of = [&](const std::vector<float>& v) {
    const float lo = *std::min_element(v.begin(), v.end());
    const float hi = *std::max_element(v.begin(), v.end());
    std::string bars;
    for (std::size_t t = 0; t < T; ++t)
      bars += ramp[hi > lo ? static_cast<int>(7.999f * (v[t] - lo) / (hi - lo)) : 0];
    return bars;
  };
  std::string marks, axis;
  double mass_kept = 0.0;
  std::vector<float> dense_sorted(*dense_w);
  for (std::size_t t = 0; t < T; ++t) {
    marks += kept[t] ? '^' : ' ';
    axis += t % 5 == 0 ? '|' : '.';
    if (kept[t]) mass_kept += (*dense_w)[t];
  }
  // The best any K tokens could hold: the K largest dense weights.
  std::sort(dense_sorted.begin(), dense_sorted.end(), std::greater<>());
  double mass_best = 0.0;
  for (std::size_t j = 0; j < std::min(K, T); ++j) mass_best += dense_sorted[j];
  std::cout << "  sequence 0, query at position " << T - 1 << ": per cached token\n"
            << "    index score   [" << bars_of(sc) << "]\n"
            << "    dense weight  [" << bars_of(*dense_w) << "]  (dense MLA's softmax, mean of "
            << c.config.mla.num_attention_heads << " heads)\n"
            << "    kept          [" << marks << "]  (" << K << " of " << T << ")\n"
            << "    token         [" << axis << "]  (| every 5th token, from 0)\n"
            << "  dense attention mass on the kept tokens: " << fixed(100.0 * mass_kept, 1)
            << "% (the " << K << " heaviest tokens hold " << fixed(100.0 * mass_best, 1) << "%, "
            << K << " tokens at random " << fixed(100.0 * K / T, 1) << "% on average)\n";
  const std::string csv = results_dir() + "/ch09_selection.csv";
  std::ofstream f(csv);
  f << "token,index score,kept,dense weight\n";
  for (std::size_t t = 0; t < T; ++t)
    f << t << "," << sc[t] << "," << (kept[t] ? 1 : 0) << "," << (*dense_w)[t] << "\n";
  if (!f) throw std::runtime_error("cannot write " + csv);
  std::cout << "  wrote " << csv << "\n\n";
}

// Part 2: cost of one decoded token against the context, V3.2's sizes. Writes
// ch09_cost_per_token.csv: per context, FLOPs and measured ms of the dense step and of the
// sparse step's two parts (indexer; top-k + gather + attention).
void cost_table(std::size_t H, std::size_t K, std::size_t T_max, int threads, bool measure,
                std::size_t runs, std::uint64_t seed) {
  const std::size_t d_c = 512, d_r = 64, HI = 64, DI = 128;
  const double f_dense_tok = H * (2.0 * (d_c + d_r) + 2.0 * d_c);      // per cached token
  const double f_idx_tok = 2.0 * HI * DI + 2.0 * HI;                   // per cached token
  const double b_dense_tok = 4.0 * (d_c + d_r), b_idx_tok = 4.0 * DI;  // fp32 caches
  const double breakeven = K * f_dense_tok / (f_dense_tok - f_idx_tok);
  std::cout << "Part 2: one decoded token, one layer, H " << H << ", d_c 512 + 64, indexer 64 x "
            << "128, index_topk " << K << " (fp32 caches"
            << (measure ? ", measured on " + std::to_string(threads) + " thread(s), median of " +
                              std::to_string(runs) + " runs"
                        : std::string())
            << ")\n"
            << "  per cached token: dense MLA " << grouped(static_cast<long long>(f_dense_tok))
            << " FLOPs, the indexer " << grouped(static_cast<long long>(f_idx_tok)) << " ("
            << fixed(100.0 * f_idx_tok / f_dense_tok, 1) << "%); sparse pays in FLOPs beyond T = "
            << grouped(static_cast<long long>(std::ceil(breakeven))) << "\n\n";
  Table t({"context", "dense MFLOP", "sparse MFLOP", "dense MB", "sparse MB", "dense ms",
           "indexer ms", "attention ms", "sparse ms", "dense/sparse"});
  const std::string csv = results_dir() + "/ch09_cost_per_token.csv";
  std::ofstream f(csv);
  f << "context,dense MFLOP,sparse MFLOP,indexer MFLOP,dense ms,sparse ms,indexer ms,"
       "attention ms\n";
  Rng rng(seed);
  ch07::LatentCache cache(d_c, d_r), scratch(d_c, d_r);
  std::vector<float> c(d_c), r(d_r), q_lat(H * d_c), q_rope(H * d_r), out(H * d_c);
  for (float& v : q_lat) v = rng.normal();
  for (float& v : q_rope) v = rng.normal();
  std::vector<float> coef(HI, 1.0f / std::sqrt(float(HI * DI)));
  const Mat q_index = rng.normal(HI, DI);
  // The context from which on the measured sparse step beat dense at every larger one (0: it
  // lost at the largest); a noisy single win at a short context does not count.
  double first_win = 0.0;
  for (std::size_t T = 512; T <= T_max; T *= 2) {
    while (cache.size() < T) {
      for (float& v : c) v = rng.normal();
      for (float& v : r) v = rng.normal();
      cache.append(c.data(), r.data(), 1);
    }
    const std::size_t k = std::min(K, T);
    const double fd = f_dense_tok * T, fi = f_idx_tok * T, fs = fi + f_dense_tok * k;
    const double bd = b_dense_tok * T, bs = b_idx_tok * T + 3.0 * b_dense_tok * k;
    double td = 0, ti = 0, ta = 0;
    if (measure) {
      const Mat keys = rng.normal(T, DI);
      std::vector<float> scores(T);
      std::vector<std::int32_t> idx(K);
      const ch07::DecodeArgs a =
          ch07::make_decode_args(1, H, d_c, d_r, q_lat.data(), q_rope.data(),
                                 1.0f / std::sqrt(192.0f), out.data(), threads);
      const ch07::SeqRef seq{&cache, T};
      td = time_it([&] { ch07::mla_decode_best(&seq, a); }, runs, 1, 0.01).median;
      const auto indexer = [&] {
        indexer_scores_fast(keys.data(), T, DI, q_index.data(), HI, coef.data(), scores.data(),
                            threads);
      };
      ti = time_it(indexer, runs, 1, 0.01).median;
      indexer();
      ta = time_it(
               [&] {
                 select_topk_fast(scores.data(), T, K, idx.data());
                 sparse_decode_gathered(cache, idx.data(), K, T, a, scratch);
               },
               runs, 1, 0.01)
               .median;
      if (ti + ta >= td) {
        first_win = 0.0;
      } else if (first_win == 0.0) {
        first_win = double(T);
      }
    }
    const double ts = ti + ta;
    t.add({grouped(static_cast<long long>(T)), num(fd / 1e6, 4), num(fs / 1e6, 4), num(bd / 1e6, 3),
           num(bs / 1e6, 3), measure ? num(1e3 * td, 3) : "-", measure ? num(1e3 * ti, 3) : "-",
           measure ? num(1e3 * ta, 3) : "-", measure ? num(1e3 * ts, 3) : "-",
           measure ? fixed(td / ts, 2) + "x" : fixed(fd / fs, 2) + "x (FLOPs)"});
    f << T << "," << fd / 1e6 << "," << fs / 1e6 << "," << fi / 1e6 << "," << 1e3 * td << ","
      << 1e3 * ts << "," << 1e3 * ti << "," << 1e3 * ta << "\n";
  }
  t.print(std::cout);
  if (!f) throw std::runtime_error("cannot write " + csv);
  std::cout << "\n(sparse = indexer over all T keys + top-k + attention over min(index_topk, T) "
               "gathered rows; dense/sparse > 1 means sparse is faster; measured times, or the "
               "FLOP ratio with --no-timing)\n";
  if (measure) {
    if (first_win > 0.0) {
      std::cout << "measured here: sparse beat dense from T = "
                << grouped(static_cast<long long>(first_win)) << " on (FLOPs say beyond "
                << grouped(static_cast<long long>(std::ceil(breakeven))) << ")\n";
    } else {
      std::cout << "measured here: sparse did not beat dense at T = "
                << grouped(static_cast<long long>(T_max))
                << ": below a few times index_topk the attention saves little, and the indexer, "
                   "top-k and gather are extra work (FLOPs say sparse pays beyond "
                << grouped(static_cast<long long>(std::ceil(breakeven))) << ")\n";
    }
  }
  std::cout << "wrote " << csv << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Chapter 9: DeepSeek Sparse Attention. The lightning indexer picks index_topk cached "
      "tokens per query; MLA attends to those only"};
  std::string golden = data_dir() + "/golden/dsa/dsa_tiny";
  std::size_t heads = 128, topk = 2048, context_max = 32768;
  int threads = default_threads();
  std::size_t runs = 5;
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
  app.add_option("--runs", runs, "Timed runs per measurement (the median is shown)")
      ->check(CLI::Range(1, 1000))
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
    cost_table(heads, topk, context_max, threads, !no_timing, runs, seed);
    return 0;
  });
}
