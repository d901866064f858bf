/// @file tensor.hpp
/// @brief The shared tensor core: aliases, `linear`, softmax, masks, RMSNorm.
///
/// Every chapter computes with these few functions, so that what changes from one chapter to the
/// next is the idea, not the arithmetic underneath it. Tensors are row-major `xt::xtensor<float,
/// N>`.
#pragma once

#include <cstddef>
#include <limits>

#include <xtensor/xtensor.hpp>

namespace mla {

/// @defgroup core Tensor core (common/)
/// @brief Aliases and the handful of operations every chapter shares.
/// @{

using Vec = xt::xtensor<float, 1>;      ///< shape (n)
using Mat = xt::xtensor<float, 2>;      ///< shape (rows, cols), row-major
using Tensor3 = xt::xtensor<float, 3>;  ///< shape (a, b, c), row-major

/// The value a masked score holds: softmax gives it weight exactly 0.
inline constexpr float kMasked = -std::numeric_limits<float>::infinity();

/// A linear layer as checkpoints store it: `y = x · Wᵀ`.
/// @param x (n, in_features)
/// @param W (out_features, in_features), the layout of a PyTorch `nn.Linear` weight
/// @return  (n, out_features)
/// Runs as one OpenBLAS `sgemm` (through xtensor-blas), so it is as fast as the machine allows.
Mat linear(const Mat& x, const Mat& W);

/// `linear` into a preallocated output: `y = x · Wᵀ`, y: (n, out_features).
void linear_into(const Mat& x, const Mat& W, Mat& y);

/// `y = x · Wᵀ` for a single vector: x (in_features) -> (out_features).
Vec linear(const Vec& x, const Mat& W);

/// Matrix product without transposition: a (n, k) · b (k, m) -> (n, m).
Mat matmul(const Mat& a, const Mat& b);

/// Row-wise softmax, in place, numerically stable.
///
/// Each row has its maximum subtracted before `exp`, so logits of any finite magnitude (±1e4 and
/// beyond) give finite weights. Entries equal to `-inf` (see kMasked) get weight exactly 0.
/// A row whose entries are *all* `-inf` has no distribution to give: it is set to all zeros,
/// so the attention output for that query is the zero vector (not NaN).
/// @param scores (rows, cols)
void softmax_rows(Mat& scores);

/// Softmax of one vector, in place; same rules as softmax_rows.
void softmax(float* x, std::size_t n);

/// Causal mask on a score matrix of queries at positions `offset .. offset+rows-1` against keys at
/// positions `0 .. cols-1`: score (i, j) becomes `-inf` where `j > offset + i` (a query may not
/// look at a later token).
/// @param scores (rows, cols)
void apply_causal_mask(Mat& scores, std::size_t offset = 0);

/// The causal mask itself as an additive (T, T) matrix: 0 on and below the diagonal, `-inf` above.
Mat causal_mask(std::size_t T);

/// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) · w`.
/// @param x (n, d)
/// @param w (d)
/// @return (n, d)
Mat rmsnorm(const Mat& x, const Vec& w, float eps);

/// @}

}  // namespace mla
