#include "07_optimized_mla/optimized_mla.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "mla/tensor.hpp"

namespace mla::ch07 {

namespace {

// splitmix64: a fast, seedable source for big benchmark inputs (mt19937 + normal_distribution
// would take tens of seconds for a 4 GB MHA cache).
struct FastRng {
  std::uint64_t s;
  explicit FastRng(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform on [-sqrt(3), sqrt(3)): mean 0, variance 1.
  float unit() {
    const float u = static_cast<float>(next() >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    return (2.0f * u - 1.0f) * 1.7320508f;
  }
};

void fill(std::vector<float>& v, FastRng& rng) {
  for (auto& x : v) x = rng.unit();
}

float deepseek_scale(std::size_t d_r) {
  return 1.0f / std::sqrt(static_cast<float>(128 + d_r));
}

}  // namespace

double mla_flops(const MlaProblem& p) {
  return static_cast<double>(p.batch) * p.heads * p.context * (2.0 * (p.d_c + p.d_r) + 2.0 * p.d_c);
}

double mla_bytes(const MlaProblem& p, CacheType type) {
  const double cache =
      static_cast<double>(p.batch) * p.context * cache_bytes_per_token(p.d_c, p.d_r, type);
  const double queries = static_cast<double>(p.batch) * p.heads * (2.0 * p.d_c + p.d_r) * 4.0;
  return cache + queries;
}

double mha_flops(const MhaProblem& p) {
  return static_cast<double>(p.batch) * p.heads * p.context * (2.0 * p.d_k + 2.0 * p.d_v);
}

double mha_bytes(const MhaProblem& p) {
  return static_cast<double>(p.batch) * p.heads * (p.context * (p.d_k + p.d_v) + p.d_k + p.d_v) *
         4.0;
}

double mla_inputs_bytes(const MlaProblem& p, bool with_low_precision) {
  const double lat = static_cast<double>((p.d_c + 15) / 16 * 16),
               rope = static_cast<double>((p.d_r + 15) / 16 * 16), row = lat + rope;
  // An FP8 row: a byte per latent number, its scales (padded to 16 bytes), the rope in bf16.
  const double fp8_row =
      lat + 16.0 * std::ceil(4.0 * std::ceil(p.d_c / double(LatentCache::kFp8Tile)) / 16.0) +
      2.0 * rope;
  const double tokens = static_cast<double>(p.batch) * (p.context + LatentCache::kTileTokens);
  const double flat = static_cast<double>(p.batch) * p.context * (p.d_c + p.d_r) * 4.0;
  return flat + tokens * (row * 4.0 + (with_low_precision ? row * 2.0 + fp8_row : 0.0)) +
         static_cast<double>(p.batch) * p.heads * (p.d_c + p.d_r) * 4.0;
}

double mha_inputs_bytes(const MhaProblem& p) {
  return mha_bytes(p);
}

MlaInputs MlaInputs::random(const MlaProblem& p, std::uint64_t seed, bool with_low_precision) {
  MlaInputs in;
  in.dims = p;
  in.scale = deepseek_scale(p.d_r);
  FastRng rng(seed);
  const std::size_t B = p.batch, H = p.heads, T = p.context, D = p.d_c + p.d_r;
  in.q_lat.resize(B * H * p.d_c);
  in.q_rope.resize(B * H * p.d_r);
  in.flat.resize(B * T * D);
  fill(in.q_lat, rng);
  fill(in.q_rope, rng);
  fill(in.flat, rng);
  in.f32.reserve(B);
  if (with_low_precision) {
    in.bf16.reserve(B);
    in.fp8.reserve(B);
  }
  for (std::size_t b = 0; b < B; ++b) {
    in.f32.emplace_back(p.d_c, p.d_r, CacheType::F32);
    in.f32.back().append_rows(in.flat.data() + b * T * D, T);
    if (with_low_precision) {
      in.bf16.emplace_back(p.d_c, p.d_r, CacheType::BF16);
      in.bf16.back().append_rows(in.flat.data() + b * T * D, T);
      in.fp8.emplace_back(p.d_c, p.d_r, CacheType::FP8);
      in.fp8.back().append_rows(in.flat.data() + b * T * D, T);
    }
  }
  for (std::size_t b = 0; b < B; ++b) {
    in.seqs_f32.push_back({&in.f32[b], T});
    if (with_low_precision) {
      in.seqs_bf16.push_back({&in.bf16[b], T});
      in.seqs_fp8.push_back({&in.fp8[b], T});
    }
  }
  return in;
}

DecodeArgs MlaInputs::args(float* out, int threads) const {
  return make_decode_args(dims.batch, dims.heads, dims.d_c, dims.d_r, q_lat.data(), q_rope.data(),
                          scale, out, threads);
}

double MlaInputs::bytes_held() const {
  return mla_inputs_bytes(dims, !bf16.empty());
}

MhaInputs MhaInputs::random(const MhaProblem& p, std::uint64_t seed) {
  MhaInputs in;
  in.dims = p;
  in.scale = 1.0f / std::sqrt(static_cast<float>(p.d_k));
  FastRng rng(seed);
  in.q.resize(p.batch * p.heads * p.d_k);
  fill(in.q, rng);
  in.caches.reserve(p.batch);
  for (std::size_t b = 0; b < p.batch; ++b) {
    in.caches.emplace_back(p.heads, p.d_k, p.d_v);
    MhaCache& c = in.caches.back();
    for (std::size_t h = 0; h < p.heads; ++h) {
      float* k = c.resize_k(h, p.context);
      float* v = c.resize_v(h, p.context);
      for (std::size_t i = 0; i < p.context * p.d_k; ++i) k[i] = rng.unit();
      for (std::size_t i = 0; i < p.context * p.d_v; ++i) v[i] = rng.unit();
    }
    c.set_size(p.context);
  }
  return in;
}

MhaArgs MhaInputs::args(float* out, int threads) const {
  MhaArgs a;
  a.batch = dims.batch;
  a.heads = dims.heads;
  a.d_k = dims.d_k;
  a.d_v = dims.d_v;
  a.q = q.data();
  a.scale = scale;
  a.out = out;
  a.threads = threads;
  return a;
}

const std::vector<Kernel>& kernels() {
  static const std::vector<Kernel> list = [] {
    std::vector<Kernel> k;
    auto mla = [&](const char* name, const char* what, bool threaded, CacheType t,
                   void (*run)(const MlaInputs&, float*, int)) {
      Kernel e;
      e.name = name;
      e.summary = what;
      e.threaded = threaded;
      e.dtype = t;
      e.run_mla = run;
      k.push_back(e);
    };
    mla("v1", "scalar reference: scores, softmax, weighted sum", false, CacheType::F32,
        [](const MlaInputs& in, float* out, int) {
          mla_decode_v1(in.flat.data(), in.dims.context, in.args(out, 1));
        });
    mla("v2", "xsimd dot products (4 accumulators), SIMD weighted sum", false, CacheType::F32,
        [](const MlaInputs& in, float* out, int) {
          mla_decode_v2(in.flat.data(), in.dims.context, in.args(out, 1));
        });
    mla("v3", "tiled cache, fused online softmax: one pass per head", false, CacheType::F32,
        [](const MlaInputs& in, float* out, int) {
          mla_decode_v3(in.seqs_f32.data(), in.args(out, 1));
        });
    mla("v4", "head blocking, register-blocked micro-kernels", false, CacheType::F32,
        [](const MlaInputs& in, float* out, int) {
          mla_decode_v4(in.seqs_f32.data(), in.args(out, 1));
        });
    mla("v5", "v4 + split-KV over threads, log-sum-exp combine", true, CacheType::F32,
        [](const MlaInputs& in, float* out, int th) {
          mla_decode_v5(in.seqs_f32.data(), in.args(out, th));
        });
    mla("v6", "v5 on a bf16 cache", true, CacheType::BF16,
        [](const MlaInputs& in, float* out, int th) {
          mla_decode_v6(in.seqs_bf16.data(), in.args(out, th));
        });
    mla("v7", "v5 on an FP8 cache (e4m3 + a scale per 128, bf16 rope)", true, CacheType::FP8,
        [](const MlaInputs& in, float* out, int th) {
          mla_decode_v7(in.seqs_fp8.data(), in.args(out, th));
        });
    mla("v8", "v5 + all head blocks of a sequence per tile while it is in L2", true, CacheType::F32,
        [](const MlaInputs& in, float* out, int th) {
          mla_decode_v8(in.seqs_f32.data(), in.args(out, th));
        });
    mla("v9", "v8 on a bf16 cache", true, CacheType::BF16,
        [](const MlaInputs& in, float* out, int th) {
          mla_decode_v9(in.seqs_bf16.data(), in.args(out, th));
        });
    mla("v10", "v5 + a few heads in registers at once, the next tile prefetched", true,
        CacheType::F32, [](const MlaInputs& in, float* out, int th) {
          mla_decode_v10(in.seqs_f32.data(), in.args(out, th));
        });
    mla("v11", "v6 + v10's few-heads path", true, CacheType::BF16,
        [](const MlaInputs& in, float* out, int th) {
          mla_decode_v11(in.seqs_bf16.data(), in.args(out, th));
        });
    mla("v12", "v11 without the widened tile: bf16 pairs widened in the micro-kernels", true,
        CacheType::BF16, [](const MlaInputs& in, float* out, int th) {
          mla_decode_v12(in.seqs_bf16.data(), in.args(out, th));
        });
    mla("v13", "v7 + a few heads in registers, each FP8 code widened once for all", true,
        CacheType::FP8, [](const MlaInputs& in, float* out, int th) {
          mla_decode_v13(in.seqs_fp8.data(), in.args(out, th));
        });
    auto mha = [&](const char* name, const char* what, bool threaded,
                   void (*run)(const MhaInputs&, float*, int)) {
      Kernel e;
      e.name = name;
      e.summary = what;
      e.mha = true;
      e.threaded = threaded;
      e.run_mha = run;
      k.push_back(e);
    };
    mha("mha_v1", "MHA scalar reference", false, [](const MhaInputs& in, float* out, int) {
      mha_decode_v1(in.caches.data(), in.args(out, 1));
    });
    mha("mha_v2", "MHA: SIMD, fused softmax, threads (memory-bound)", true,
        [](const MhaInputs& in, float* out, int th) {
          mha_decode_v2(in.caches.data(), in.args(out, th));
        });
    // Last: OpenBLAS's threads keep spinning for a while after a call, which would slow
    // whatever is timed right after it.
    mla("blas", "OpenBLAS: sgemm, softmax, sgemm", true, CacheType::F32,
        [](const MlaInputs& in, float* out, int th) {
          mla_decode_blas(in.flat.data(), in.dims.context, in.args(out, th));
        });
    return k;
  }();
  return list;
}

const Kernel* find_kernel(const std::string& name) {
  for (const Kernel& k : kernels()) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

void reference_heads(const MlaInputs& in, const std::vector<std::size_t>& heads, float* out) {
  const MlaProblem& p = in.dims;
  const std::size_t n = heads.size();
  std::vector<float> ql(p.batch * n * p.d_c), qr(p.batch * n * p.d_r);
  for (std::size_t b = 0; b < p.batch; ++b) {
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t h = heads[i];
      std::copy_n(in.q_lat.data() + (b * p.heads + h) * p.d_c, p.d_c,
                  ql.data() + (b * n + i) * p.d_c);
      std::copy_n(in.q_rope.data() + (b * p.heads + h) * p.d_r, p.d_r,
                  qr.data() + (b * n + i) * p.d_r);
    }
  }
  DecodeArgs a = in.args(out, 1);
  a.heads = n;
  a.q_lat = ql.data();
  a.q_rope = qr.data();
  mla_decode_v1(in.flat.data(), p.context, a);
}

void reference_mha_heads(const MhaInputs& in, const std::vector<std::size_t>& heads, float* out) {
  const MhaProblem& p = in.dims;
  std::vector<float> s(p.context);
  for (std::size_t b = 0; b < p.batch; ++b) {
    for (std::size_t i = 0; i < heads.size(); ++i) {
      const std::size_t h = heads[i];
      const float* q = in.q.data() + (b * p.heads + h) * p.d_k;
      const float* K = in.caches[b].k(h);
      const float* Vh = in.caches[b].v(h);
      for (std::size_t t = 0; t < p.context; ++t) {
        float acc = 0.0f;
        for (std::size_t k = 0; k < p.d_k; ++k) acc += q[k] * K[t * p.d_k + k];
        s[t] = in.scale * acc;
      }
      mla::softmax(s.data(), p.context);
      float* o = out + (b * heads.size() + i) * p.d_v;
      std::fill(o, o + p.d_v, 0.0f);
      for (std::size_t t = 0; t < p.context; ++t) {
        for (std::size_t j = 0; j < p.d_v; ++j) o[j] += s[t] * Vh[t * p.d_v + j];
      }
    }
  }
}

}  // namespace mla::ch07
