// ch01_attention: the attention pattern of "The American flag is red, white, and", as a picture.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "01_attention/attention.hpp"
#include "mla/program.hpp"
#include "mla/random.hpp"
#include "mla/table.hpp"

namespace {

using mla::Mat;

// One cell of the heatmap: a shade for the weight, or a dot where the mask forbids looking.
std::string shade(float w, bool masked) {
  if (masked) return " · ";
  // Weights under 0.05 are left blank so the few that matter stand out.
  if (w < 0.05f) return "   ";
  if (w <= 0.25f) return "░░░";
  if (w <= 0.5f) return "▒▒▒";
  if (w <= 0.75f) return "▓▓▓";
  return "███";
}

std::string pad(const std::string& s, std::size_t width) {
  return s.size() >= width ? s : s + std::string(width - s.size(), ' ');
}

void print_heatmap(const Mat& P, const std::vector<std::string>& tokens, bool causal) {
  const std::size_t T = tokens.size();
  std::cout << "            ";
  for (std::size_t j = 0; j < T; ++j) std::cout << " " << pad(std::to_string(j), 3);
  std::cout << "   <- key (the token looked at)\n";
  for (std::size_t i = 0; i < T; ++i) {
    std::cout << pad(std::to_string(i) + " " + tokens[i], 12);
    for (std::size_t j = 0; j < T; ++j) std::cout << " " << shade(P(i, j), causal && j > i);
    std::cout << "\n";
  }
  std::cout << "query ^   shades: '   ' < .05  '░░░' ≤ .25  '▒▒▒' ≤ .5  '▓▓▓' ≤ .75  '███' > .75"
            << (causal ? "   ' · ' masked" : "") << "\n";
}

void print_numbers(const Mat& P, const std::vector<std::string>& tokens) {
  std::vector<std::string> header = {"query"};
  for (std::size_t j = 0; j < tokens.size(); ++j) header.push_back(std::to_string(j));
  mla::Table table(header);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    std::vector<std::string> row = {std::to_string(i) + " " + tokens[i]};
    for (std::size_t j = 0; j < tokens.size(); ++j) row.push_back(mla::fixed(P(i, j), 2));
    table.add(row);
  }
  table.print(std::cout);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Chapter 1: single-head scaled dot-product attention with a causal mask, on a short "
      "sentence; prints the attention weights as a heatmap and writes them as CSV."};
  std::string sentence = mla::ch01::kSentence;
  bool random_weights = false, no_mask = false, plain = false;
  std::uint64_t seed = mla::kDefaultSeed;
  app.add_option("--sentence", sentence, "The sentence (unknown words get random embeddings)")
      ->capture_default_str();
  app.add_flag("--random-weights", random_weights,
               "Random W_q, W_k, W_v (from --seed) instead of the hand-made ones");
  app.add_flag("--no-mask", no_mask, "Let every token see every other (no causal mask)");
  app.add_flag("--plain", plain, "Print numbers instead of shaded blocks, even on a terminal");
  mla::add_seed_option(app, seed);
  if (int rc = mla::parse_options(app, argc, argv); rc >= 0) return rc;

  return mla::run_program("ch01_attention", [&] {
    using namespace mla::ch01;
    const std::vector<std::string> tokens = tokenize(sentence);
    if (tokens.empty()) throw mla::InputError("--sentence: needs at least one word");
    if (tokens.size() > 64) throw mla::InputError("--sentence: at most 64 tokens fit on a screen");
    const Masking masking = no_mask ? Masking::none : Masking::causal;

    // x: (T, d) toy embeddings -> q, k, v: (T, d) -> P: (T, T) -> out: (T, d)
    const Mat x = toy_embeddings(tokens);
    const std::size_t T = tokens.size(), d = x.shape(1);
    mla::Rng rng(seed);
    const ToyProjections w = random_weights ? random_projections(d, rng) : toy_projections();
    const Mat q = mla::linear(x, w.W_q), k = mla::linear(x, w.W_k), v = mla::linear(x, w.W_v);
    const Mat P = attention_weights(q, k, masking);
    const Mat out = mla::matmul(P, v);

    std::cout << "Attention over \"" << sentence << "\": " << T << " tokens, d = " << d << ", "
              << (random_weights ? "random projections (seed " + std::to_string(seed) + ")"
                                 : std::string("hand-made projections"))
              << ", " << (no_mask ? "no mask" : "causal mask") << "\n\n";
    std::cout << "Weights P = softmax(q·kᵀ/√d + mask): row = the query token, column = the key.\n";
    if (mla::stdout_is_terminal() && !plain) {
      print_heatmap(P, tokens, !no_mask);
    } else {
      print_numbers(P, tokens);
    }

    // What each token looks at most (its two largest weights).
    std::cout << "\nWhere each token looks:\n";
    for (std::size_t i = 0; i < T; ++i) {
      std::vector<std::size_t> order(T);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](std::size_t a, std::size_t b) { return P(i, a) > P(i, b); });
      std::cout << "  " << pad(tokens[i], 10) << "-> ";
      for (std::size_t r = 0; r < std::min<std::size_t>(2, T); ++r) {
        if (P(i, order[r]) <= 0.0f) break;
        std::cout << (r ? ", " : "") << tokens[order[r]] << " (" << order[r] << ") "
                  << mla::fixed(P(i, order[r]), 2);
      }
      std::cout << "\n";
    }
    if (!random_weights) {
      // Values are the features, so an output row says what a token has gathered.
      const auto& names = toy_feature_names();
      std::cout << "\nWhat the last token gathered (its output row, by feature):";
      for (std::size_t f = 0; f < d; ++f) {
        if (std::abs(out(T - 1, f)) >= 0.05f) {
          std::cout << " " << names[f] << " " << mla::fixed(out(T - 1, f), 2);
        }
      }
      std::cout << "\n";
    }

    // The two properties every attention matrix must have.
    double worst_sum = 0.0, worst_masked = 0.0;
    for (std::size_t i = 0; i < T; ++i) {
      double sum = 0.0;
      for (std::size_t j = 0; j < T; ++j) {
        sum += P(i, j);
        if (j > i) worst_masked = std::max(worst_masked, static_cast<double>(P(i, j)));
      }
      worst_sum = std::max(worst_sum, std::abs(sum - 1.0));
    }
    std::cout << "\nChecks:\n  every row sums to 1:    max |sum - 1| = " << mla::num(worst_sum, 2)
              << (worst_sum < 1e-5 ? "  ok" : "  FAILED") << "\n";
    if (!no_mask) {
      std::cout << "  the causal mask holds: max weight above the diagonal = "
                << mla::num(worst_masked, 2) << (worst_masked == 0.0 ? "  ok" : "  FAILED") << "\n";
    }

    // CSV cells cannot hold a bare ",", and gnuplot ignores CSV quoting: name that token.
    auto label = [&](std::size_t t) {
      return std::to_string(t) + ":" + (tokens[t] == "," ? std::string("comma") : tokens[t]);
    };
    std::vector<std::string> labels;
    for (std::size_t j = 0; j < T; ++j) labels.push_back(label(j));
    const std::string path = mla::results_dir() + "/ch01_attention_weights.csv";
    mla::write_matrix_csv(path, labels, P.data());
    std::cout << "\nWeights written to " << path << "\n";
    const bool ok = worst_sum < 1e-5 && worst_masked == 0.0;
    return ok ? mla::kExitOk : mla::kExitFailed;
  });
}
