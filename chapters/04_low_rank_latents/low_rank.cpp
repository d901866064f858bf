// The SVD study of chapter 4: LAPACK through xtensor-blas. Kept apart from latent.cpp because
// xtensor-blas declares its own CBLAS prototypes, which clash with OpenBLAS's <cblas.h>.
#include <cmath>
#include <stdexcept>
#include <string>
#include <tuple>

#include <xtensor-blas/xlinalg.hpp>

#include "04_low_rank_latents/latent.hpp"
#include "mla/rows.hpp"

namespace mla::ch04 {

Svd svd(const Mat& W) {
  // full_matrices = false: U (m, r), Vt (r, n) with r = min(m, n).
  auto [U, s, Vt] = xt::linalg::svd(W, false, true);
  Svd out;
  out.U = U;  // column-major results, copied into our row-major types
  out.s = s;
  out.Vt = Vt;
  return out;
}

LowRank truncate(const Svd& d, std::size_t rank) {
  const std::size_t m = d.U.shape(0), n = d.Vt.shape(1);
  if (rank == 0 || rank > d.s.size()) {
    throw std::invalid_argument("truncate: rank " + std::to_string(rank) + " is not in 1.." +
                                std::to_string(d.s.size()));
  }
  LowRank lr{xt::empty<float>({rank, n}), xt::empty<float>({m, rank})};
  for (std::size_t i = 0; i < rank; ++i) {
    for (std::size_t j = 0; j < n; ++j) lr.down(i, j) = d.Vt(i, j);
  }
  for (std::size_t r = 0; r < m; ++r) {
    for (std::size_t i = 0; i < rank; ++i) lr.up(r, i) = d.U(r, i) * d.s(i);
  }
  return lr;
}

double relative_frobenius_error(const Mat& A, const Mat& B) {
  if (A.shape() != B.shape()) {
    throw std::invalid_argument("relative_frobenius_error: shapes " + shape_str(A) + " and " +
                                shape_str(B) + " differ");
  }
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < A.size(); ++i) {
    const double d = static_cast<double>(A.data()[i]) - B.data()[i];
    num += d * d;
    den += static_cast<double>(B.data()[i]) * B.data()[i];
  }
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace mla::ch04
