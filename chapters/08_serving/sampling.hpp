/// @file sampling.hpp
/// @brief Choosing the next token from logits: greedy, temperature, top-k, top-p, with a seeded
///        generator so that a run is repeatable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>

namespace mla::ch08 {

/// @addtogroup ch08
/// @{

/// How a request picks its tokens. temperature 0 = greedy (argmax, ties to the lowest id).
struct SamplingParams {
  float temperature = 0.0f;  ///< >= 0; logits are divided by it before the softmax
  std::size_t top_k = 0;     ///< keep the k most likely tokens (0 = all)
  float top_p = 1.0f;        ///< keep the smallest set whose probability reaches p, in (0, 1]
  std::uint64_t seed = 0;    ///< the generator's seed: same seed, same tokens
  /// std::invalid_argument for a negative or non-finite temperature, top_p outside (0, 1].
  void check() const;
};

/// A sampler with its own generator (one per request, so requests do not disturb each other).
class Sampler {
 public:
  /// Checks `p` (SamplingParams::check()) and seeds the generator with p.seed.
  explicit Sampler(const SamplingParams& p);
  /// The next token from logits (V). Greedy ignores the generator.
  int sample(const float* logits, std::size_t V);

 private:
  SamplingParams p_;
  std::mt19937_64 gen_;
};

/// The index of the largest logit (the lowest index among equal ones).
int argmax(const float* logits, std::size_t V);

/// @}

}  // namespace mla::ch08
