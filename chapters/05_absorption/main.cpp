// ch05_absorption: attention straight against the latent cache. Checks that the absorbed layer
// computes what chapter 4's does, times a decode step both ways across context lengths (with the
// FLOPs and bytes each moves), and shows the price of absorption: for a long chunk of queries
// (prefill) decompressing K and V once is cheaper.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "mla/cli.hpp"

#include "04_low_rank_latents/latent.hpp"
#include "05_absorption/absorption.hpp"
#include "mla/bench.hpp"
#include "mla/compare.hpp"
#include "mla/program.hpp"
#include "mla/random.hpp"
#include "mla/table.hpp"

#include <xtensor/xview.hpp>

namespace {

using mla::Mat;
using namespace mla::ch05;
using mla::ch04::LatentDecoder;
using mla::ch04::LatentShape;
using mla::ch04::LatentWeights;

// Equality: every element within kAtol·max|ref| + kRtol·|ref| of chapter 4's result. The
// absolute part is relative to the output's scale, because a float32 sum of hundreds of terms
// in a different order can leave a near-zero element with a large *elementwise* relative error.
constexpr double kAtol = 1e-5, kRtol = 1e-5;

double max_abs(const Mat& a) {
  double m = 0;
  for (float v : a) m = std::max(m, double(std::fabs(v)));
  return m;
}

bool report(const char* what, const Mat& a, const Mat& ref) {
  const mla::Comparison c = mla::compare(a, ref);
  const double scale = max_abs(ref);
  const double normwise = c.max_abs / std::max(scale, 1e-30);
  const bool ok = c.finite && mla::allclose(a, ref, kAtol * scale, kRtol);
  std::cout << "  " << what << ": " << c.describe() << ", max abs / max|ref| "
            << mla::num(normwise, 3) << "  -> " << (ok ? "equal" : "MISMATCH") << "\n";
  return ok;
}

Mat rows(const Mat& m, std::size_t r0, std::size_t r1) {
  return xt::view(m, xt::range(r0, r1), xt::all());
}

void progress(const std::string& what) {
  if (mla::stdout_is_terminal())
    std::cerr << "\r  timing " << what << "...            " << std::flush;
}

void progress_done() {
  if (mla::stdout_is_terminal()) std::cerr << "\r" << std::string(60, ' ') << "\r" << std::flush;
}

// Time `decoder.step(x)` on a cache of `prefix` tokens, rolling the cache back after each call.
// No separate warm-up: time_it's calibration call warms the caches and the allocator.
template <class Decoder>
mla::Timing time_step(Decoder& decoder, const Mat& x, std::size_t prefix, std::size_t runs) {
  return mla::time_it(
      [&] {
        const Mat y = decoder.step(x);
        mla::do_not_optimize(y.data()[0]);
        decoder.truncate(prefix);
      },
      runs, 0);
}

// Time the attention part alone (decoder.attend_cached(q)): what absorption changes.
template <class Decoder>
mla::Timing time_attention(Decoder& decoder, const Mat& q, std::size_t runs) {
  return mla::time_it(
      [&] {
        const Mat o = decoder.attend_cached(q);
        mla::do_not_optimize(o.data()[0]);
      },
      runs, 0);
}

struct Options {
  std::size_t d_model = 2048, heads = 16, head_dim = 128, d_c = 512;
  std::vector<std::size_t> contexts, chunks;  // empty: the defaults (fill_defaults)
  std::size_t prefill_context = 0, runs = 0;  // 0: the defaults
  bool quick = false;
  std::uint64_t seed = mla::kDefaultSeed;

