/// @file mla_blas.hpp
/// @brief The absorbed decode as a BLAS user writes it: two matrix products around a softmax.
#pragma once

#include <cstddef>

#include "07_optimized_mla/kernels/mla_decode.hpp"

namespace mla::ch07 {

/// @addtogroup ch07
/// @{

/// Per sequence b (cache (B, T, d_c + d_r) rows [c_kv | k_rope], as for v1):
///
///     S (H, T)   = scale · Q̃ (H, d_c + d_r) · C_bᵀ     one cblas_sgemm, Q̃ = [q_lat | q_rope]
///     P          = softmax over each row of S            SIMD exp, on the calling thread
///     out (H, d_c) = P · C_b[:, :d_c]                   one cblas_sgemm (leading dimension
///     d_c+d_r)
///
/// OpenBLAS runs on `a.threads` threads. The scores matrix makes a round trip through memory
/// (H·T floats written, read, written, read), which the fused kernels never do.
void mla_decode_blas(const float* cache, std::size_t T, const DecodeArgs& a);

/// x (n) <- softmax(x), the maximum subtracted first; SIMD exponentials. n >= 1. The softmax
/// between the two products of the BLAS formulations (this decode, and chapter 7's prefill one).
void softmax_row(float* x, std::size_t n);

/// Set OpenBLAS's thread count if the BLAS in use is OpenBLAS (no-op otherwise).
void set_blas_threads(int threads);

/// @}

}  // namespace mla::ch07
