// Chapter 7 — Optimized MLA: the decode step of absorbed MLA as a real kernel.
//
// Every numbered version is first checked against version 1 (the scalar reference), then timed;
// the table puts each against the limit that binds it on this machine (FMA throughput for
// absorbed MLA with many heads, read bandwidth for MHA), as llm.c's dev/cuda programs do.
#include <algorithm>
#include <iostream>
#include <map>

#include <CLI/CLI.hpp>

#include "07_optimized_mla/optimized_mla.hpp"
#include "07_optimized_mla/runner.hpp"
#include "mla/parallel.hpp"
#include "mla/program.hpp"
#include "mla/random.hpp"
#include "mla/table.hpp"

using namespace mla;
using namespace mla::ch07;

int main(int argc, char** argv) {
  CLI::App app{
      "Chapter 7: the absorbed MLA decode step, version by version, against this machine's limits"};
  MlaProblem p;
  p.context = 2048;
  int threads = default_threads();
  bool quick = false;
  std::uint64_t seed = kDefaultSeed;
  app.add_option("--heads", p.heads, "Query heads H")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--context", p.context, "Cached tokens T")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 24))
      ->capture_default_str();
  app.add_option("--batch", p.batch, "Sequences B")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--threads", threads, "Threads for v5, v6, blas, mha_v2")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_flag("--quick", quick, "A small, fast run (16 heads, 1024 tokens) for the tour");
  add_seed_option(app, seed);
  if (int rc = parse_options(app, argc, argv); rc >= 0) return rc;
  return run_program("ch07_optimized_mla", [&] {
    if (quick) {
      p.heads = 16;
      p.context = 1024;
    }
    MhaProblem hp;
    hp.batch = p.batch;
    hp.heads = p.heads;
    hp.context = p.context;

    std::cout << "Absorbed MLA decode, one layer: B=" << p.batch << ", H=" << p.heads
              << ", T=" << grouped(static_cast<long long>(p.context)) << ", d_c=" << p.d_c
              << ", d_r=" << p.d_r << "\n";
    std::cout << "per step: " << num(mla_flops(p) / 1e6, 4) << " MFLOP over a "
              << human_bytes(mla_bytes(p, CacheType::F32))
              << " cache (fp32): " << num(mla_flops(p) / mla_bytes(p, CacheType::F32), 3)
              << " FLOP/byte;  MHA of the same "
              << "shape: " << num(mha_flops(hp) / 1e6, 4) << " MFLOP over "
              << human_bytes(mha_bytes(hp)) << ": " << num(mha_flops(hp) / mha_bytes(hp), 3)
              << " FLOP/byte\n";
    // Refuse a problem that cannot fit before spending seconds on measuring the machine.
    check_memory(mla_inputs_bytes(p, true) + mha_inputs_bytes(hp),
                 "--batch x --context x --heads: the MLA and MHA caches");
    std::map<int, MachinePeak> peaks;
    peaks[1] = measure_peak(1);
    if (threads != 1) peaks[threads] = measure_peak(threads);
    for (const auto& [th, pk] : peaks) {
      std::cout << "this machine, " << th << " thread(s): " << num(pk.gflops, 4)
                << " GFLOP/s (FMA), " << num(pk.gbps, 4) << " GB/s (read): balance "
                << num(pk.balance(), 3) << " FLOP/byte\n";
    }

    std::vector<std::string> names;
    for (const Kernel& k : kernels()) names.push_back(k.name);
    RunOptions ro;
    ro.threads = threads;
    ro.runs = quick ? 3 : 5;
    ro.min_seconds = quick ? 0.005 : 0.02;
    std::cout << "\nChecking every version against v1:\n";
    const auto rs = validate_and_time(p, hp, names, ro, peaks, seed, &std::cout);
    std::cout << "All results match.\n\n";

    Table t({"version", "what changed", "threads", "ms/step", "GFLOP/s", "% of limit", "x v1"});
    bool above_bw = false;  // a footnote under the table, when some row beats the DRAM bandwidth
    for (const auto& r : rs) {
      const Kernel* k = find_kernel(r.impl);
      const bool cached = r.timed && !r.compute_bound && r.pct_peak > 100.0;
      above_bw = above_bw || cached;
      t.add({r.impl, k->summary, std::to_string(r.threads), r.timed ? num(r.ms, 4) : "-",
             r.timed ? num(r.gflops, 4) : "-",
             r.timed
                 ? fixed(r.pct_peak, 1) + (r.compute_bound ? "% FMA" : "% BW") + (cached ? "*" : "")
                 : "-",
             r.speedup_v1 > 0 ? num(r.speedup_v1, 3) : "-"});
    }
    t.print(std::cout);
    if (above_bw) {
      std::cout << "* above 100%: the data fit in a cache (L2/L3), so the DRAM bandwidth is not "
                   "the limit\n";
    }
    const std::string path = results_dir() + "/ch07_versions.csv";
    t.write_csv(path);
    std::cout << "(% of limit: of the FMA peak where the step does more FLOPs per byte than the "
                 "machine balance, else of the read bandwidth; mha_v* are timed against mha_v1)\n"
              << "CSV written to " << path << "\n";
    return 0;
  });
}
