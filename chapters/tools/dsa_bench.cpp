// dsa_bench: one decode step of DeepSeek Sparse Attention (chapter 9) against chapter 7's best
// dense MLA decode step, in the same run, each put against this machine's measured limits.
//
//   dsa_bench --dsa --heads 128 --context 32768 --topk 2048 --threads 2 [--json]
//
// Rows: "dense_v5" (chapter 7's mla_decode_best over all T cached tokens), then the sparse step's
// parts: "sparse_indexer" (index scores of the query against all T indexer keys, through
// ch09::indexer_scores_fast), "sparse_topk" (the k largest), "sparse_attention" (the k selected
// rows gathered into a tile: "sparse_gather"; chapter 7's kernel on that tile: "sparse_attention"),
// and "sparse_step" (all of them in a row),
// with the indexer's share. Each row: the median and the fastest of its runs.
//
// It lives in chapters/tools/ because it times chapter 7's dense kernel and chapter 9's sparse
// step side by side; mla_bench is chapter 7's program, and chapter 7 cannot include chapter 9.
// `--dsa` is accepted (and is the only mode) so that a command line written for
// `mla_bench --dsa` works here as it is.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "07_optimized_mla/kernels/roofline.hpp"
#include "07_optimized_mla/optimized_mla.hpp"
#include "09_sparse_attention/indexer.hpp"
#include "09_sparse_attention/sparse_decode.hpp"
#include "mla/bench.hpp"
#include "mla/compare.hpp"
#include "mla/parallel.hpp"
#include "mla/program.hpp"
#include "mla/random.hpp"
#include "mla/table.hpp"

using namespace mla;

