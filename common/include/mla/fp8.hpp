/// @file fp8.hpp
/// @brief The two 8-bit float formats DeepSeek's checkpoints and caches use, decoded exactly and
///        encoded with round-to-nearest-even.
///
/// Both are "a float with fewer bits": 1 sign bit, E exponent bits with bias `2^(E-1) - 1`,
/// M mantissa bits, subnormals at exponent 0 (OCP 8-bit floating point specification, 2023;
/// PyTorch's `torch.float8_e4m3fn` and `torch.float8_e5m2`).
///
/// | format | bits       | bias | largest finite | smallest subnormal | special codes |
/// |--------|------------|------|----------------|--------------------|----------------------------|
/// | e4m3fn | s eeee mmm | 7    | ±448           | 2^-9               | 0x7F, 0xFF NaN; no ±inf |
/// | e5m2   | s eeeee mm | 15   | ±57344         | 2^-16              | ±inf (e=31, m=0), NaN (m≠0)
/// |
///
/// e4m3fn ("fn": finite, NaN only) spends the all-ones exponent on numbers instead of infinities,
/// so it reaches 448 (`1.75 · 2^8`) where an IEEE-like e4m3 would stop at 240. DeepSeek-V3's
/// release stores its linear weights in e4m3fn with one float scale per 128×128 block
/// (`weight_scale_inv`), and DeepSeek-V3.2 caches its latent in e4m3fn with a power-of-two
/// scale per 128 numbers. Every value of both formats is exact in float, so decoding is exact.
#pragma once

#include <cstdint>

namespace mla {

/// @addtogroup core
/// @{

/// The largest finite e4m3fn value: `0x7E` = `(1 + 6/8) · 2^(15-7)` = 448.
inline constexpr float kE4m3Max = 448.0f;

/// The value of an e4m3fn code (exact; NaN for 0x7F and 0xFF).
float e4m3_to_float(std::uint8_t code);

/// The value of an e5m2 code (exact; ±inf for 0x7C / 0xFC, NaN for the other all-ones exponents).
float e5m2_to_float(std::uint8_t code);

/// The e4m3fn code nearest to x, ties to the even code (as `torch.Tensor.to(float8_e4m3fn)`).
/// |x| beyond 448 saturates to ±448 (PyTorch turns |x| ≥ 480 into NaN instead; our callers
/// scale every value into range first, so they never meet the difference). NaN gives 0x7F.
std::uint8_t float_to_e4m3(float x);

/// The e5m2 code nearest to x, ties to even, IEEE-like: beyond the largest finite value
/// (57344) by half a step or more it is ±inf; NaN gives 0x7E. (Only the test writer encodes
/// e5m2: DeepSeek ships e4m3.)
std::uint8_t float_to_e5m2(float x);

/// A 256-entry decode table (code -> float) for loops that decode many values: `table[code]`.
const float* e4m3_table();

/// @}

}  // namespace mla
