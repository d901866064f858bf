// ch04_low_rank_latents: cache one latent c_KV of d_c numbers per token instead of every head's
// key and value; check that the latent layer is the low-rank MHA it claims to be; measure what the
// cache holds; and show, with an SVD, why a low-rank latent loses little when the key/value
// projection is (nearly) low-rank.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "mla/cli.hpp"

#include "03_multi_head/cache_calculator.hpp"
#include "03_multi_head/multi_head.hpp"
#include "04_low_rank_latents/latent.hpp"
#include "04_low_rank_latents/spectrum.hpp"
#include "mla/compare.hpp"
#include "mla/json.hpp"
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

struct Options {
  std::size_t d_model = 256, heads = 8, head_dim = 32, d_c = 64, tokens = 48, true_rank = 48;
  double noise = 0.05;
  std::vector<std::size_t> ranks;  // empty: default_ranks()
  std::uint64_t seed = mla::kDefaultSeed;
  std::string model;  // empty: data/models/mha if it is there (part 5)
};

// Refuse options that cannot work, or whose memory no machine has, before allocating anything;
// fill in the default ranks of the sweep.
void check_options(Options& o) {
  if (!o.model.empty() && !std::filesystem::exists(o.model + "/model.safetensors")) {
    throw mla::InputError("--model: no model.safetensors in " + o.model);
  }
  if (!std::isfinite(o.noise)) {
    throw mla::InputError("--noise: must be finite, got " + mla::num(o.noise));
  }
  if (o.tokens > kMaxTokens) {
    throw mla::InputError("--tokens: at most " + std::to_string(kMaxTokens) +
                          " (the checks decode them one by one), got " + std::to_string(o.tokens));
  }
  // Sizes in double: size_t products can wrap.
  // Weights of the latent layer and of its MHA twin; the sweep's W_KV, its parts and its
  // SVD; per token the input, rebuilt keys and values and the latents; the (T, T) scores.
  const double D = static_cast<double>(o.d_model),
               R = 2.0 * static_cast<double>(o.heads) * static_cast<double>(o.head_dim),
               C = static_cast<double>(o.d_c), T = static_cast<double>(o.tokens);
  const double weights = 2.0 * R * D + C * D + R * C + 2.0 * R * D;
  mla::check_memory(4.0 * (weights + 6.0 * R * D + T * (3.0 * D + 4.0 * R + C) +
                           T * T * static_cast<double>(o.heads)),
                    "the layers (--d-model " + std::to_string(o.d_model) + " --heads " +
                        std::to_string(o.heads) + " --head-dim " + std::to_string(o.head_dim) +
                        " --latent-dim " + std::to_string(o.d_c) + " --tokens " +
                        std::to_string(o.tokens) + ")");

  const std::size_t max_rank = std::min(2 * o.heads * o.head_dim, o.d_model);
  if (o.true_rank > max_rank) {
    throw mla::InputError(
        "--true-rank " + std::to_string(o.true_rank) +
        " is larger than min(2·heads·head_dim, d_model) = " + std::to_string(max_rank));
  }
  if (o.ranks.empty()) o.ranks = default_ranks(o.true_rank, max_rank);
  for (std::size_t r : o.ranks) {
    if (r > max_rank) {
      throw mla::InputError("--ranks: " + std::to_string(r) + " is larger than " +
                            std::to_string(max_rank) + " (min(2·heads·head_dim, d_model))");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Part 1: the latent layer is an MHA layer whose W_K and W_V happen to be products
// ---------------------------------------------------------------------------------------------

bool part_low_rank_mha(const mla::ch03::MhaWeights& mha, const Mat& x, const Mat& y_latent) {
  std::cout << "1. The latent layer equals chapter 3's MHA with W_K = W_UK·W_DKV, "
               "W_V = W_UV·W_DKV\n";
  return report("latent_forward vs ch03::mha_forward", y_latent, mla::ch03::mha_forward(x, mha));
}

// ---------------------------------------------------------------------------------------------
// Part 2: decoding with a cache of latents only (K and V rebuilt from it at every step)
// ---------------------------------------------------------------------------------------------

bool part_latent_decode(LatentDecoder& latent_decoder, const Mat& x, const Mat& y_latent) {
  std::cout << "\n2. Cached decoding that keeps only c_KV (K and V rebuilt every step)\n";
  return report("token-by-token decode vs full forward", decode_token_by_token(latent_decoder, x),
                y_latent);
}

// ---------------------------------------------------------------------------------------------
// Part 3: what the two caches hold after the same tokens, as the decoders report it, and at
// real shapes
// ---------------------------------------------------------------------------------------------

void part_cache_sizes(const Options& o, const LatentDecoder& latent_decoder,
                      const mla::ch03::MhaWeights& mha, const Mat& x) {
  mla::ch03::MhaDecoder mha_decoder(mha);
  decode_token_by_token(mha_decoder, x);
  const double mha_per_token = double(mha_decoder.cache_floats()) / mha_decoder.cached_tokens();
  const double lat_per_token =
      double(latent_decoder.cache_floats()) / latent_decoder.cached_tokens();
  std::cout << "\n3. Cache per token and layer, after decoding " << o.tokens
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
    const double mha_n = double(mla::ch03::table1_elements(AttentionKind::MHA, h, h, 128, 1, 0, 0));
    const double mla_n =
        double(mla::ch03::table1_elements(AttentionKind::MLA, h, h, 128, 1, 512, 0));
    const std::string model = h == 16 ? "V2-Lite" : "V2/V3";
    add("MHA, " + std::to_string(h) + " heads x 128 (" + model + " shape)", mha_n, mha_n);
    add("latent d_c 512 (" + model + ")", mla_n, mha_n);
  }
  cache.print(std::cout);
  std::cout << "  (chapter 6 adds the 64-number RoPE key: 576 per token, the real MLA cache)\n";
}

// ---------------------------------------------------------------------------------------------
// Part 4: why a low-rank latent can work. A key/value projection that is low-rank plus noise,
// compressed by a truncated SVD, at several ranks
// ---------------------------------------------------------------------------------------------

void part_rank_sweep(const Options& o, const mla::ch03::MhaWeights& mha, const Mat& x,
                     mla::Rng& rng) {
  const std::size_t kv_rows = 2 * o.heads * o.head_dim;  // what MHA caches per token
  std::cout << "\n4. Rank sweep: W_KV (" << kv_rows << "x" << o.d_model << ") = rank-"
            << o.true_rank << " part + noise " << o.noise << ", compressed by a truncated SVD\n";
  const Mat A = rng.normal(kv_rows, o.true_rank, 1.0f / std::sqrt(float(o.true_rank)));
  const Mat B = rng.normal(o.true_rank, o.d_model, 1.0f / std::sqrt(float(o.d_model)));
  const Mat N = rng.normal(kv_rows, o.d_model, 1.0f / std::sqrt(float(o.d_model)));
  const Mat W_kv = mla::matmul(A, B) + float(o.noise) * N;  // rows in kv_b_proj order
  // The reference: plain MHA with these keys and values (full rank, nothing compressed).
  const KvUp kv = split_kv_up(W_kv, o.heads, o.head_dim, o.head_dim);
  mla::ch03::MhaWeights ref = mha;
  ref.W_k = kv.W_uk;
  ref.W_v = kv.W_uv;
  const Mat y_ref = mla::ch03::mha_forward(x, ref);
  const Svd d = svd(W_kv);
  std::cout << "  singular values: s_1 = " << mla::num(d.s(0)) << ", s_" << o.true_rank << " = "
            << mla::num(d.s(o.true_rank - 1));
  if (o.true_rank < d.s.size()) {
    std::cout << ", s_" << o.true_rank + 1 << " = " << mla::num(d.s(o.true_rank)) << ", s_"
              << d.s.size() << " = " << mla::num(d.s(d.s.size() - 1));
  }
  std::cout << "\n";
  // rank = the latent's width = the numbers cached per token (MHA: 2·n_h·d_h).
  mla::Table sweep(
      {"rank", "MHA cache / latent cache", "reconstruction error", "attention output error"});
  for (std::size_t r : o.ranks) {
    const LowRank lr = truncate(d, r);
    LatentWeights lw;
    lw.heads = o.heads;
    lw.d_k = lw.d_v = o.head_dim;
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
            << o.tokens << " tokens\n";
  const std::string path = mla::results_dir() + "/ch04_rank_sweep.csv";
  sweep.write_csv(path);
  std::cout << "  wrote " << path << "\n";
}

// ---------------------------------------------------------------------------------------------
// Part 5: real low rank. The trained MHA model's [W_K; W_V] per layer, against the same matrices
// at initialization (train.py --init-kv), and each head alone
// ---------------------------------------------------------------------------------------------

// The fractions of ‖[W_K; W_V]‖_F² the energy table asks a rank for, and the ranks it asks the
// energy of (16 = one head's width d_h; 64 = the MLA twin's kv_lora_rank).
constexpr double kEnergies[] = {0.90, 0.95, 0.99};
constexpr std::size_t kTopRanks[] = {16, 64};

std::string pct(double fraction, int decimals = 1) {
  return mla::fixed(100.0 * fraction, decimals) + " %";
}

void part_trained_spectrum(const std::string& dir) {
  namespace fs = std::filesystem;
  const nlohmann::json cfg = mla::load_json_file((fs::path(dir) / "config.json").string());
  const std::string origin = dir + "/config.json";
  const auto D = mla::json_field<std::size_t>(cfg, "hidden_size", origin);
  const auto heads = mla::json_field<std::size_t>(cfg, "num_attention_heads", origin);
  const std::size_t d_h = cfg.contains("head_dim")
                              ? mla::json_field<std::size_t>(cfg, "head_dim", origin)
                              : (heads ? D / heads : 0);
  const mla::SafeTensors trained =
      mla::SafeTensors::open((fs::path(dir) / "model.safetensors").string());
  const std::size_t L = count_kv_layers(trained);
  if (L == 0) {
    throw mla::InputError(trained.origin() +
                          ": no model.layers.0.self_attn.k_proj.weight (part 5 reads an "
                          "MHA/GQA model)");
  }
  // The initialization: train.py --init-kv, the draws this model's training started from.
  const std::string init_path = (fs::path(dir) / "init_kv.safetensors").string();
  std::vector<KvSpectrum> tr, in;
  for (std::size_t l = 0; l < L; ++l)
    tr.push_back(kv_spectrum(load_kv_projections(trained, l, d_h)));
  if (fs::exists(init_path)) {
    const mla::SafeTensors init = mla::SafeTensors::open(init_path);
    for (std::size_t l = 0; l < L; ++l)
      in.push_back(kv_spectrum(load_kv_projections(init, l, d_h)));
  }
  const std::size_t rows = 2 * trained.info("model.layers.0.self_attn.k_proj.weight").shape[0];
  std::cout << "\n5. Real low rank: the trained model " << dir << " (" << L << " layers, "
            << rows / 2 / d_h << " KV heads of d_h " << d_h << ", d_model " << D
            << "): singular values of [W_K; W_V] (" << rows << "x" << D << ") per layer\n";
  if (in.empty()) std::cout << "  (no " << init_path << ": initialization columns left out)\n";

  // The energy table: rank for 90/95/99 % of the energy, energy in the top 16 and 64.
  std::vector<std::string> head{"layer"};
  for (double e : kEnergies) {
    const std::string r = "r" + mla::fixed(100.0 * e, 0);
    head.push_back(r + " trained");
    if (!in.empty()) head.push_back(r + " init");
  }
  for (std::size_t r : kTopRanks) {
    const std::string t = "top-" + std::to_string(r);
    head.push_back(t + " trained");
    if (!in.empty()) head.push_back(t + " init");
  }
  mla::Table energy(head);
  for (std::size_t l = 0; l < L; ++l) {
    std::vector<std::string> row{std::to_string(l)};
    for (double e : kEnergies) {
      row.push_back(std::to_string(rank_for_energy(tr[l].joint, e)));
      if (!in.empty()) row.push_back(std::to_string(rank_for_energy(in[l].joint, e)));
    }
    for (std::size_t r : kTopRanks) {
      row.push_back(pct(energy_captured(tr[l].joint)[r - 1]));
      if (!in.empty()) row.push_back(pct(energy_captured(in[l].joint)[r - 1]));
    }
    energy.add(row);
  }
  energy.print(std::cout);
  std::cout << "  r90: the smallest latent rank whose truncated SVD keeps 90 % of ‖[W_K; W_V]‖_F² "
               "(the energy); top-16: the energy the 16 largest singular values keep\n";

  // The per-head argument: does every head alone keep its whole width d_h (rank for 99 %), and
  // how does the span of all heads together compare with the sum of theirs (rank for 90 %)?
  std::cout << "\n  One head alone (W_K^h, W_V^h: " << d_h << "x" << D
            << ") against all heads together (W_K, W_V: " << rows / 2 << "x" << D << ")\n";
  const bool with_init = !in.empty();
  auto both = [&](const std::string& t, const std::string& i) {
    return with_init ? t + " (" + i + ")" : t;
  };
  // Over the layer's heads: the range of their ranks for 99 % and for 90 %, and the sum of the
  // latter.
  struct Heads {
    std::size_t r99_min = 0, r99_max = 0, r90_min = 0, r90_max = 0, r90_sum = 0;
  };
  auto over_heads = [](const std::vector<mla::Vec>& heads) {
    Heads o{heads[0].size(), 0, heads[0].size(), 0, 0};
    for (const mla::Vec& s : heads) {
      const std::size_t r90 = rank_for_energy(s, 0.90);
      o.r99_min = std::min(o.r99_min, rank_for_energy(s, 0.99));
      o.r99_max = std::max(o.r99_max, rank_for_energy(s, 0.99));
      o.r90_min = std::min(o.r90_min, r90);
      o.r90_max = std::max(o.r90_max, r90);
      o.r90_sum += r90;
    }
    return o;
  };
  const std::string tr_in = with_init ? " tr (init)" : "";
  mla::Table per_head({"layer", "W_K^h r99", "W_K^h r90" + tr_in, "sum of W_K^h r90" + tr_in,
                       "W_K r90" + tr_in, "W_V^h r99", "sum of W_V^h r90" + tr_in,
                       "W_V r90" + tr_in, "[W_K; W_V] r90" + tr_in});
  for (std::size_t l = 0; l < L; ++l) {
    const Heads k = over_heads(tr[l].head_k), v = over_heads(tr[l].head_v);
    const Heads ki = with_init ? over_heads(in[l].head_k) : Heads{};
    const Heads vi = with_init ? over_heads(in[l].head_v) : Heads{};
    auto range = [](std::size_t lo, std::size_t hi) {
      return std::to_string(lo) + "-" + std::to_string(hi);
    };
    auto r90 = [&](const mla::Vec& t, const mla::Vec* i) {
      return both(std::to_string(rank_for_energy(t, 0.90)),
                  i ? std::to_string(rank_for_energy(*i, 0.90)) : "");
    };
    per_head.add({std::to_string(l), range(k.r99_min, k.r99_max),
                  both(range(k.r90_min, k.r90_max), range(ki.r90_min, ki.r90_max)),
                  both(std::to_string(k.r90_sum), std::to_string(ki.r90_sum)),
                  r90(tr[l].all_k, with_init ? &in[l].all_k : nullptr), range(v.r99_min, v.r99_max),
                  both(std::to_string(v.r90_sum), std::to_string(vi.r90_sum)),
                  r90(tr[l].all_v, with_init ? &in[l].all_v : nullptr),
                  r90(tr[l].joint, with_init ? &in[l].joint : nullptr)});
  }
  per_head.print(std::cout);
  std::cout
      << "  r99, r90: rank keeping 99 % / 90 % of the energy, over the layer's heads for "
         "W_K^h (one head's "
      << d_h
      << " rows); W_K: all heads' rows; tr: trained\n"
         "  compare the sum of the heads' r90 with W_K's, trained and at initialization (where "
         "independent random heads already need fewer together: energy ranks do not add)\n";

  // The spectra for the figures: per layer, s_i / s_1 and the energy of the top i of
  // [W_K; W_V], and the energy of the top i of all heads' W_K (empty past its size).
  const std::vector<const std::vector<KvSpectrum>*> kinds =
      with_init ? std::vector<const std::vector<KvSpectrum>*>{&tr, &in}
                : std::vector<const std::vector<KvSpectrum>*>{&tr};
  auto kind_name = [&](std::size_t k) { return std::string(k == 0 ? "trained" : "init"); };
  std::vector<std::string> cols{"i"};
  for (std::size_t l = 0; l < L; ++l) {
    for (std::size_t k = 0; k < kinds.size(); ++k) {
      const std::string n = kind_name(k) + " L" + std::to_string(l);
      for (const char* what : {"s ", "energy ", "energy K "}) cols.push_back(what + n);
    }
  }
  mla::Table csv(cols);
  for (std::size_t i = 0; i < tr[0].joint.size(); ++i) {
    std::vector<std::string> row{std::to_string(i + 1)};
    for (std::size_t l = 0; l < L; ++l) {
      for (const auto* spectra : kinds) {
        const KvSpectrum& sp = (*spectra)[l];
        row.push_back(mla::num(sp.joint(i) / sp.joint(0), 5));
        row.push_back(mla::num(energy_captured(sp.joint)[i], 5));
        row.push_back(i < sp.all_k.size() ? mla::num(energy_captured(sp.all_k)[i], 5) : "");
      }
    }
    csv.add(row);
  }
  const std::string path = mla::results_dir() + "/ch04_kv_spectrum.csv";
  csv.write_csv(path);
  // One head alone: the energy of the top r of each head's W_K^h, r = 1 .. d_h.
  std::vector<std::string> head_cols{"r"};
  for (std::size_t l = 0; l < L; ++l) {
    for (std::size_t k = 0; k < kinds.size(); ++k) {
      for (std::size_t h = 0; h < tr[l].head_k.size(); ++h) {
        head_cols.push_back("energy K head " + std::to_string(h) + " " + kind_name(k) + " L" +
                            std::to_string(l));
      }
    }
  }
  mla::Table heads_csv(head_cols);
  for (std::size_t r = 0; r < d_h; ++r) {
    std::vector<std::string> row{std::to_string(r + 1)};
    for (std::size_t l = 0; l < L; ++l) {
      for (const auto* spectra : kinds) {
        for (const mla::Vec& s : (*spectra)[l].head_k) {
          row.push_back(mla::num(energy_captured(s)[r], 5));
        }
      }
    }
    heads_csv.add(row);
  }
  const std::string heads_path = mla::results_dir() + "/ch04_head_spectrum.csv";
  heads_csv.write_csv(heads_path);
  std::cout << "  wrote " << path << " and " << heads_path << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Chapter 4: low-rank key-value joint compression. Caches one latent c_KV = W_DKV h of d_c "
      "numbers per token and rebuilds each head's keys and values from it; compares the cache "
      "with chapter 3's MHA and sweeps the latent rank of an SVD-compressed key/value "
      "projection."};
  Options o;
  app.add_option("--d-model", o.d_model, "Width of the layer's input")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--heads", o.heads, "Attention heads n_h")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--head-dim", o.head_dim, "Per-head key/value width d_h")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--latent-dim", o.d_c, "Latent width d_c of the demo layer")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--tokens", o.tokens, "Sequence length of the checks and of the rank sweep")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--true-rank", o.true_rank,
                 "Rank of the low-rank part of the key/value projection in the sweep")
      ->check(mla::kPositive)
      ->capture_default_str();
  app.add_option("--noise", o.noise,
                 "Full-rank noise added to it, relative to the low-rank part's entries")
      ->check(mla::kNonNegative)
      ->capture_default_str();
  app.add_option("--ranks", o.ranks,
                 "Latent ranks of the sweep (default: powers of two and a few "
                 "around --true-rank)")
      ->check(mla::kPositive);
  app.add_option("--model", o.model,
                 "Trained MHA/GQA model folder for part 5, the real spectrum (default: "
                 "data/models/mha, skipped if it is not there)");
  mla::add_seed_option(app, o.seed);
  if (int rc = mla::parse_options(app, argc, argv); rc >= 0) return rc;

  return mla::run_program("ch04_low_rank_latents", [&] {
    check_options(o);
    mla::Rng rng(o.seed);
    const LatentWeights w = random_latent(o.d_model, o.heads, o.head_dim, o.d_c, rng);
    const Mat x = rng.normal(o.tokens, o.d_model);
    std::cout << "Latent layer: d_model " << o.d_model << ", " << o.heads << " heads of d_h "
              << o.head_dim << ", latent d_c " << o.d_c << ", " << o.tokens << " tokens (seed "
              << o.seed << ")\n"
              << "  W_DKV " << o.d_c << "x" << o.d_model << " (eq. 9), W_UKV (kv_b_proj layout) "
              << w.W_ukv.shape(0) << "x" << o.d_c << " (eqs. 10-11)\n\n";

    const mla::ch03::MhaWeights mha = equivalent_mha(w);
    const Mat y_latent = latent_forward(x, w);
    bool ok = part_low_rank_mha(mha, x, y_latent);
    LatentDecoder latent_decoder(w);
    ok = part_latent_decode(latent_decoder, x, y_latent) && ok;
    part_cache_sizes(o, latent_decoder, mha, x);
    part_rank_sweep(o, mha, x, rng);
    if (!o.model.empty()) {
      part_trained_spectrum(o.model);  // asked for: a missing folder is an InputError
    } else if (const std::string dflt = mla::data_dir() + "/models/mha";
               std::filesystem::exists(dflt + "/model.safetensors")) {
      part_trained_spectrum(dflt);
    } else {
      std::cout << "\n5. Real low rank: skipped (no trained model in " << dflt << ")\n";
    }
    return ok ? mla::kExitOk : mla::kExitFailed;
  });
}
