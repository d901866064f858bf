#include "07_optimized_mla/runner.hpp"

#include <algorithm>
#include <memory>
#include <ostream>
#include <sstream>

#include "mla/bench.hpp"
#include "mla/program.hpp"

namespace mla::ch07 {

std::string dtype_name(CacheType t) {
  return t == CacheType::F32 ? "f32" : t == CacheType::BF16 ? "bf16" : "fp8";
}

namespace {

std::vector<std::size_t> sample(std::size_t heads, std::size_t n) {
  std::vector<std::size_t> s;
  for (std::size_t i = 0; i < n && i < heads; ++i) {
    const std::size_t h = n == 1 ? 0 : i * (heads - 1) / (n - 1);
    if (s.empty() || s.back() != h) s.push_back(h);
  }
  return s;
}

std::string join(const std::vector<std::size_t>& v) {
  std::ostringstream os;
  for (std::size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  return os.str();
}

// Compare the rows of `out` (B, H, d) of the sampled heads with ref (B, heads.size(), d).
Comparison compare_heads(const std::vector<float>& out, const std::vector<float>& ref,
                         std::size_t B, std::size_t H, std::size_t d,
                         const std::vector<std::size_t>& heads, double atol, double rtol,
                         bool& ok) {
  std::vector<float> picked(B * heads.size() * d);
  for (std::size_t b = 0; b < B; ++b) {
    for (std::size_t i = 0; i < heads.size(); ++i) {
      std::copy_n(out.data() + (b * H + heads[i]) * d, d,
                  picked.data() + (b * heads.size() + i) * d);
    }
  }
  ok = allclose(picked, ref, atol, rtol);
  return compare(picked, ref);
}

}  // namespace

std::vector<KernelResult> validate_and_time(const MlaProblem& mp, const MhaProblem& hp,
                                            const std::vector<std::string>& impls,
                                            const RunOptions& opt,
                                            const std::map<int, MachinePeak>& peaks,
                                            std::uint64_t seed, std::ostream* log) {
  std::vector<const Kernel*> ks;
  bool need_mla = false, need_mha = false, need_bf16 = false;
  for (const auto& name : impls) {
    const Kernel* k = find_kernel(name);
    if (!k) throw InputError("unknown kernel '" + name + "'");
    ks.push_back(k);
    (k->mha ? need_mha : need_mla) = true;
    need_bf16 = need_bf16 || (!k->mha && k->dtype != CacheType::F32);  // bf16 and fp8 copies
  }

  std::unique_ptr<MlaInputs> mla_in;
  std::unique_ptr<MhaInputs> mha_in;
  if (need_mla) {
    check_memory(mla_inputs_bytes(mp, need_bf16),
                 "--batch x --context: the MLA cache (B·T·(d_c+d_r) numbers in 2-3 layouts)");
    mla_in = std::make_unique<MlaInputs>(MlaInputs::random(mp, seed, need_bf16));
  }
  if (need_mha) {
    check_memory(
        mha_inputs_bytes(hp),
        "--batch x --context x --heads: the MHA baseline's cache (B·T·H·(d_k+d_v) floats)");
    mha_in = std::make_unique<MhaInputs>(MhaInputs::random(hp, seed + 1));
  }

  // References: v1 on every head if it is cheap enough, else on a sample of heads.
  const double mla_gflop = mla_flops(mp) / 1e9, mha_gflop = mha_flops(hp) / 1e9;
  const bool mla_full = mla_gflop <= opt.v1_max_gflop;
  const bool mha_full = mha_gflop <= opt.v1_max_gflop;
  const std::vector<std::size_t> mla_heads = sample(mp.heads, opt.sample_heads);
  const std::vector<std::size_t> mha_heads = sample(hp.heads, opt.sample_heads);
  std::vector<float> mla_ref, mha_ref;
  if (need_mla) {
    if (mla_full) {
      mla_ref.resize(mp.batch * mp.heads * mp.d_c);
      mla_decode_v1(mla_in->flat.data(), mp.context, mla_in->args(mla_ref.data(), 1));
    } else {
      mla_ref.resize(mp.batch * mla_heads.size() * mp.d_c);
      reference_heads(*mla_in, mla_heads, mla_ref.data());
    }
  }
  if (need_mha) {
    if (mha_full) {
      mha_ref.resize(hp.batch * hp.heads * hp.d_v);
      mha_decode_v1(mha_in->caches.data(), mha_in->args(mha_ref.data(), 1));
    } else {
      mha_ref.resize(hp.batch * mha_heads.size() * hp.d_v);
      reference_mha_heads(*mha_in, mha_heads, mha_ref.data());
    }
  }

  std::vector<KernelResult> results;
  double v1_s = 0.0, mha_v1_s = 0.0;
  for (const Kernel* k : ks) {
    KernelResult r;
    r.impl = k->name;
    r.dtype = k->mha ? "f32" : dtype_name(k->dtype);
    r.threads = k->threaded ? opt.threads : 1;
    const bool full = k->mha ? mha_full : mla_full;
    const std::size_t B = k->mha ? hp.batch : mp.batch, H = k->mha ? hp.heads : mp.heads;
    const std::size_t d = k->mha ? hp.d_v : mp.d_c;
    std::vector<float> out(B * H * d, 0.0f);
    auto run = [&] {
      if (k->mha) {
        k->run_mha(*mha_in, out.data(), r.threads);
      } else {
        k->run_mla(*mla_in, out.data(), r.threads);
      }
    };
    const bool is_reference = k->name == "v1" || k->name == "mha_v1";
    const CacheType dt = k->mha ? CacheType::F32 : k->dtype;
    const double atol = dt == CacheType::FP8    ? kFp8Atol
                        : dt == CacheType::BF16 ? kBf16Atol
                                                : kF32Atol;
    const double rtol = dt == CacheType::FP8    ? kFp8Rtol
                        : dt == CacheType::BF16 ? kBf16Rtol
                                                : kF32Rtol;
    const std::vector<std::size_t>& heads = k->mha ? mha_heads : mla_heads;
    const std::vector<float>& ref = k->mha ? mha_ref : mla_ref;
    // Validate first. The reference itself is not checked against itself.
    if (!is_reference) {
      run();
      if (full) {
        r.valid = allclose(out, ref, atol, rtol);
        r.check = compare(out, ref);
        r.checked_against = k->mha ? "mha_v1" : "v1";
      } else {
        r.check = compare_heads(out, ref, B, H, d, heads, atol, rtol, r.valid);
        r.checked_against = std::string(k->mha ? "mha_v1" : "v1") + " on heads " + join(heads);
      }
    } else {
      r.valid = true;
      r.checked_against =
          full ? "(the reference)" : "(the reference, too slow to run on every head here)";
    }
    if (log && !is_reference) {
      *log << "  " << r.impl << (r.valid ? " matches " : " DOES NOT MATCH ") << r.checked_against
           << ": " << r.check.describe() << "\n";
    }
    if (!r.valid) throw std::runtime_error("kernel " + r.impl + " does not match the reference");

    // Then time it (v1 only where it is affordable).
    if (!is_reference || full) {
      // v1 is slow: fewer runs and no warm-up (it ran once above as the reference).
      const Timing t = is_reference
                           ? time_it(run, std::min<std::size_t>(opt.runs, 3), 0, opt.min_seconds)
                           : time_it(run, opt.runs, 1, opt.min_seconds);
      r.timed = true;
      r.ms = t.median * 1e3;
      const double flops = k->mha ? mha_flops(hp) : mla_flops(mp);
      const double bytes = k->mha ? mha_bytes(hp) : mla_bytes(mp, k->dtype);
      r.gflops = flops / t.median / 1e9;
      r.gbps = bytes / t.median / 1e9;
      auto pk = peaks.find(r.threads);
      if (pk != peaks.end()) {
        const Bound bd = binding_limit(flops, bytes, t.median, pk->second);
        r.compute_bound = bd.compute;
        r.pct_peak = 100.0 * bd.fraction;
      }
      if (k->name == "v1") v1_s = t.median;
      if (k->name == "mha_v1") mha_v1_s = t.median;
      const double base = k->mha ? mha_v1_s : v1_s;
      if (base > 0) r.speedup_v1 = base / t.median;
    }
    results.push_back(r);
  }
  return results;
}

}  // namespace mla::ch07
