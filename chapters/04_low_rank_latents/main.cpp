// ch04_low_rank_latents: cache one latent c_KV of d_c numbers per token instead of every head's
// key and value; check that the latent layer is the low-rank MHA it claims to be; measure what the
// cache holds; and show, with an SVD, why a low-rank latent loses little when the key/value
// projection is (nearly) low-rank.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "mla/cli.hpp"

#include "03_multi_head/cache_calculator.hpp"
#include "03_multi_head/multi_head.hpp"
#include "04_low_rank_latents/latent.hpp"
#include "mla/compare.hpp"
#include "mla/program.hpp"
#include "mla/random.hpp"
#include "mla/table.hpp"

#include <xtensor/xview.hpp>

namespace {

using mla::Mat;
using namespace mla::ch04;

// Float32 results of two different (but equal in exact arithmetic) orders of summation.
constexpr double kAtol = 1e-5, kRtol = 1e-4;

// The checks decode token by token, rebuilding every key and value at each step (O(T²) work):
// beyond this they would run for minutes.
constexpr std::size_t kMaxTokens = 4096;

bool report(const char* what, const Mat& a, const Mat& ref) {
  const mla::Comparison c = mla::compare(a, ref);
  const bool ok = mla::allclose(a, ref, kAtol, kRtol);
  std::cout << "  " << what << ": " << c.describe() << "  -> " << (ok ? "equal" : "MISMATCH")
            << " (atol " << kAtol << ", rtol " << kRtol << ")\n";
  return ok;
}

// Feed x one token at a time through a decoder; rows of the result are the step outputs.
template <class Decoder>
Mat decode_token_by_token(Decoder& decoder, const Mat& x) {
  Mat y = xt::empty<float>(x.shape());
  for (std::size_t t = 0; t < x.shape(0); ++t) {
    const Mat row = xt::view(x, xt::range(t, t + 1), xt::all());
    xt::view(y, xt::range(t, t + 1), xt::all()) = decoder.step(row);
  }
  return y;
}

// The ranks of the sweep: powers of two, and a few around the true rank where the error drops.
std::vector<std::size_t> default_ranks(std::size_t true_rank, std::size_t max_rank) {
  std::set<std::size_t> r;
  for (std::size_t p = 1; p < max_rank; p *= 2) r.insert(p);
  for (std::size_t v : {true_rank - true_rank / 4, true_rank, true_rank + true_rank / 4}) {
    if (v >= 1 && v <= max_rank) r.insert(v);
  }
  r.insert(max_rank);
  return {r.begin(), r.end()};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Chapter 4: low-rank key-value joint compression. Caches one latent c_KV = W_DKV h of d_c "
      "numbers per token and rebuilds each head's keys and values from it; compares the cache "
      "with chapter 3's MHA and sweeps the latent rank of an SVD-compressed key/value "
      "projection."};
  std::size_t d_model = 256, heads = 8, head_dim = 32, d_c = 64, tokens = 48, true_rank = 48;
  double noise = 0.05;
  std::vector<std::size_t> ranks;
  std::uint64_t seed = mla::kDefaultSeed;
  app.add_option("--d-model", d_model, "Width of the layer's input")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--heads", heads, "Attention heads n_h")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--head-dim", head_dim, "Per-head key/value width d_h")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--latent-dim", d_c, "Latent width d_c of the demo layer")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--tokens", tokens, "Sequence length of the checks and of the rank sweep")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--true-rank", true_rank,
                 "Rank of the low-rank part of the key/value projection in the sweep")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--noise", noise,
                 "Full-rank noise added to it, relative to the low-rank part's entries")
      ->check(mla::kNonNegative)
      ->capture_default_str();
  app.add_option("--ranks", ranks,
                 "Latent ranks of the sweep (default: powers of two and a few "
                 "around --true-rank)")
      ->check(mla::kPositive);
  mla::add_seed_option(app, seed);
  if (int rc = mla::parse_options(app, argc, argv); rc >= 0) return rc;

  return mla::run_program("ch04_low_rank_latents", [&] {
    if (!std::isfinite(noise)) {
      throw mla::InputError("--noise: must be finite, got " + mla::num(noise));
    }
    if (tokens > kMaxTokens) {
      throw mla::InputError("--tokens: at most " + std::to_string(kMaxTokens) +
                            " (the checks decode them one by one), got " + std::to_string(tokens));
    }
    // Refuse sizes that cannot fit before allocating (in double: size_t products can wrap).
    // Weights of the latent layer and of its MHA twin; the sweep's W_KV, its parts and its
    // SVD; per token the input, rebuilt keys and values and the latents; the (T, T) scores.
    const double D = static_cast<double>(d_model),
                 R = 2.0 * static_cast<double>(heads) * static_cast<double>(head_dim),
                 C = static_cast<double>(d_c), T = static_cast<double>(tokens);
    const double weights = 2.0 * R * D + C * D + R * C + 2.0 * R * D;
    mla::check_memory(4.0 * (weights + 6.0 * R * D + T * (3.0 * D + 4.0 * R + C) +
                             T * T * static_cast<double>(heads)),
                      "the layers (--d-model " + std::to_string(d_model) + " --heads " +
                          std::to_string(heads) + " --head-dim " + std::to_string(head_dim) +
                          " --latent-dim " + std::to_string(d_c) + " --tokens " +
                          std::to_string(tokens) + ")");

    const std::size_t kv_rows = 2 * heads * head_dim;  // what MHA caches per token
    const std::size_t max_rank = std::min(kv_rows, d_model);
    if (true_rank > max_rank) {
      throw mla::InputError(
          "--true-rank " + std::to_string(true_rank) +
          " is larger than min(2·heads·head_dim, d_model) = " + std::to_string(max_rank));
    }
    if (ranks.empty()) ranks = default_ranks(true_rank, max_rank);
    for (std::size_t r : ranks) {
      if (r > max_rank) {
        throw mla::InputError("--ranks: " + std::to_string(r) + " is larger than " +
                              std::to_string(max_rank) + " (min(2·heads·head_dim, d_model))");
      }
    }
    mla::Rng rng(seed);
    const LatentWeights w = random_latent(d_model, heads, head_dim, d_c, rng);
    const Mat x = rng.normal(tokens, d_model);
    std::cout << "Latent layer: d_model " << d_model << ", " << heads << " heads of d_h "
              << head_dim << ", latent d_c " << d_c << ", " << tokens << " tokens (seed " << seed
              << ")\n"
              << "  W_DKV " << d_c << "x" << d_model << " (eq. 9), W_UKV (kv_b_proj layout) "
              << w.W_ukv.shape(0) << "x" << d_c << " (eqs. 10-11)\n\n";

    // 1. The latent layer is an MHA layer whose W_K and W_V happen to be products.
    std::cout << "1. The latent layer equals chapter 3's MHA with W_K = W_UK·W_DKV, "
                 "W_V = W_UV·W_DKV\n";
    const mla::ch03::MhaWeights mha = equivalent_mha(w);
    const Mat y_latent = latent_forward(x, w);
    bool ok =
        report("latent_forward vs ch03::mha_forward", y_latent, mla::ch03::mha_forward(x, mha));

    // 2. Decoding with a cache of latents only: K and V are rebuilt from it at every step.
    std::cout << "\n2. Cached decoding that keeps only c_KV (K and V rebuilt every step)\n";
    LatentDecoder latent_decoder(w);
    ok = report("token-by-token decode vs full forward", decode_token_by_token(latent_decoder, x),
                y_latent) &&
         ok;

    // 3. What the two caches hold after the same tokens, as the decoders report it.
    mla::ch03::MhaDecoder mha_decoder(mha);
    decode_token_by_token(mha_decoder, x);
    const double mha_per_token = double(mha_decoder.cache_floats()) / mha_decoder.cached_tokens();
    const double lat_per_token =
        double(latent_decoder.cache_floats()) / latent_decoder.cached_tokens();
    std::cout << "\n3. Cache per token and layer, after decoding " << tokens
              << " tokens (measured), and at real shapes (2·n_h·d_h vs d_c; no RoPE part yet)\n";
    mla::Table cache({"layer", "numbers/token", "fp32 bytes", "bf16 bytes", "vs MHA"});
    auto add = [&](const std::string& name, double numbers, double mha_numbers) {
      cache.add({name, mla::grouped(static_cast<long long>(numbers)),
                 mla::grouped(static_cast<long long>(4 * numbers)),
                 mla::grouped(static_cast<long long>(2 * numbers)),
                 numbers == mha_numbers ? "reference"
                                        : mla::fixed(mha_numbers / numbers, 1) + "x smaller"});
    };
    add("MHA, this demo (ch03::MhaDecoder)", mha_per_token, mha_per_token);
    add("latent, this demo (LatentDecoder)", lat_per_token, mha_per_token);
    // Real shapes through chapter 3's calculator (Table 1 of the paper, one layer, no rope key):
    // DeepSeek-V2-Lite has 16 heads, V2 and V3 128; all have d_h = 128 and d_c = 512.
    using mla::ch03::AttentionKind;
    for (std::size_t h : {16, 128}) {
      const double mha_n =
          double(mla::ch03::table1_elements(AttentionKind::MHA, h, h, 128, 1, 0, 0));
      const double mla_n =
          double(mla::ch03::table1_elements(AttentionKind::MLA, h, h, 128, 1, 512, 0));
      const std::string model = h == 16 ? "V2-Lite" : "V2/V3";
      add("MHA, " + std::to_string(h) + " heads x 128 (" + model + " shape)", mha_n, mha_n);
      add("latent d_c 512 (" + model + ")", mla_n, mha_n);
    }
    cache.print(std::cout);
    std::cout << "  (chapter 6 adds the 64-number RoPE key: 576 per token, the real MLA cache)\n";

    // 4. Why a low-rank latent can work: a key/value projection that is low-rank plus noise,
    //    compressed by a truncated SVD, at several ranks.
    std::cout << "\n4. Rank sweep: W_KV (" << kv_rows << "x" << d_model << ") = rank-" << true_rank
              << " part + noise " << noise << ", compressed by a truncated SVD\n";
    const Mat A = rng.normal(kv_rows, true_rank, 1.0f / std::sqrt(float(true_rank)));
    const Mat B = rng.normal(true_rank, d_model, 1.0f / std::sqrt(float(d_model)));
    const Mat N = rng.normal(kv_rows, d_model, 1.0f / std::sqrt(float(d_model)));
    const Mat W_kv = mla::matmul(A, B) + float(noise) * N;  // rows in kv_b_proj order
    // The reference: plain MHA with these keys and values (full rank, nothing compressed).
    const KvUp kv = split_kv_up(W_kv, heads, head_dim, head_dim);
    mla::ch03::MhaWeights ref = mha;
    ref.W_k = kv.W_uk;
    ref.W_v = kv.W_uv;
    const Mat y_ref = mla::ch03::mha_forward(x, ref);
    const Svd d = svd(W_kv);
    std::cout << "  singular values: s_1 = " << mla::num(d.s(0)) << ", s_" << true_rank << " = "
              << mla::num(d.s(true_rank - 1));
    if (true_rank < d.s.size()) {
      std::cout << ", s_" << true_rank + 1 << " = " << mla::num(d.s(true_rank)) << ", s_"
                << d.s.size() << " = " << mla::num(d.s(d.s.size() - 1));
    }
    std::cout << "\n";
    // rank = the latent's width = the numbers cached per token (MHA: 2·n_h·d_h).
    mla::Table sweep(
        {"rank", "MHA cache / latent cache", "reconstruction error", "attention output error"});
    for (std::size_t r : ranks) {
      const LowRank lr = truncate(d, r);
      LatentWeights lw;
      lw.heads = heads;
      lw.d_k = lw.d_v = head_dim;
      lw.d_c = r;
      lw.W_q = ref.W_q;
      lw.W_dkv = lr.down;  // (r, d_model): c_KV = V_rᵀ h
      lw.W_ukv = lr.up;    // (2·H·d_h, r) = U_r·diag(s_r)
      lw.W_o = ref.W_o;
      const double recon = relative_frobenius_error(mla::matmul(lr.up, lr.down), W_kv);
      const double attn = relative_frobenius_error(latent_forward(x, lw), y_ref);
      sweep.add({std::to_string(r), mla::fixed(double(kv_rows) / r, 1), mla::num(recon, 3),
                 mla::num(attn, 3)});
    }
    sweep.print(std::cout);
    std::cout << "  errors are ‖approx − exact‖_F / ‖exact‖_F; the attention output is the layer's "
                 "output on the same "
              << tokens << " tokens\n";
    const std::string path = mla::results_dir() + "/ch04_rank_sweep.csv";
    sweep.write_csv(path);
    std::cout << "  wrote " << path << "\n";
    return ok ? mla::kExitOk : mla::kExitFailed;
  });
}
