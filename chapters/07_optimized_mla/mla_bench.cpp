// mla_bench: the absorbed MLA decode kernels of chapter 7, validated against v1, timed, and put
// against this machine's measured limits (FMA throughput, DRAM read bandwidth), next to an
// optimized MHA decode and the OpenBLAS two-GEMM formulation.
//
//   mla_bench --heads 128 --context 4096 --threads 2            one configuration, a table
//   mla_bench --heads 128 --context 4096 --impl v5 --json        JSON lines for scripts
//   mla_bench --sweep                                            T × H × B × threads -> CSV
//   mla_bench --mode prefill --heads 16 --context 4096 --chunk 4096   a prefill chunk, both modes
//   mla_bench --mode prefill --heads 16 --sweep                  pp512..pp16384, tg -> CSV
#include <algorithm>
#include <iostream>
#include <map>
#include <sstream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "07_optimized_mla/optimized_mla.hpp"
#include "07_optimized_mla/prefill_bench.hpp"
#include "07_optimized_mla/runner.hpp"
#include "mla/parallel.hpp"
#include "mla/program.hpp"
#include "mla/random.hpp"
#include "mla/table.hpp"

using namespace mla;
using namespace mla::ch07;

namespace {

struct Options {
  std::size_t heads = 128, context = 4096, batch = 1;
  int threads = 0;  // 0: every hardware thread
  std::size_t d_c = 512, d_r = 64, d_nope = 128, d_v = 128;
  std::string impl = "all";
  std::string dtype;  // empty: both
  bool json = false, sweep = false, quick = false;
  std::uint64_t seed = kDefaultSeed;
  std::string mode = "decode";  // or "prefill" (issue 13's prefill half)
  std::size_t chunk = 512;      // --mode prefill: S, the new tokens of the chunk
};

// The kernels an --impl / --dtype pair selects, in menu order.
std::vector<std::string> select(const Options& o, bool sweep) {
  std::vector<std::string> names;
  if (o.impl != "all") {
    std::stringstream ss(o.impl);
    std::string name;
    while (std::getline(ss, name, ',')) {
      if (!find_kernel(name)) {
        std::string known;
        for (const Kernel& k : kernels()) known += " " + k.name;
        throw InputError("--impl: unknown kernel '" + name + "' (known:" + known + ", all)");
      }
      names.push_back(name);
    }
  } else {
    for (const Kernel& k : kernels()) {
      // The sweep times what matters per configuration: the reference where cheap, the fast
      // kernels of each cache type (fp32 v5 and v10, bf16 v6, v11 and v12, FP8 v7 and v13; v8
      // and v9 measured no faster than v5 and v6, so they are left to --impl), and, without
      // --quick, the BLAS peer and the MHA baseline.
      const bool fast = k.name == "v5" || k.name == "v6" || k.name == "v7" || k.name == "v10" ||
                        k.name == "v11" || k.name == "v12" || k.name == "v13";
      const bool peers = !o.quick && (k.name == "blas" || k.name == "mha_v2");
      if (sweep && k.name != "v1" && !fast && !peers) continue;
      names.push_back(k.name);
    }
  }
  if (!o.dtype.empty()) {
    const CacheType want = o.dtype == "bf16"  ? CacheType::BF16
                           : o.dtype == "fp8" ? CacheType::FP8
                                              : CacheType::F32;
    std::vector<std::string> kept;
    for (const auto& n : names) {
      const Kernel* k = find_kernel(n);
      const CacheType t = k->mha ? CacheType::F32 : k->dtype;
      // v1 stays: it is the reference every kernel is checked against.
      if (t == want || n == "v1") kept.push_back(n);
    }
    names = kept;
  }
  return names;
}

MlaProblem mla_problem(const Options& o, std::size_t B, std::size_t H, std::size_t T) {
  MlaProblem p;
  p.batch = B;
  p.heads = H;
  p.context = T;
  p.d_c = o.d_c;
  p.d_r = o.d_r;
  return p;
}

MhaProblem mha_problem(const Options& o, std::size_t B, std::size_t H, std::size_t T) {
  MhaProblem p;
  p.batch = B;
  p.heads = H;
  p.context = T;
  p.d_k = o.d_nope;
  p.d_v = o.d_v;
  return p;
}

std::map<int, MachinePeak> measure_peaks(const std::vector<int>& thread_counts, bool progress) {
  std::map<int, MachinePeak> peaks;
  for (int th : thread_counts) {
    if (peaks.count(th)) continue;
    if (progress) std::cerr << "measuring this machine's limits on " << th << " thread(s)...\n";
    peaks[th] = measure_peak(th);
  }
  return peaks;
}

// Above 100% of the DRAM bandwidth the data came from a cache: marked "*", said under the table.
bool above_bandwidth(const KernelResult& r) {
  return r.timed && !r.compute_bound && r.pct_peak > 100.0;
}

std::string pct(const KernelResult& r) {
  if (!r.timed) return "-";
  return fixed(r.pct_peak, 1) + (r.compute_bound ? "% FMA" : "% BW") +
         (above_bandwidth(r) ? "*" : "");
}

void print_table(const std::vector<KernelResult>& rs, std::ostream& os) {
  Table t({"impl", "dtype", "threads", "ms/step", "GFLOP/s", "GB/s", "% of limit", "x v1"});
  for (const auto& r : rs) {
    if (!r.timed) {
      t.add({r.impl, r.dtype, std::to_string(r.threads), "not timed", "-", "-", "-", "-"});
      continue;
    }
    t.add({r.impl, r.dtype, std::to_string(r.threads), num(r.ms, 4), num(r.gflops, 4),
           num(r.gbps, 4), pct(r), r.speedup_v1 > 0 ? num(r.speedup_v1, 3) : "-"});
  }
  t.print(os);
  if (std::any_of(rs.begin(), rs.end(), above_bandwidth)) {
    os << "* above 100%: the data fit in a cache (L2/L3), so the DRAM bandwidth is not the limit\n";
  }
}

const KernelResult* by_name(const std::vector<KernelResult>& rs, const std::string& n) {
  for (const auto& r : rs) {
    if (r.impl == n && r.timed) return &r;
  }
  return nullptr;
}

// The ratios the chapter's goals are stated in, where both sides were timed.
void print_ratios(const std::vector<KernelResult>& rs, std::ostream& os) {
  const KernelResult *best = by_name(rs, "v5"), *bf = by_name(rs, "v6"), *f8 = by_name(rs, "v7"),
                     *blas = by_name(rs, "blas"), *mha = by_name(rs, "mha_v2");
  if (best && blas) os << "v5 vs OpenBLAS two-GEMM: " << fixed(blas->ms / best->ms, 2) << "x\n";
  if (best && mha)
    os << "absorbed MLA (v5) vs optimized MHA (mha_v2), per decode step: "
       << fixed(mha->ms / best->ms, 2) << "x\n";
  if (best && bf) os << "bf16 cache (v6) vs fp32 (v5): " << fixed(best->ms / bf->ms, 2) << "x\n";
  // The fastest of each cache type, as mla_decode_best picks them: v12 (bf16) against v10 (fp32).
  if (const KernelResult* v10 = by_name(rs, "v10"), *v12 = by_name(rs, "v12"); v10 && v12) {
    os << "bf16 cache (v12) vs fp32 (v10), the fastest of each: " << fixed(v10->ms / v12->ms, 2)
       << "x\n";
  }
  if (bf && f8) os << "fp8 cache (v7) vs bf16 (v6): " << fixed(bf->ms / f8->ms, 2) << "x\n";
}

nlohmann::json to_json(const KernelResult& r, const MlaProblem& p) {
  return {{"impl", r.impl},
          {"heads", p.heads},
          {"context", p.context},
          {"batch", p.batch},
          {"threads", r.threads},
          {"dtype", r.dtype},
          {"ms", r.ms},
          {"gflops", r.gflops},
          {"gbps", r.gbps},
          {"pct_peak", r.pct_peak},
          {"bound", r.compute_bound ? "compute" : "bandwidth"},
          {"speedup_v1", r.speedup_v1},
          {"max_abs_err", r.check.max_abs}};
}

std::vector<std::string> csv_row(const KernelResult& r, const MlaProblem& p) {
  return {r.impl,
          r.dtype,
          std::to_string(p.batch),
          std::to_string(p.heads),
          std::to_string(p.context),
          std::to_string(r.threads),
          num(r.ms, 5),
          num(r.gflops, 5),
          num(r.gbps, 5),
          r.compute_bound ? "compute" : "bandwidth",
          num(r.pct_peak, 4),
          num(r.speedup_v1, 4)};
}

int run_single(const Options& o) {
  const bool terminal = stdout_is_terminal();
  const std::vector<std::string> impls = select(o, false);
  RunOptions ro;
  ro.threads = o.threads;
  ro.runs = o.quick ? 3 : 7;
  ro.min_seconds = o.quick ? 0.005 : 0.02;
  std::vector<int> counts{o.threads};
  for (const auto& n : impls) {
    if (!find_kernel(n)->threaded) counts.push_back(1);
  }
  const MlaProblem mp = mla_problem(o, o.batch, o.heads, o.context);
  const MhaProblem hp = mha_problem(o, o.batch, o.heads, o.context);
  // Refuse a problem that cannot fit before spending seconds on measuring the machine.
  check_memory(mla_inputs_bytes(mp, true) + mha_inputs_bytes(hp),
               "--batch x --context x --heads: the MLA and MHA caches");
  const auto peaks = measure_peaks(counts, terminal && !o.json);

  if (!o.json) {
    std::cout << "MLA decode, one layer: batch " << mp.batch << ", heads " << mp.heads
              << ", context " << grouped(static_cast<long long>(mp.context)) << ", d_c " << mp.d_c
              << " + d_r " << mp.d_r << "; MHA baseline: d_k " << hp.d_k << ", d_v " << hp.d_v
              << "\n";
    for (const auto& [th, pk] : peaks) {
      std::cout << "machine limits on " << th << " thread(s): " << num(pk.gflops, 4)
                << " GFLOP/s FMA, " << num(pk.gbps, 4) << " GB/s read; balance "
                << num(pk.balance(), 3) << " FLOP/byte\n";
    }
    const double ai_mla = mla_flops(mp) / mla_bytes(mp, CacheType::F32);
    const double ai_mha = mha_flops(hp) / mha_bytes(hp);
    std::cout << "arithmetic intensity: absorbed MLA " << num(ai_mla, 3)
              << " FLOP/byte (fp32 cache), "
              << num(mla_flops(mp) / mla_bytes(mp, CacheType::BF16), 3) << " (bf16), "
              << num(mla_flops(mp) / mla_bytes(mp, CacheType::FP8), 3) << " (fp8); MHA "
              << num(ai_mha, 3) << "\n";
    if (mla_flops(mp) / 1e9 > ro.v1_max_gflop) {
      std::cout << "v1 is not timed above " << ro.v1_max_gflop << " GFLOP per step (this one is "
                << num(mla_flops(mp) / 1e9, 3) << "): every kernel is checked against v1 on "
                << ro.sample_heads << " sampled heads instead\n";
    }
    std::cout << "validating (tolerance fp32 " << kF32Atol << " + " << kF32Rtol << "·|ref|, bf16 "
              << kBf16Atol << " + " << kBf16Rtol << "·|ref|, fp8 " << kFp8Atol << " + " << kFp8Rtol
              << "·|ref|):\n";
  }
  const auto rs =
      validate_and_time(mp, hp, impls, ro, peaks, o.seed, o.json ? nullptr : &std::cout);
  if (o.json) {
    for (const auto& [th, pk] : peaks) {
      std::cout << nlohmann::json{{"impl", "peak"},
                                  {"threads", th},
                                  {"gflops", pk.gflops},
                                  {"gbps", pk.gbps}}
                       .dump()
                << "\n";
    }
    for (const auto& r : rs) {
      if (r.timed) std::cout << to_json(r, mp).dump() << "\n";
    }
    return 0;
  }
  std::cout << "All results match.\n\n";
  print_table(rs, std::cout);
  print_ratios(rs, std::cout);
  Table csv({"impl", "dtype", "batch", "heads", "context", "threads", "ms", "gflops", "gbps",
             "bound", "pct_peak", "speedup_v1"});
  for (const auto& r : rs) {
    if (r.timed) csv.add(csv_row(r, mp));
  }
  const std::string path = results_dir() + "/ch07_bench.csv";
  csv.write_csv(path);
  std::cout << "CSV written to " << path << "\n";
  return 0;
}

int run_sweep(const Options& o) {
  const bool terminal = stdout_is_terminal();
  // The map of chapter 7's goals (T × H × B × cache type, % of the limit per shape), or with
  // --quick a small one (for the docs' figure): fewer sizes, B = 1, --threads threads only.
  const std::vector<std::size_t> Ts =
      o.quick ? std::vector<std::size_t>{1024, 4096, 16384}
              : std::vector<std::size_t>{1024, 2048, 4096, 8192, 16384, 32768, 65536};
  const std::vector<std::size_t> Hs = o.quick ? std::vector<std::size_t>{1, 4, 16, 32, 128}
                                              : std::vector<std::size_t>{1, 4, 16, 32, 64, 128};
  const std::vector<std::size_t> Bs =
      o.quick ? std::vector<std::size_t>{1} : std::vector<std::size_t>{1, 4};
  std::vector<int> thread_counts;
  if (!o.quick) thread_counts.push_back(1);
  if (o.quick || o.threads > 1) thread_counts.push_back(o.threads);
  const std::vector<std::string> impls = select(o, true);
  std::vector<int> peak_counts = thread_counts;
  peak_counts.push_back(1);  // the single-threaded kernels are measured against one core
  const auto peaks = measure_peaks(peak_counts, terminal);
  Table csv({"impl", "dtype", "batch", "heads", "context", "threads", "ms", "gflops", "gbps",
             "bound", "pct_peak", "speedup_v1"});
  RunOptions ro;
  // Three timed runs even with --quick: the median of two is the slower one, and on a shared
  // host one run in a few loses a core for a moment (a point of the figure then read ~half).
  ro.runs = 3;
  ro.min_seconds = 0.01;
  ro.v1_max_gflop = 0.3;
  const std::size_t total = Ts.size() * Hs.size() * Bs.size() * thread_counts.size();
  std::size_t done = 0;
  for (std::size_t B : Bs) {
    for (std::size_t H : Hs) {
      for (std::size_t T : Ts) {
        for (int th : thread_counts) {
          ++done;
          if (terminal) {
            std::cerr << "\r[" << done << "/" << total << "] B=" << B << " H=" << H << " T=" << T
                      << " threads=" << th << "          " << std::flush;
          }
          ro.threads = th;
          // MHA's cache is 4·H·(d_k+d_v) bytes per token: drop it where it would not fit.
          std::vector<std::string> run = impls;
          const MhaProblem hp = mha_problem(o, B, H, T);
          const double mha_need = mha_inputs_bytes(hp);
          if (mha_need > 0.5 * static_cast<double>(available_memory_bytes())) {
            run.erase(std::remove_if(run.begin(), run.end(),
                                     [](const std::string& n) { return find_kernel(n)->mha; }),
                      run.end());
            if (terminal)
              std::cerr << "\n  (MHA skipped: its cache needs " << human_bytes(mha_need) << ")\n";
          }
          const auto rs =
              validate_and_time(mla_problem(o, B, H, T), hp, run, ro, peaks, o.seed, nullptr);
          for (const auto& r : rs) {
            if (r.timed) csv.add(csv_row(r, mla_problem(o, B, H, T)));
          }
        }
      }
    }
  }
  if (terminal) std::cerr << "\n";
  for (const auto& [th, pk] : peaks) {
    csv.add({"peak", "f32", "-", "-", "-", std::to_string(th), "-", num(pk.gflops, 5),
             num(pk.gbps, 5), "-", "100", "-"});
  }
  const std::string path = results_dir() + "/ch07_sweep.csv";
  csv.write_csv(path);
  std::cout << "sweep: " << csv.rows()
            << " rows (every kernel validated against v1 first); CSV written to " << path << "\n";
  return 0;
}

// ---------------------------------------------------------------------------------------------
// --mode prefill: a chunk of S new tokens after T cached ones, in MHA mode, in MQA mode and as
// the OpenBLAS formulation; or (--sweep) the engines' pp / tg tables.
// ---------------------------------------------------------------------------------------------

PrefillDims prefill_dims(const Options& o) {
  PrefillDims d;
  d.heads = o.heads;
  d.d_c = o.d_c;
  d.d_r = o.d_r;
  d.d_nope = o.d_nope;
  d.d_v = o.d_v;
  return d;
}

nlohmann::json prefill_json(const PrefillResult& r, const PrefillDims& d, const MachinePeak& pk) {
  const double gflops = r.flops / (r.ms * 1e6);
  return {{"impl", r.impl},
          {"heads", d.heads},
          {"context", r.context},
          {"batch", 1},
          {"threads", r.threads},
          {"dtype", "f32"},
          {"ms", r.ms},
          {"gflops", gflops},
          {"gbps", r.bytes / (r.ms * 1e6)},
          {"pct_peak", 100.0 * gflops / pk.gflops},
          {"bound", "compute"},
          {"speedup_v1", 0.0},
          {"max_abs_err", r.max_abs_err},
          {"mode", "prefill"},
          {"chunk", r.chunk},
          {"prefill_mode", prefill_mode_name(r.mode)},
          {"attention_ms", r.attention_ms}};
}

int run_prefill(const Options& o) {
  if (o.batch != 1 || o.impl != "all" || !o.dtype.empty()) {
    throw InputError(
        "--mode prefill runs one sequence in fp32 with its own implementations: --batch, --impl "
        "and --dtype do not apply");
  }
  const bool terminal = stdout_is_terminal();
  const PrefillDims d = prefill_dims(o);
  const auto peaks = measure_peaks({o.threads}, terminal && !o.json);
  const MachinePeak& pk = peaks.at(o.threads);
  auto pct = [&](double flops, double ms) { return 100.0 * flops / (ms * 1e6) / pk.gflops; };
  if (o.sweep) {
    const std::vector<std::size_t> pp =
        o.quick ? std::vector<std::size_t>{512, 1024, 2048}
                : std::vector<std::size_t>{512, 1024, 2048, 4096, 8192, 16384};
    const std::vector<std::size_t> tg =
        o.quick ? std::vector<std::size_t>{512, 2048, 8192}
                : std::vector<std::size_t>{512, 1024, 2048, 4096, 8192, 16384};
    const std::size_t mqa_max = o.quick ? 2048 : 4096;
    const auto rows = run_prefill_sweep(d, pp, mqa_max, tg, o.threads, o.seed, terminal);
    Table t({"test", "impl", "prefill_mode", "heads", "tokens", "threads", "ms", "tokens_per_s",
             "gflops", "pct_peak"});
    for (const auto& r : rows) {
      const bool is_pp = r.impl != "decode";
      t.add({is_pp ? "pp" + std::to_string(r.chunk) : "tg@" + std::to_string(r.context), r.impl,
             prefill_mode_name(r.mode), std::to_string(d.heads),
             std::to_string(is_pp ? r.chunk : r.context), std::to_string(r.threads), num(r.ms, 5),
             num(double(r.chunk) / (r.ms * 1e-3), 5), num(r.flops / (r.ms * 1e6), 5),
             num(pct(r.flops, r.ms), 4)});
    }
    std::cout << "FMA peak on " << o.threads << " thread(s): " << num(pk.gflops, 4)
              << " GFLOP/s; heads " << d.heads << ", d_c " << d.d_c << ", d_r " << d.d_r
              << ", d_nope " << d.d_nope << ", d_v " << d.d_v << "\n";
    t.print(std::cout);
    const std::string path = results_dir() + "/ch07_prefill_sweep.csv";
    t.write_csv(path);
    std::cout << "CSV written to " << path << "\n";
    return 0;
  }
  PrefillBenchOptions po;
  po.dims = d;
  po.context = o.context;
  po.chunk = o.chunk;
  po.threads = o.threads;
  po.runs = o.quick ? 1 : 3;
  po.seed = o.seed;
  if (!o.json) {
    std::cout << "MLA prefill, one layer: a chunk of S = "
              << grouped(static_cast<long long>(o.chunk))
              << " new tokens after T = " << grouped(static_cast<long long>(o.context))
              << " cached; heads " << d.heads << ", d_c " << d.d_c << " + d_r " << d.d_r
              << "; MHA mode: d_qk " << d.d_qk() << ", d_v " << d.d_v << "\n"
              << "machine limit on " << o.threads << " thread(s): " << num(pk.gflops, 4)
              << " GFLOP/s FMA\n";
  }
  const auto rs = run_prefill_chunk(po, o.json ? nullptr : &std::cout);
  const PrefillRates rates = calibrated_prefill_rates(d, o.threads);
  const PrefillChoice choice = choose_prefill_mode(d, o.chunk, o.context, rates);
  if (o.json) {
    std::cout << nlohmann::json{{"impl", "peak"},
                                {"threads", o.threads},
                                {"gflops", pk.gflops},
                                {"gbps", pk.gbps}}
                     .dump()
              << "\n";
    for (const auto& r : rs) std::cout << prefill_json(r, d, pk).dump() << "\n";
    return 0;
  }
  Table t({"impl", "mode", "threads", "ms", "GFLOP/s", "% FMA", "attention ms", "attention % FMA"});
  for (const auto& r : rs) {
    const double f_att = r.mode == PrefillMode::MHA ? mha_attention_flops(d, r.chunk, r.context)
                                                    : mqa_attention_flops(d, r.chunk, r.context);
    t.add({r.impl, prefill_mode_name(r.mode), std::to_string(r.threads), num(r.ms, 4),
           num(r.flops / (r.ms * 1e6), 4), fixed(pct(r.flops, r.ms), 1), num(r.attention_ms, 4),
           fixed(pct(f_att, r.attention_ms), 1)});
  }
  t.print(std::cout);
  std::cout
      << "(FLOPs: decompression 2·(T+S)·d_c·H·(d_nope+d_v) or absorption 2·S·H·d_c·(d_nope+"
         "d_v), plus attention over the S·T + S(S+1)/2 unmasked (query, key) pairs per head)\n";
  const PrefillResult &mha = rs[0], &blas = rs[1], &mqa = rs[2];
  std::cout << "MHA mode vs the OpenBLAS formulation: " << fixed(blas.ms / mha.ms, 2)
            << "x (whole chunk), " << fixed(blas.attention_ms / mha.attention_ms, 2)
            << "x (attention alone)\n"
            << "MHA mode vs MQA mode: " << fixed(mqa.ms / mha.ms, 2) << "x\n"
            << "cost model (rates calibrated on this machine: decompression "
            << num(rates.decompress, 3) << ", MHA attention " << num(rates.mha, 3)
            << ", MQA attention " << num(rates.mqa, 3) << " GFLOP/s): mha "
            << num(choice.mha_seconds * 1e3, 4) << " ms, mqa " << num(choice.mqa_seconds * 1e3, 4)
            << " ms -> the switch picks " << prefill_mode_name(choice.mode) << " mode; measured "
            << (mha.ms < mqa.ms ? "mha" : "mqa") << " faster\n"
            << "S* after T = " << o.context << " (the smallest chunk the switch runs in MHA mode): "
            << prefill_crossover(d, o.context, rates) << "\n";
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mla_bench: absorbed MLA decode kernels vs this machine's limits, MHA and OpenBLAS"};
  Options o;
  app.add_option("--heads", o.heads, "Query heads H (DeepSeek-V3: 128)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--context", o.context, "Cached tokens T")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 31))
      ->capture_default_str();
  app.add_option("--batch", o.batch, "Sequences B, each with its own cache")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--threads", o.threads, "Threads (default: every hardware thread)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--kv-lora-rank", o.d_c, "Latent width d_c")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--rope-dim", o.d_r, "Decoupled rope width d_r (even)")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--nope-dim", o.d_nope, "Per-head key width of the MHA baseline (d_nope)")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--v-dim", o.d_v, "Per-head value width of the MHA baseline")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--impl", o.impl, "Kernel name(s), comma-separated, or all")
      ->capture_default_str();
  app.add_option("--dtype", o.dtype,
                 "Only kernels reading a cache of this type (v1 stays as the reference)")
      ->check(CLI::IsMember({"f32", "bf16", "fp8"}));
  app.add_flag("--json", o.json, "One JSON object per line instead of the table");
  app.add_flag("--sweep", o.sweep,
               "T in 1K..64K, H in {1,4,16,32,64,128}, B in {1,4}, 1 and --threads threads -> CSV "
               "(with --quick: T in {1K,4K,16K}, H in {1,4,16,32,128}, B = 1, --threads only)");
  app.add_flag("--quick", o.quick, "Fewer sizes and timed runs (for the tour and the figures)");
  app.add_option("--mode", o.mode,
                 "decode (the decode kernels) or prefill (a chunk of --chunk new tokens after "
                 "--context cached ones: MHA mode, MQA mode, OpenBLAS; with --sweep the pp/tg "
                 "tables)")
      ->check(CLI::IsMember({"decode", "prefill"}))
      ->capture_default_str();
  app.add_option("--chunk", o.chunk, "--mode prefill: new tokens S of the chunk")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 24))
      ->capture_default_str();
  add_seed_option(app, o.seed);
  if (int rc = parse_options(app, argc, argv); rc >= 0) return rc;
  return run_program("mla_bench", [&] {
    const int hw = default_threads();
    if (o.threads == 0) o.threads = hw;
    if (o.threads > 8 * hw) {
      throw InputError("--threads " + std::to_string(o.threads) +
                       " is more than 8x this machine's " + std::to_string(hw) +
                       " hardware threads");
    }
    if (o.d_r % 2 != 0)
      throw InputError("--rope-dim must be even (RoPE rotates pairs), got " +
                       std::to_string(o.d_r));
    (void)select(o, o.sweep);  // unknown --impl names exit 2 before any work
    if (o.mode == "prefill") return run_prefill(o);
    return o.sweep ? run_sweep(o) : run_single(o);
  });
}
