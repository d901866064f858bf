#include "08_serving/bench.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <memory>
#include <random>

#include "06_decoupled_rope/mla_weights.hpp"
#include "07_optimized_mla/kernels/mla_decode.hpp"
#include "08_serving/engine.hpp"
#include "08_serving/paged_cache.hpp"
#include "mla/bench.hpp"
#include "mla/exercise.hpp"
#include "mla/parallel.hpp"
#include "mla/tensor.hpp"

namespace mla::ch08 {

namespace {

/// Parameters every row of a step multiplies by (all layers, lm_head included).
double linear_params(const ModelConfig& c) {
  const double D = double(c.hidden_size), I = double(c.intermediate_size);
  double attn;
  if (c.attention == AttentionKind::MLA) {
    const MlaConfig& m = c.mla;
    const double H = double(m.num_attention_heads);
    attn = H * double(m.qk_head_dim()) * D + double(m.kv_lora_rank + m.qk_rope_head_dim) * D +
           H * double(m.qk_nope_head_dim + m.v_head_dim) * double(m.kv_lora_rank) +  // W_UK, W_UV
           D * H * double(m.v_head_dim);
  } else {
    const double q = double(c.gqa.heads * c.gqa.head_dim),
                 kv = double(c.gqa.kv_heads * c.gqa.head_dim);
    attn = 2 * q * D + 2 * kv * D;
  }
  return double(c.num_hidden_layers) * (attn + 3 * D * I) + double(c.vocab_size) * D;
}

/// Attention FLOPs of one sequence of `T` tokens, one decode token, all layers.
double attention_flops(const ModelConfig& c, std::size_t T) {
  double per_layer;
  if (c.attention == AttentionKind::MLA) {
    const MlaConfig& m = c.mla;
    // scores over [c_kv | k_rope], then the weighted sum of c_kv: per head and token.
    per_layer = 2.0 * double(m.num_attention_heads) * double(T) *
                double(2 * m.kv_lora_rank + m.qk_rope_head_dim);
  } else {
    per_layer = 4.0 * double(c.gqa.heads) * double(T) * double(c.gqa.head_dim);
  }
  return double(c.num_hidden_layers) * per_layer;
}

/// A cheap generator for filling gigabytes of cache: N(0,1)-ish is not needed, the cost of a
/// decode step does not depend on what the cache holds.
void fill_random(std::vector<float>& v, std::uint64_t seed) {
  std::mt19937 g(static_cast<std::uint32_t>(seed));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (float& x : v) x = u(g);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <class F>
double seconds_of(F&& f) {
  const double t0 = now_seconds();
  f();
  return now_seconds() - t0;
}

/// A probe: one run of a kernel as the step runs it, and the work one run does (FLOPs or bytes).
/// The bench times probes interleaved with the steps they model, so that a machine whose speed
/// drifts (a shared host's memory bandwidth swings by 2x within a minute) moves both alike.
struct Probe {
  std::function<void()> run;
  double work = 0;
};

/// The GEMM probe: the model's own MLP weights (every layer's gate, up, down: larger than the
/// last-level cache, as in the step) times a (batch, D) matrix, through the same `linear` the
/// step uses. Work in FLOPs.
Probe gemm_probe(const Model& m, std::size_t batch) {
  const ModelConfig& c = m.config;
  auto x = std::make_shared<Mat>(xt::empty<float>({batch, c.hidden_size}));
  auto xi = std::make_shared<Mat>(xt::empty<float>({batch, c.intermediate_size}));
  std::fill(x->begin(), x->end(), 0.5f);
  std::fill(xi->begin(), xi->end(), 0.5f);
  Probe p;
  p.run = [&m, x, xi] {
    for (const LayerWeights& l : m.weights.layers) {
      const Mat g = linear(*x, l.gate_proj), u = linear(*x, l.up_proj),
                d = linear(*xi, l.down_proj);
      (void)g, (void)u, (void)d;
    }
  };
  p.work = 2.0 * double(batch) * 3.0 * double(c.hidden_size) * double(c.intermediate_size) *
           double(c.num_hidden_layers);
  return p;
}

/// The attention probe: the step's decode kernel (MLA: chapter 7's best; GQA: the paged
/// per-head kernel) over `seqs` sequences' pages, each at a different layer, so the caches read
/// exceed the last-level cache as they do in the step. Work in bytes of cache read.
Probe attention_probe(const ModelConfig& c, const PageLayout& layout,
                      const std::vector<PagedSequence*>& seqs, std::size_t context, int threads) {
  const std::size_t n = seqs.size(), L = c.num_hidden_layers;
  Probe p;
  p.work = double(n) * double(context) * double(layout.bytes_per_token()) / double(L);
  if (c.attention == AttentionKind::MLA) {
    // Everything the kernel reads lives in this shared state, which the closure keeps alive.
    struct State {
      std::vector<float> q, qr, out;
      std::vector<ch07::SeqRef> refs;
      ch07::DecodeArgs a;
    };
    auto st = std::make_shared<State>();
    const std::size_t H = c.mla.num_attention_heads, dc = c.mla.kv_lora_rank,
                      dr = c.mla.qk_rope_head_dim;
    st->q.assign(n * H * dc, 0.01f);
    st->qr.assign(n * H * dr, 0.01f);
    st->out.resize(n * H * dc);
    st->refs.resize(n);
    for (std::size_t s = 0; s < n; ++s) st->refs[s] = {&seqs[s]->latent(s % L), context};
    st->a = ch07::make_decode_args(n, H, dc, dr, st->q.data(), st->qr.data(), 0.1f, st->out.data(),
                                   threads);
    p.run = [st] { ch07::mla_decode_best(st->refs.data(), st->a); };
  } else {
    const GqaConfig g = c.gqa;
    const std::size_t group = g.heads / g.kv_heads;
    auto q = std::make_shared<std::vector<float>>(n * g.heads * g.head_dim, 0.01f);
    auto out = std::make_shared<std::vector<float>>(q->size());
    p.run = [seqs, g, group, L, context, threads, q, out] {
      parallel_for(long(seqs.size() * g.heads), threads, [&](long i) {
        const std::size_t s = std::size_t(i) / g.heads, h = std::size_t(i) % g.heads;
        gqa_paged_attend_head(*seqs[s], s % L, h / group, context,
                              q->data() + (s * g.heads + h) * g.head_dim, 0.1f,
                              out->data() + (s * g.heads + h) * g.head_dim);
      });
    };
  }
  return p;
}

}  // namespace

double predict_step_seconds(const ModelConfig& c, std::size_t cache_bytes_per_token,
                            std::size_t batch, std::size_t context, const StepRates& rates) {
#if MLA_EXERCISES
  (void)c, (void)cache_bytes_per_token, (void)batch, (void)context, (void)rates;
  MLA_EXERCISE("8.2", "predict_step_seconds() (the step model on measured rates)",
               "see chapters/08_serving/README.md, exercise 8.2");
#else
  const double B = double(batch);
  const double t_weights = 2 * linear_params(c) * B / (rates.gemm_gflops * 1e9);
  const double t_attn =
      B * double(cache_bytes_per_token) * double(context) / (rates.attention_gbps * 1e9);
  return t_weights + t_attn;
#endif
}

double predict_step_seconds_roofline(const ModelConfig& c, std::size_t cache_bytes_per_token,
                                     std::size_t batch, std::size_t context, double gflops,
                                     double gbps) {
  const double P = linear_params(c), B = double(batch);
  // The weights: read once per step (4 bytes each), multiplied by every row.
  const double t_weights = std::max(2 * P * B / (gflops * 1e9), 4 * P / (gbps * 1e9));
  // The caches: each sequence's read once, its attention FLOPs done once.
  const double t_attn =
      std::max(B * attention_flops(c, context) / (gflops * 1e9),
               B * double(cache_bytes_per_token) * double(context) / (gbps * 1e9));
  return t_weights + t_attn;
}

std::vector<ModelConfig> bench_configs(const BenchOptions& o) {
  std::vector<ModelConfig> out;
  for (std::size_t kv : {16, 8, 4}) {
    GqaConfig g;
    g.heads = 16;
    g.kv_heads = kv;
    g.head_dim = 128;
    ModelConfig c = make_gqa_model_config(o.d_model, o.layers, o.intermediate, g);
    c.max_position_embeddings = o.context + 1024;
    out.push_back(c);
  }
  // DeepSeek-V2-Lite's attention: no query latent, d_c 512, 128 + 64 query/key dims, v 128.
  MlaConfig m = ch06::make_mla_config(o.d_model, 16, std::nullopt, 512, 128, 64, 128);
  m.max_position_embeddings = o.context + 1024;
  out.push_back(make_mla_model_config(o.layers, o.intermediate, m));
  return out;
}

std::vector<BenchRow> run_bench(const BenchOptions& o, const ch07::MachinePeak& peak,
                                bool progress) {
  const std::size_t budget = static_cast<std::size_t>(o.budget_gib * double(1ull << 30));
  std::vector<BenchRow> rows;
  std::uint64_t seed = 1;
  for (const ModelConfig& cfg : bench_configs(o)) {
    const auto model = std::make_shared<const Model>(random_model(cfg, seed++));
    const std::vector<ch07::CacheType> types =
        cfg.attention == AttentionKind::MLA
            ? std::vector<ch07::CacheType>{ch07::CacheType::F32, ch07::CacheType::BF16}
            : std::vector<ch07::CacheType>{ch07::CacheType::F32};
    for (const auto type : types) {
      const PageLayout layout = page_layout(cfg, type);
      BlockPool pool(layout.block_bytes(), budget);
      Engine engine(model, layout, o.threads);
      // Every sequence holds `context` tokens and room for the timed steps.
      const std::size_t steps_total = (o.sweep ? 16 : 1) * (o.steps + 1) + 1;
      const std::size_t per_seq = PagedSequence::blocks_for(o.context + steps_total);
      const std::size_t max_seq = pool.capacity() / per_seq;
      BenchRow base;
      base.variant =
          cfg.variant() == "gqa" ? "gqa" + std::to_string(cfg.gqa.kv_heads) : cfg.variant();
      base.dtype = type == ch07::CacheType::BF16 ? "bf16" : "f32";
      base.cache_bytes_per_token = layout.bytes_per_token();
      base.budget_bytes = budget;
      base.context = o.context;
      base.max_sequences = max_seq;
      if (max_seq == 0) {
        rows.push_back(base);
        continue;
      }
      if (progress) {
        std::cerr << "  " << base.variant << " " << base.dtype << ": filling " << max_seq
                  << " caches of " << o.context << " random tokens...\n";
      }
      // Random rows, written through the same paths as real tokens (append / write_kv).
      std::vector<std::unique_ptr<PagedSequence>> seqs;
      std::vector<float> a, b;
      if (cfg.attention == AttentionKind::MLA) {
        a.resize(o.context * cfg.mla.kv_lora_rank);
        b.resize(o.context * cfg.mla.qk_rope_head_dim);
      } else {
        a.resize(cfg.gqa.kv_heads * cfg.gqa.head_dim);
        b.resize(a.size());
      }
      fill_random(a, 11);
      fill_random(b, 12);
      for (std::size_t s = 0; s < max_seq; ++s) {
        seqs.push_back(std::make_unique<PagedSequence>(pool, layout, cfg));
        if (!seqs.back()->reserve(o.context + steps_total)) break;
        for (std::size_t l = 0; l < cfg.num_hidden_layers; ++l) {
          if (cfg.attention == AttentionKind::MLA) {
            seqs.back()->latent(l).append(a.data(), b.data(), o.context);
          } else {
            for (std::size_t t = 0; t < o.context; ++t)
              seqs.back()->write_kv(l, t, a.data(), b.data());
          }
        }
        seqs.back()->advance(o.context);
      }
      std::vector<std::size_t> batches;
      if (o.sweep) {
        for (std::size_t bsz = 1; bsz < max_seq && batches.size() < 15; bsz *= 2)
          batches.push_back(bsz);
      }
      batches.push_back(max_seq);
      // The attention probe's sequences: enough (one layer each) that their
      // caches exceed the last-level cache — at least 256 MiB, or every sequence there is.
      std::vector<PagedSequence*> probe;
      for (std::size_t s = 0, bytes = 0; s < seqs.size() && bytes < (std::size_t{256} << 20); ++s) {
        probe.push_back(seqs[s].get());
        bytes += o.context * layout.bytes_per_token() / cfg.num_hidden_layers;
      }
      const Probe attn = attention_probe(cfg, layout, probe, o.context, o.threads);
      attn.run();  // warm-up
      for (std::size_t bsz : batches) {
        std::vector<StepItem> items;
        for (std::size_t s = 0; s < bsz; ++s) items.push_back({seqs[s].get(), {int('a' + s % 26)}});
        const Probe gemm = gemm_probe(*model, bsz);
        engine.step(items);  // warm-up
        gemm.run();
        // Step, GEMM probe, attention probe, in turn: each rate is measured within a second of
        // the steps it predicts (medians of each).
        std::vector<double> t, t_gemm, t_attn;
        for (std::size_t k = 0; k < o.steps; ++k) {
          for (auto& it : items) it.tokens = {int('a' + k % 26)};
          t.push_back(seconds_of([&] { engine.step(items); }));
          t_gemm.push_back(seconds_of(gemm.run));
          t_attn.push_back(seconds_of(attn.run));
        }
        BenchRow r = base;
        r.batch = bsz;
        r.ms_per_step = 1e3 * median(t);
        r.tokens_per_s = double(bsz) / median(t);
        const StepRates rates{gemm.work / median(t_gemm) / 1e9, attn.work / median(t_attn) / 1e9};
        r.gemm_gflops = rates.gemm_gflops;
        r.attention_gbps = rates.attention_gbps;
        r.predicted_ms_per_step =
            1e3 * predict_step_seconds(cfg, layout.bytes_per_token(), bsz, o.context, rates);
        r.roofline_ms_per_step =
            1e3 * predict_step_seconds_roofline(cfg, layout.bytes_per_token(), bsz, o.context,
                                                peak.gflops, peak.gbps);
        rows.push_back(r);
        if (progress) {
          std::cerr << "    batch " << bsz << ": " << r.ms_per_step << " ms/step, model "
                    << r.predicted_ms_per_step << " (" << r.gemm_gflops << " GFLOP/s GEMM, "
                    << r.attention_gbps << " GB/s attention; roofline bound "
                    << r.roofline_ms_per_step << ")\n";
        }
      }
    }
  }
  return rows;
}

}  // namespace mla::ch08
