#include "08_serving/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "mla/exercise.hpp"

namespace mla::ch08 {

void SamplingParams::check() const {
  if (!(std::isfinite(temperature) && temperature >= 0)) {
    throw std::invalid_argument("sampling: temperature must be finite and >= 0");
  }
  if (!(top_p > 0 && top_p <= 1)) throw std::invalid_argument("sampling: top_p must be in (0, 1]");
}

int argmax(const float* logits, std::size_t V) {
  return static_cast<int>(std::max_element(logits, logits + V) - logits);
}

Sampler::Sampler(const SamplingParams& p) : p_(p), gen_(p.seed) {
  p_.check();
}

int Sampler::sample(const float* logits, std::size_t V) {
  if (p_.temperature == 0.0f) return argmax(logits, V);
#if MLA_EXERCISES
  MLA_EXERCISE("8.1", "Sampler::sample() (temperature, top-k, top-p)",
               "see chapters/08_serving/README.md, exercise 8.1");
#else
  // Candidates by decreasing logit (ties by id, so the order — and the draw — is repeatable).
  std::vector<int> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  std::size_t keep = p_.top_k > 0 ? std::min(p_.top_k, V) : V;
  // Softmax of logit / temperature over the candidates, the largest subtracted first.
  std::vector<double> prob(keep);
  const double top = logits[ids[0]] / double(p_.temperature);
  double sum = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    sum += prob[i] = std::exp(logits[ids[i]] / double(p_.temperature) - top);
  }
  // top-p: the shortest prefix (most likely first) whose probability reaches p.
  if (p_.top_p < 1.0f) {
    double acc = 0;
    for (std::size_t i = 0; i < keep; ++i) {
      acc += prob[i] / sum;
      if (acc >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
    prob.resize(keep);
  }
  // One uniform draw from the request's own generator: the same seed gives the same tokens.
  const double total = std::accumulate(prob.begin(), prob.end(), 0.0);
  const double u = std::uniform_real_distribution<double>(0.0, total)(gen_);
  double acc = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    acc += prob[i];
    if (u < acc) return ids[i];
  }
  return ids[keep - 1];
#endif
}

}  // namespace mla::ch08
