#include "07_optimized_mla/prefill_bench.hpp"

#include <algorithm>
#include <cmath>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "04_low_rank_latents/latent.hpp"
#include "05_absorption/absorption.hpp"
#include "07_optimized_mla/kernels/mla_blas.hpp"
#include "07_optimized_mla/kernels/mla_decode.hpp"
#include "07_optimized_mla/latent_cache.hpp"
#include "mla/bench.hpp"
#include "mla/compare.hpp"
#include "mla/environment.hpp"
#include "mla/random.hpp"
#include "mla/table.hpp"

namespace mla::ch07 {

namespace {

// Median milliseconds of `runs` runs; a run repeats fn until it lasts 20 ms (small chunks).
template <class Fn>
double median_ms(std::size_t runs, Fn&& fn) {
  fn();  // warm-up: scratch buffers, pages, OpenBLAS's threads
  std::vector<double> t;
  for (std::size_t r = 0; r < std::max<std::size_t>(runs, 1); ++r) {
    std::size_t reps = 0;
    const double t0 = now_seconds();
    double dt = 0;
    do {
      fn();
      ++reps;
      dt = now_seconds() - t0;
    } while (dt < 0.02);
    t.push_back(1e3 * dt / double(reps));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// One chunk's inputs: the latents of T + S tokens in the tiled cache, kv_b_proj (packed for MHA
// mode, split for MQA mode), the layer's rotated queries (S·H, d_qk) = [q_nope | q_rope].
struct ChunkInputs {
  PrefillDims d;
  std::size_t S, T;
  LatentCache cache;
  Mat w, q, q_nope, q_rope;
  ch04::KvUp up;
  PackedKvUp packed;
  ChunkInputs(const PrefillDims& dims, std::size_t S_, std::size_t T_, std::uint64_t seed)
      : d(dims),
        S(S_),
        T(T_),
        cache(dims.d_c, dims.d_r),
        w(make_w(dims, seed)),
        up(ch04::split_kv_up(w, dims.heads, dims.d_nope, dims.d_v)),
        packed(w.data(), dims) {
    Rng rng(seed + 1);
    const std::size_t N = S + T;
    // Latents of unit scale (normalized, as kv_a_layernorm makes them), queries scaled so that
    // the scores spread over a few units (a softmax that is neither flat nor one-hot).
    for (std::size_t t0 = 0; t0 < N; t0 += 4096) {
      const std::size_t n = std::min<std::size_t>(4096, N - t0);
      const Mat c = rng.normal(n, d.d_c), kr = rng.normal(n, d.d_r);
      cache.append(c.data(), kr.data(), n);
    }
    q = rng.normal(S * d.heads, d.d_qk(), 0.5f);
    q_nope = xt::empty<float>({S * d.heads, d.d_nope});
    q_rope = xt::empty<float>({S * d.heads, d.d_r});
    for (std::size_t r = 0; r < S * d.heads; ++r) {
      std::copy_n(q.data() + r * d.d_qk(), d.d_nope, q_nope.data() + r * d.d_nope);
      std::copy_n(q.data() + r * d.d_qk() + d.d_nope, d.d_r, q_rope.data() + r * d.d_r);
    }
  }
  static Mat make_w(const PrefillDims& d, std::uint64_t seed) {
    Rng rng(seed);
    return rng.normal(d.heads * (d.d_nope + d.d_v), d.d_c, 1.0f / std::sqrt(float(d.d_c)));
  }
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(d.d_qk())); }
  // Bytes every implementation must move at least once: the cache, the queries, the outputs.
  double bytes() const {
    return 4.0 *
           (double(S + T) * double(d.d_c + d.d_r) + double(S * d.heads) * double(d.d_qk() + d.d_v));
  }
};

// MQA mode as the layer runs it: absorb, attend on the latent, expand. out: (S·H, d_v).
Mat run_mqa(const ChunkInputs& in, int threads, double* attention_ms) {
  // The two GEMMs of absorption on one OpenBLAS thread: OpenBLAS's pthreads keep spinning after
  // a call and take the cores from the OpenMP threads of the attention that follows (measured:
  // decode steps of 40 ms instead of 0.1 after a multi-threaded absorption). They are 2-5% of
  // MQA mode's FLOPs at the chunks it is chosen for.
  set_blas_threads(1);
  const Mat q_lat = ch05::absorb_query(in.q_nope, in.up.W_uk, in.d.heads);
  Mat o_lat = xt::empty<float>({in.S * in.d.heads, in.d.d_c});
  const double t0 = now_seconds();
  mqa_prefill(in.cache, in.d.heads, q_lat.data(), in.q_rope.data(), in.S, in.T, in.scale(),
              o_lat.data(), threads);
  if (attention_ms) *attention_ms = 1e3 * (now_seconds() - t0);
  return ch05::expand_output(o_lat, in.up.W_uv, in.d.heads);
}

void check_equal(const std::string& what, const std::vector<float>& a, const float* ref,
                 double* max_abs) {
  const Comparison c = compare(a.data(), ref, a.size());
  if (max_abs) *max_abs = c.max_abs;
  if (!allclose(a.data(), ref, a.size(), 1e-4, 1e-3)) {
    throw std::runtime_error(what + " differs from the OpenBLAS formulation: " + c.describe());
  }
}

}  // namespace

std::vector<PrefillResult> run_prefill_chunk(const PrefillBenchOptions& o, std::ostream* log) {
  const PrefillDims& d = o.dims;
  const std::size_t S = o.chunk, T = o.context, N = S + T, H = d.heads;
  // The cache, the decompressed keys and values, the scores of the BLAS formulation (S × N per
  // head, one head at a time), MQA mode's absorbed queries and latent outputs.
  check_memory(4.0 * (double(N) * double(d.d_c + d.d_r + H * (d.d_qk() + d.d_v + 16)) +
                      double(S) * double(N) + 2.0 * double(S * H) * double(d.d_c + d.d_qk())),
               "--context + --chunk, --heads: the prefill's buffers");
  const ChunkInputs in(d, S, T, o.seed);
  const int th = o.threads;
  MhaKv kv;
  std::vector<float> ref(S * H * d.d_v), mha(ref.size()), mqa(ref.size());
  decompress_kv(in.cache, N, in.packed, th, kv);
  mha_prefill_blas(kv, in.q.data(), S, T, in.scale(), ref.data(), th);
  mha_prefill(kv, in.q.data(), S, T, in.scale(), mha.data(), th);
  {
    const Mat m = run_mqa(in, th, nullptr);
    std::copy_n(m.data(), m.size(), mqa.data());
  }
  PrefillResult r_mha, r_blas, r_mqa;
  check_equal("MHA mode (mha_prefill)", mha, ref.data(), &r_mha.max_abs_err);
  check_equal("MQA mode (mqa_prefill)", mqa, ref.data(), &r_mqa.max_abs_err);
  if (log) {
    *log << "validated: MHA mode and MQA mode equal the OpenBLAS formulation (max abs "
         << num(r_mha.max_abs_err, 3) << ", " << num(r_mqa.max_abs_err, 3) << "; tolerance 1e-4 + "
         << "1e-3·|ref|)\n";
  }
  const double t_dec = median_ms(o.runs, [&] { decompress_kv(in.cache, N, in.packed, th, kv); });
  const double t_flash =
      median_ms(o.runs, [&] { mha_prefill(kv, in.q.data(), S, T, in.scale(), mha.data(), th); });
  const double t_blas = median_ms(
      o.runs, [&] { mha_prefill_blas(kv, in.q.data(), S, T, in.scale(), ref.data(), th); });
  double t_mqa_attn = 0;
  std::vector<double> attn;
  const double t_mqa = median_ms(o.runs, [&] {
    run_mqa(in, th, &t_mqa_attn);
    attn.push_back(t_mqa_attn);
  });
  std::sort(attn.begin(), attn.end());

  auto fill = [&](PrefillResult& r, const char* impl, PrefillMode mode, double ms, double flops,
                  double attention_ms) {
    r.impl = impl;
    r.mode = mode;
    r.context = T;
    r.chunk = S;
    r.threads = th;
    r.ms = ms;
    r.flops = flops;
    r.bytes = in.bytes();
    r.attention_ms = attention_ms;
  };
  const double f_mha = decompress_flops(d, N) + mha_attention_flops(d, S, T);
  fill(r_mha, "prefill_mha", PrefillMode::MHA, t_dec + t_flash, f_mha, t_flash);
  fill(r_blas, "prefill_mha_blas", PrefillMode::MHA, t_dec + t_blas, f_mha, t_blas);
  fill(r_mqa, "prefill_mqa", PrefillMode::MQA, t_mqa,
       absorb_flops(d, S) + mqa_attention_flops(d, S, T), attn[attn.size() / 2]);
  return {r_mha, r_blas, r_mqa};
}

std::vector<PrefillResult> run_prefill_sweep(const PrefillDims& d,
                                             const std::vector<std::size_t>& pp,
                                             std::size_t mqa_max,
                                             const std::vector<std::size_t>& tg, int threads,
                                             std::uint64_t seed, bool progress) {
  std::vector<PrefillResult> rows;
  const std::size_t H = d.heads;
  for (std::size_t N : pp) {
    if (progress) std::cerr << "pp" << N << "...\n";
    const ChunkInputs in(d, N, 0, seed);
    MhaKv kv;
    std::vector<float> out(N * H * d.d_v);
    // One run each: these are seconds long at the top of the range.
    const double t0 = now_seconds();
    decompress_kv(in.cache, N, in.packed, threads, kv);
    const double t1 = now_seconds();
    mha_prefill(kv, in.q.data(), N, 0, in.scale(), out.data(), threads);
    const double t2 = now_seconds();
    PrefillResult r;
    r.impl = "prefill_mha";
    r.mode = PrefillMode::MHA;
    r.chunk = N;
    r.threads = threads;
    r.ms = 1e3 * (t2 - t0);
    r.attention_ms = 1e3 * (t2 - t1);
    r.flops = decompress_flops(d, N) + mha_attention_flops(d, N, 0);
    r.bytes = in.bytes();
    rows.push_back(r);
    if (N <= mqa_max) {
      double attention = 0;
      const double t3 = now_seconds();
      run_mqa(in, threads, &attention);
      r.impl = "prefill_mqa";
      r.mode = PrefillMode::MQA;
      r.ms = 1e3 * (now_seconds() - t3);
      r.attention_ms = attention;
      r.flops = absorb_flops(d, N) + mqa_attention_flops(d, N, 0);
      rows.push_back(r);
    }
  }
  for (std::size_t T : tg) {
    if (progress) std::cerr << "tg at " << T << "...\n";
    const ChunkInputs in(d, 1, T - 1, seed);  // the step's own token is the T-th
    Rng rng(seed + 2);
    const Mat ql = rng.normal(H, d.d_c, 0.05f), qr = rng.normal(H, d.d_r);
    std::vector<float> out(H * d.d_c);
    const SeqRef seq{&in.cache, T};
    PrefillResult r;
    r.impl = "decode";
    r.mode = PrefillMode::MQA;
    r.context = T;
    r.chunk = 1;
    r.threads = threads;
    r.ms = median_ms(3, [&] {
      mla_decode_best(&seq, make_decode_args(1, H, d.d_c, d.d_r, ql.data(), qr.data(), in.scale(),
                                             out.data(), threads));
    });
    r.attention_ms = r.ms;
    r.flops = mqa_attention_flops(d, 1, T - 1);
    r.bytes = in.bytes();
    rows.push_back(r);
  }
  return rows;
}

}  // namespace mla::ch07