  std::size_t prefill_runs = 0;  // runs of a prefill chunk (filled in by check_options)
  std::size_t max_T = 0;         // the longest context of either benchmark (likewise)
  LatentShape shape() const { return {d_model, heads, head_dim, head_dim, d_c}; }
};

// Fill in the defaults (which depend on --quick), then refuse options that cannot work or whose
// memory no machine has, before allocating anything.
void check_options(Options& o) {
  if (o.contexts.empty()) {
    o.contexts = o.quick ? std::vector<std::size_t>{256, 1024}
                         : std::vector<std::size_t>{256, 512, 1024, 2048, 4096};
  }
  if (o.prefill_context == 0) o.prefill_context = o.quick ? 256 : 1024;
  if (o.runs == 0) o.runs = o.quick ? 3 : 5;
  o.prefill_runs = o.quick ? 1 : o.runs;
  if (o.chunks.empty()) {
    o.chunks.push_back(1);
    for (std::size_t s = 16; s <= o.prefill_context; s *= 2) o.chunks.push_back(s);
    if (o.chunks.back() != o.prefill_context) o.chunks.push_back(o.prefill_context);
  }
  for (std::size_t s : o.chunks) {
    if (s > o.prefill_context) {
      throw mla::InputError("--chunks: " + std::to_string(s) +
                            " is longer than the prefill context " +
                            std::to_string(o.prefill_context));
    }
  }
  o.max_T = std::max(*std::max_element(o.contexts.begin(), o.contexts.end()), o.prefill_context);
  // Weights, the rebuilt K/V workspace and the biggest score block dominate memory.
  const double weights = double(o.d_model) * o.heads * o.head_dim * 2 + double(o.d_c) * o.d_model +
                         2.0 * o.heads * o.head_dim * o.d_c;
  mla::check_memory(4.0 * (weights + double(o.max_T) * 2 * o.heads * o.head_dim * 2 +
                           double(o.prefill_context) * o.max_T + double(o.max_T) * o.d_c),
                    "this benchmark (--d-model " + std::to_string(o.d_model) + " --heads " +
                        std::to_string(o.heads) + " --head-dim " + std::to_string(o.head_dim) +
                        " --latent-dim " + std::to_string(o.d_c) + ", --contexts up to " +
                        std::to_string(o.max_T) + ", --prefill-context " +
                        std::to_string(o.prefill_context) + ")");
}

// ---------------------------------------------------------------------------------------------
// Part 1: the same numbers as chapter 4
// ---------------------------------------------------------------------------------------------

bool part_same_as_ch04(const LatentWeights& w, mla::Rng& rng) {
  std::cout << "1. Absorbed = chapter 4 (rebuild K and V from the latents)\n";
  const std::size_t check_T = 32, check_prefix = 24, d_model = w.d_model();
  const Mat x = rng.normal(check_T, d_model);
  bool ok =
      report("full forward, 32 tokens   ", absorbed_forward(x, w), mla::ch04::latent_forward(x, w));
  LatentDecoder rebuild(w);
  AbsorbedDecoder absorbed(w);
  rebuild.step(rows(x, 0, check_prefix));
  absorbed.step(rows(x, 0, check_prefix));
  Mat y_rebuild = xt::empty<float>({check_T - check_prefix, d_model});
  Mat y_absorbed = y_rebuild;
  for (std::size_t t = check_prefix; t < check_T; ++t) {
    const Mat xt1 = rows(x, t, t + 1);
    xt::view(y_rebuild, t - check_prefix, xt::all()) = xt::view(rebuild.step(xt1), 0, xt::all());
    xt::view(y_absorbed, t - check_prefix, xt::all()) = xt::view(absorbed.step(xt1), 0, xt::all());
  }
  ok = report("decode 8 steps after 24    ", y_absorbed, y_rebuild) && ok;
  std::cout << "  (pass: every element within " << kAtol << "·max|ref| + " << kRtol << "·|ref|)\n";
  return ok;
}

// ---------------------------------------------------------------------------------------------
// Part 2: one decode step against T cached tokens, both ways, with its FLOPs and bytes
// ---------------------------------------------------------------------------------------------

// latents: (max_T, d_c) random cached latents, the first T of which make a context of T.
void part_decode_step(const Options& o, const LatentWeights& w, const Mat& latents, mla::Rng& rng) {
  std::cout << "\n2. One decode step (1 new token) against T cached latents; median of " << o.runs
            << " runs\n";
  const LatentShape shape = o.shape();
  const Mat x1 = rng.normal(1, o.d_model);
  const Mat q1 = rng.normal(1, o.heads * o.head_dim);
  mla::Table decode({"context T", "rebuild ms", "absorbed ms", "speedup", "rebuild attn ms",
                     "absorbed attn ms", "attn speedup", "rebuild MFLOP", "absorbed MFLOP",
                     "rebuild MB", "absorbed MB"});
  for (std::size_t T : o.contexts) {
    progress("decode T = " + std::to_string(T));
    LatentDecoder rebuild(w);
    AbsorbedDecoder absorbed(w);
    const Mat prefix = rows(latents, 0, T - 1);
    rebuild.append_latents(prefix);
    absorbed.append_latents(prefix);
    const mla::Timing tr = time_step(rebuild, x1, T - 1, o.runs);
    const mla::Timing ta = time_step(absorbed, x1, T - 1, o.runs);
    rebuild.append_latents(rows(latents, T - 1, T));  // the attention part sees all T
    absorbed.append_latents(rows(latents, T - 1, T));
    const mla::Timing tr_attn = time_attention(rebuild, q1, o.runs);
    const mla::Timing ta_attn = time_attention(absorbed, q1, o.runs);
    const Cost cr = rebuild_cost(shape, 1, T), ca = absorbed_cost(shape, 1, T);
    decode.add({std::to_string(T), mla::fixed(tr.median * 1e3, 2), mla::fixed(ta.median * 1e3, 2),
                mla::fixed(tr.median / ta.median, 1) + "x", mla::fixed(tr_attn.median * 1e3, 2),
                mla::fixed(ta_attn.median * 1e3, 3),
                mla::fixed(tr_attn.median / ta_attn.median, 1) + "x", mla::fixed(cr.flops / 1e6, 1),
                mla::fixed(ca.flops / 1e6, 1), mla::fixed(cr.bytes / 1e6, 1),
                mla::fixed(ca.bytes / 1e6, 1)});
  }
  // The projections both steps share, alone: W^Q, W^DKV and W^O on one token.
  const Mat o1 = rng.normal(1, o.heads * o.head_dim);
  const mla::Timing tp = mla::time_it(
      [&] {
        const Mat a = mla::linear(x1, w.W_q), b = mla::linear(x1, w.W_dkv),
                  c = mla::linear(o1, w.W_o);
        mla::do_not_optimize(a.data()[0] + b.data()[0] + c.data()[0]);
      },
      o.runs, 0);
  progress_done();
  decode.print(std::cout);
  const Cost cp = projection_cost(shape, 1);
  const double proj_mb = 4.0 * double(w.W_q.size() + w.W_dkv.size() + w.W_o.size()) / 1e6;
  std::cout << "  step = projections + attention part; attn = rebuild K/V + attend, vs absorb + "
               "attend on the latents + expand\n"
            << "  MFLOP and MB per step: rebuild_cost / absorbed_cost (float32; MB as if no CPU "
               "cache helped)\n"
            << "  the shared projections W_Q, W_DKV, W_O alone: " << mla::fixed(tp.median * 1e3, 2)
            << " ms for " << mla::fixed(cp.flops / 1e6, 1) << " MFLOP and "
            << mla::fixed(proj_mb, 1) << " MB of weights:\n"
            << "  at batch 1 an absorbed step mostly reads weights, which a batch of sequences "
               "would share\n";
  const std::string decode_csv = mla::results_dir() + "/ch05_decode_step.csv";
  decode.write_csv(decode_csv);
  std::cout << "  wrote " << decode_csv << "\n";
}

// ---------------------------------------------------------------------------------------------
// Part 3: the price. S queries at once against a context of T (the prefill of a chunk)
// ---------------------------------------------------------------------------------------------

void part_prefill_price(const Options& o, const LatentWeights& w, const Mat& latents,
                        mla::Rng& rng) {
  const LatentShape shape = o.shape();
  const std::size_t T = o.prefill_context;
  const double s_star = crossover_chunk(shape, T);
  std::cout << "\n3. The price of absorption: S new tokens (a prefill chunk) at the end of a "
               "context of T = "
            << T << "\n"
            << "  FLOPs of the attention part (the projections are the same for both):\n"
            << "    rebuild : 2·T·d_c·H·(d_k+d_v) + 2·S·T·H·(d_k+d_v)   (decompress once, "
               "then attend d_h wide)\n"
            << "    absorbed: 2·S·H·d_c·(d_k+d_v) + 2·S·T·H·2·d_c        (every query "
               "attends d_c wide)\n"
            << "  equal at S* = T·d_c·(d_k+d_v) / (d_c·(d_k+d_v) + T·(2·d_c − d_k − d_v)) = ";
  if (std::isinf(s_star)) {
    std::cout << "never (2·d_c <= d_k + d_v: absorption is never more work)\n";
  } else {
    std::cout << mla::fixed(s_star, 1) << " for T = " << T << " (-> "
              << mla::fixed(crossover_chunk(shape, std::size_t{1} << 40), 1) << " as T grows)\n";
  }
  mla::Table prefill({"chunk S", "rebuild GFLOP", "absorbed GFLOP", "rebuild ms", "absorbed ms",
                      "absorbed/rebuild", "fewer FLOPs", "faster (measured)"});
  const Mat ctx = rows(latents, 0, T);
  std::size_t crossed_at = 0, previous = 0;
  double previous_ratio = 0, crossed_ratio = 0;
  for (std::size_t S : o.chunks) {
    progress("prefill S = " + std::to_string(S));
    LatentDecoder rebuild(w);
    AbsorbedDecoder absorbed(w);
    rebuild.append_latents(ctx);
    absorbed.append_latents(ctx);
    const Mat qs = rng.normal(S, o.heads * o.head_dim);  // the chunk's queries, last S positions
    const mla::Timing tr = time_attention(rebuild, qs, o.prefill_runs);
    const mla::Timing ta = time_attention(absorbed, qs, o.prefill_runs);
    const double proj = projection_cost(shape, S).flops;
    const double fr = rebuild_cost(shape, S, T).flops - proj;
    const double fa = absorbed_cost(shape, S, T).flops - proj;
    const double ratio = ta.median / tr.median;
    if (crossed_at == 0 && ratio > 1) {
      crossed_at = S;
      crossed_ratio = ratio;
    } else if (crossed_at == 0) {
      previous = S;
      previous_ratio = ratio;
    }
    prefill.add({std::to_string(S), mla::num(fr / 1e9, 4), mla::num(fa / 1e9, 4),
                 mla::fixed(tr.median * 1e3, 2), mla::fixed(ta.median * 1e3, 2),
                 mla::fixed(ratio, 2), fa < fr ? "absorbed" : "rebuild",
                 ratio < 1 ? "absorbed" : "rebuild"});
  }
  progress_done();
  prefill.print(std::cout);
  if (crossed_at == 0) {
    std::cout << "  measured: absorbed was faster for every chunk length tried\n";
  } else if (previous == 0) {
    std::cout << "  measured: rebuild was already faster at S = " << crossed_at << "\n";
  } else {
    // Interpolate log(time ratio) linearly in log(S) between the last S where absorbed won and
    // the first where it lost.
    const double a = std::log(double(previous)), b = std::log(double(crossed_at));
    const double ra = std::log(previous_ratio), rb = std::log(crossed_ratio);
    const double s_measured = std::exp(a + (b - a) * (0 - ra) / (rb - ra));
    std::cout << "  measured: absorbed stops being faster between S = " << previous
              << " and S = " << crossed_at << " (about S = " << mla::fixed(s_measured, 0)
              << "); counting FLOPs says "
              << (std::isinf(s_star) ? std::string("never") : "S* = " + mla::fixed(s_star, 1))
              << "\n";
  }
  if (!std::isinf(s_star)) {
    std::cout << "  so engines decompress K and V for prefill (long chunks) and absorb for "
                 "decode (S = 1)\n";
  }
  const std::string prefill_csv = mla::results_dir() + "/ch05_prefill_chunk.csv";
  prefill.write_csv(prefill_csv);
  std::cout << "  wrote " << prefill_csv << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Chapter 5: absorption. W_UK folds into the query and W_UV into the output, so attention "
      "runs on the cached latents and keys and values are never rebuilt. Checks equality with "
      "chapter 4, times a decode step both ways, and finds the chunk length above which "
      "decompressing K and V once is cheaper (prefill)."};
  Options o;
  app.add_option("--d-model", o.d_model, "Width of the layer's input (V2-Lite: 2048)")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--heads", o.heads, "Attention heads n_h (V2-Lite: 16)")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--head-dim", o.head_dim, "Per-head key/value width d_h (V2-Lite: 128)")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--latent-dim", o.d_c, "Latent width d_c (V2-Lite: 512)")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--contexts", o.contexts,
                 "Context lengths of the decode benchmark (default 256 512 1024 2048 4096; "
                 "--quick: 256 1024)")
      ->check(mla::kPositive);
  app.add_option("--prefill-context", o.prefill_context,
                 "Context length T of the prefill comparison (default 1024; --quick: 256)")
      ->check(mla::kPositive);
  app.add_option("--chunks", o.chunks,
                 "Chunk lengths S of the prefill comparison, each <= the prefill context "
                 "(default: 1, then powers of two from 16 up to the context)")
      ->check(mla::kPositive);
  app.add_option("--runs", o.runs,
                 "Timed runs per measurement, median reported (default 5, --quick 3; "
                 "--quick: 1 for the prefill chunks)")
      ->check(mla::kPositive);
  app.add_flag("--quick", o.quick, "Small contexts and few runs (the tour uses this)");
  mla::add_seed_option(app, o.seed);
  if (int rc = mla::parse_options(app, argc, argv); rc >= 0) return rc;

  return mla::run_program("ch05_absorption", [&] {
    check_options(o);
    mla::Rng rng(o.seed);
    const LatentWeights w = mla::ch04::random_latent(o.d_model, o.heads, o.head_dim, o.d_c, rng);
    std::cout << "Latent layer: d_model " << o.d_model << ", " << o.heads << " heads, d_h "
              << o.head_dim << ", d_c " << o.d_c
              << " (DeepSeek-V2-Lite's attention sizes by default; no RoPE yet)\n\n";

    if (!part_same_as_ch04(w, rng)) return mla::kExitFailed;  // never time code that is wrong

    // c_KV ~ N(0, 1), as W_DKV·h gives for h ~ N(0, 1): the caches of parts 2 and 3.
    const Mat latents = rng.normal(o.max_T, o.d_c);
    part_decode_step(o, w, latents, rng);
    part_prefill_price(o, w, latents, rng);
    return mla::kExitOk;
  });
}