namespace {

struct Options {
  std::size_t heads = 128, context = 32768, topk = 2048, d_c = 512, d_r = 64;
  std::size_t index_heads = 64, index_dim = 128;
  int threads = 0;
  bool dsa = true, json = false, quick = false;
  std::uint64_t seed = kDefaultSeed;
};

struct Row {
  std::string impl;
  double ms = 0, min_ms = 0, flops = 0, bytes = 0;
  ch07::Bound bound;
};

// One row: the median run's time (its limit computed from it) and the fastest run's.
Row make_row(const std::string& impl, const Timing& timing, double flops, double bytes,
             const ch07::MachinePeak& peak) {
  const double seconds = timing.median;
  Row r;
  r.impl = impl;
  r.ms = 1e3 * seconds;
  r.min_ms = 1e3 * timing.min;
  r.flops = flops;
  r.bytes = bytes;
  r.bound = ch07::binding_limit(flops, bytes, seconds, peak);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "One decode step of DeepSeek Sparse Attention (indexer + top-k + sparse MLA) against "
      "chapter 7's best dense MLA decode step, validated, timed, and put against this machine's "
      "limits"};
  Options o;
  app.add_flag("--dsa", o.dsa,
               "Benchmark the DSA decode step (the only mode; kept for the "
               "command line of mla_bench --dsa)");
  app.add_option("--heads", o.heads, "MLA query heads H")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--context", o.context, "Cached tokens T")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 22))
      ->capture_default_str();
  app.add_option("--topk", o.topk, "index_topk: tokens the sparse step attends to")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 22))
      ->capture_default_str();
  app.add_option("--index-heads", o.index_heads, "Indexer heads HI")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--index-dim", o.index_dim, "Indexer head size DI")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--threads", o.threads, "Threads (default: every hardware thread)")
      ->check(CLI::Range(1, 256));
  app.add_flag("--json", o.json, "One JSON object per row instead of a table");
  app.add_flag("--quick", o.quick, "A small, fast run (16 heads, 4096 tokens, top-k 512)");
  add_seed_option(app, o.seed);
  if (int rc = parse_options(app, argc, argv); rc >= 0) return rc;

  return run_program("dsa_bench", [&] {
    if (o.quick) {
      o.heads = 16;
      o.context = 4096;
      o.topk = 512;
    }
    o.threads = default_threads(o.threads);
    const std::size_t T = o.context, H = o.heads, K = std::min(o.topk, T);
    const std::size_t HI = o.index_heads, DI = o.index_dim, d_c = o.d_c, d_r = o.d_r;
    check_memory(4.0 * T * (d_c + d_r + 16 + DI + HI), "--context x (d_c + d_r + index dims)");

    // Inputs: random latents in chapter 7's tiled cache, random indexer keys and queries.
    Rng rng(o.seed);
    ch07::LatentCache cache(d_c, d_r), scratch(d_c, d_r);
    {
      std::vector<float> c(d_c), r(d_r);
      for (std::size_t t = 0; t < T; ++t) {
        for (float& v : c) v = rng.normal();
        for (float& v : r) v = rng.normal();
        cache.append(c.data(), r.data(), 1);
      }
    }
    const Mat keys = rng.normal(T, DI), q_index = rng.normal(HI, DI);
    std::vector<float> coef(HI);
    for (float& v : coef) v = rng.normal(1.0f / std::sqrt(float(HI * DI)));
    std::vector<float> q_lat(H * d_c), q_rope(H * d_r), dense_out(H * d_c), sparse_out(H * d_c);
    for (float& v : q_lat) v = rng.normal();
    for (float& v : q_rope) v = rng.normal();
    ch07::DecodeArgs a = ch07::make_decode_args(1, H, d_c, d_r, q_lat.data(), q_rope.data(),
                                                1.0f / std::sqrt(192.0f), nullptr, o.threads);
    std::vector<float> scores(T);
    std::vector<std::int32_t> idx(o.topk);

    const auto dense = [&] {
      a.out = dense_out.data();
      const ch07::SeqRef seq{&cache, T};
      ch07::mla_decode_best(&seq, a);
    };
    const auto indexer = [&] {
      ch09::indexer_scores_fast(keys.data(), T, DI, q_index.data(), HI, coef.data(), scores.data(),
                                o.threads);
    };
    const auto topk = [&] { ch09::select_topk_fast(scores.data(), T, o.topk, idx.data()); };
    // The sparse attention in its two parts, timed apart: the gather of the k selected rows
    // into a tile (memory-bound: scattered rows), and chapter 7's kernel on that tile
    // (compute-bound). The step runs both through sparse_decode_gathered.
    const auto gather = [&] {
      scratch.clear();
      scratch.append_gathered(cache, idx.data(), o.topk, o.threads);
    };
    const auto attention = [&] {
      a.out = sparse_out.data();
      const ch07::SeqRef seq{&scratch, scratch.size()};
      ch07::mla_decode_best(&seq, a);
    };
    const auto gather_and_attend = [&] {
      a.out = sparse_out.data();
      ch09::sparse_decode_gathered(cache, idx.data(), o.topk, T, a, scratch);
    };

    // Validate first (llm.c's rule): with top-k = T the sparse attention is the dense one.
    indexer();
    topk();
    {
      std::vector<std::int32_t> all(T);
      for (std::size_t t = 0; t < T; ++t) all[t] = static_cast<std::int32_t>(T - 1 - t);
      dense();
      a.out = sparse_out.data();
      ch09::sparse_decode_gathered(cache, all.data(), T, T, a, scratch);
      const Comparison cmp = compare(sparse_out, dense_out);
      if (!allclose(sparse_out, dense_out, 1e-4, 1e-3)) {
        throw std::runtime_error("sparse attention over every token differs from dense: " +
                                 cmp.describe());
      }
      if (!o.json)
        std::cout << "validated: sparse over all T tokens = dense (" << cmp.describe() << ")\n";
    }

    if (!o.json && stdout_is_terminal()) std::cerr << "measuring this machine's limits...\n";
    const ch07::MachinePeak peak = ch07::measure_peak(o.threads);
    const std::size_t runs = o.quick ? 3 : 7;
    const double min_s = o.quick ? 0.005 : 0.05;
    const Timing Td = time_it(dense, runs, 1, min_s), Ti = time_it(indexer, runs, 1, min_s);
    const Timing Tk = time_it(topk, runs, 1, min_s), Tg = time_it(gather, runs, 1, min_s);
    const Timing Ta = time_it(attention, runs, 1, min_s);  // on the tile the last gather made
    const Timing Ts = time_it(
        [&] {
          indexer();
          topk();
          gather_and_attend();
        },
        runs, 1, min_s);
    const double td = Td.median, ti = Ti.median, tk = Tk.median, tg = Tg.median, ta = Ta.median,
                 ts = Ts.median;

    // FLOPs and bytes, per chapter 7's conventions (an FMA = 2 FLOPs; the cache read once).
    ch07::MlaProblem dp;
    dp.heads = H;
    dp.context = T;
    dp.d_c = d_c;
    dp.d_r = d_r;
    ch07::MlaProblem sp = dp;
    sp.context = K;
    const double f_dense = ch07::mla_flops(dp), b_dense = ch07::mla_bytes(dp, ch07::CacheType::F32);
    const double f_idx = 2.0 * HI * DI * T + 2.0 * HI * T, b_idx = 4.0 * T * DI;
    const double f_topk = double(T), b_topk = 4.0 * T;
    // The gather reads k rows and writes them once more; the kernel reads them again.
    const double f_att = ch07::mla_flops(sp), b_att = ch07::mla_bytes(sp, ch07::CacheType::F32);
    const double f_gather = 0, b_gather = 2.0 * b_att;
    std::vector<Row> rows{make_row("dense_v5", Td, f_dense, b_dense, peak),
                          make_row("sparse_indexer", Ti, f_idx, b_idx, peak),
                          make_row("sparse_topk", Tk, f_topk, b_topk, peak),
                          make_row("sparse_gather", Tg, f_gather, b_gather, peak),
                          make_row("sparse_attention", Ta, f_att, b_att, peak),
                          make_row("sparse_step", Ts, f_idx + f_topk + f_att,
                                   b_idx + b_topk + b_gather + b_att, peak)};
    const double share = ti / (ti + tk + tg + ta);
    if (o.json) {
      for (const Row& r : rows) {
        nlohmann::json j{{"impl", r.impl},
                         {"dtype", "f32"},
                         {"heads", H},
                         {"context", T},
                         {"topk", K},
                         {"batch", 1},
                         {"threads", o.threads},
                         {"ms", r.ms},
                         {"min_ms", r.min_ms},
                         {"runs", runs},
                         {"gflops", r.flops / (r.ms * 1e6)},
                         {"gbps", r.bytes / (r.ms * 1e6)},
                         {"pct_peak", 100.0 * r.bound.fraction},
                         {"bound", r.bound.compute ? "compute" : "bandwidth"}};
        if (r.impl == "sparse_step") {
          j["indexer_share"] = share;
          j["speedup_vs_dense"] = td / ts;
        }
        std::cout << j.dump() << "\n";
      }
      return 0;
    }
    std::cout << "DSA decode step, one layer, one sequence: H " << H << ", d_c " << d_c << " + d_r "
              << d_r << ", context " << grouped(static_cast<long long>(T)) << ", top-k " << K
              << ", indexer " << HI << " x " << DI << ", " << o.threads << " thread(s)\n"
              << "machine: " << num(peak.gflops, 4) << " GFLOP/s FMA peak, " << num(peak.gbps, 4)
              << " GB/s read\n\n";
    Table t({"impl", "ms/step", "fastest ms", "GFLOP/s", "GB/s", "% of limit"});
    // Above 100% of the DRAM bandwidth the bytes came from a cache (the gather's rows, read again
    // and again by the timing loop): marked "*", said under the table, as mla_bench does.
    bool cached = false;
    for (const Row& r : rows) {
      const bool above = !r.bound.compute && r.bound.fraction > 1.0;
      cached = cached || above;
      t.add({r.impl, num(r.ms, 4), num(r.min_ms, 4), num(r.flops / (r.ms * 1e6), 4),
             num(r.bytes / (r.ms * 1e6), 4),
             fixed(100.0 * r.bound.fraction, 1) + (r.bound.compute ? "% FMA" : "% BW") +
                 (above ? "*" : "")});
    }
    t.print(std::cout);
    if (cached) std::cout << "* above 100%: the data came from a cache (L2/L3), not from DRAM\n";
    std::cout << "\n(ms/step: the median of " << runs << " runs; fastest: the quickest of them)\n";
    // Per cached token the indexer costs f_idx / T of what dense MLA costs; the attention is
    // fixed at k rows. So sparse wins in FLOPs only once T is well past k.
    const double flop_ratio = f_dense / (f_idx + f_topk + f_att);
    if (td >= ts) {
      std::cout << "sparse step vs dense: " << fixed(td / ts, 2) << "x faster (FLOPs say "
                << fixed(flop_ratio, 2) << "x)";
    } else {
      std::cout << "sparse step vs dense: " << fixed(ts / td, 2) << "x SLOWER (FLOPs say "
                << fixed(flop_ratio, 2) << "x faster): at " << grouped(static_cast<long long>(T))
                << " tokens only " << fixed(double(T) / double(K), 1)
                << "x top-k, the attention saves little while the indexer, the top-k and the "
                   "gather are extra work; sparse pays at long context (try --context 32768 "
                   "--topk 2048)";
    }
    std::cout << "; the indexer is " << fixed(100.0 * share, 1) << "% of the sparse step\n";
    return 0;
  });
}
