/// @file random.hpp
/// @brief Seeded, reproducible random tensors.
#pragma once

#include <cstdint>
#include <random>

#include "mla/tensor.hpp"

namespace mla {

/// @addtogroup core
/// @{

/// Default seed of every chapter program (`--seed` changes it).
inline constexpr std::uint64_t kDefaultSeed = 42;

/// A reproducible source of normal random numbers (`std::mt19937_64` + `std::normal_distribution`).
/// The same seed gives the same tensors on every run of the same build.
class Rng {
 public:
  /// A generator whose draws depend only on `seed`.
  explicit Rng(std::uint64_t seed = kDefaultSeed) : gen_(seed) {}

  /// One draw from N(0, std²).
  float normal(float std = 1.0f) { return std * dist_(gen_); }

  /// A (rows, cols) matrix with entries from N(0, std²).
  Mat normal(std::size_t rows, std::size_t cols, float std = 1.0f);

  /// A (n) vector with entries from N(0, std²).
  Vec normal_vec(std::size_t n, float std = 1.0f);

  /// A Linear weight (out, in) drawn from N(0, 1/in): the variance that keeps `x·Wᵀ` at the
  /// scale of `x` when x has unit-variance entries (LeCun / "fan-in" initialization).
  Mat linear_weight(std::size_t out, std::size_t in);

  /// The underlying engine, for other distributions (e.g. random token ids); drawing from it
  /// advances this generator's stream.
  std::mt19937_64& engine() { return gen_; }

 private:
  std::mt19937_64 gen_;
  std::normal_distribution<float> dist_{0.0f, 1.0f};
};

/// @}

}  // namespace mla
